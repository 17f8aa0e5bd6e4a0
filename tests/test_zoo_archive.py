"""Zoo export and import: one archive, every hash checked before anything reaches the cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading

import pytest

from psml_bench import ConfigError, PsmlError
from psml_bench.zoo.archive import INDEX, export_zoo, file_sha256, import_zoo
from psml_bench.zoo.model_zoo import Zoo


@pytest.fixture(scope="module")
def archive(tiny_zoo, tmp_path_factory):
    return export_zoo(tiny_zoo.directory, tmp_path_factory.mktemp("export") / "tiny.tar")


def test_an_exported_zoo_imports_into_a_fresh_cache_with_the_same_weights(tiny_zoo, archive, tmp_path):
    installed = import_zoo(archive.archive, tmp_path)
    assert installed.directory.parent == tmp_path / "zoos" and installed.directory.name == tiny_zoo.directory.name
    zoo = Zoo(installed.directory)
    assert [m["weights_sha256"] for m in zoo.card["models"]] == [m["weights_sha256"] for m in tiny_zoo.card["models"]]
    assert set(archive.files) >= {"card.json", "splits.safetensors", "predictions.safetensors"}
    for name, digest in archive.files.items():
        assert file_sha256(installed.directory / name) == digest == file_sha256(tiny_zoo.directory / name)
    assert import_zoo(archive.archive, tmp_path).directory == installed.directory  # the same again: nothing to do


def _rewritten(source, target, change):
    """A copy of the archive ``source`` with ``change(name, bytes) -> bytes`` applied to each member."""
    with tarfile.open(source) as tar_in, tarfile.open(target, "w") as tar_out:
        for member in tar_in.getmembers():
            data = change(member.name, tar_in.extractfile(member).read())
            member.size = len(data)
            tar_out.addfile(member, io.BytesIO(data))
    return target


def test_an_altered_weights_file_is_refused_and_nothing_is_installed(archive, tmp_path):
    def flip(name, data):
        return data[:-1] + bytes([data[-1] ^ 1]) if name.startswith("weights/") else data

    bad = _rewritten(archive.archive, tmp_path / "bad.tar", flip)
    with pytest.raises(PsmlError, match=r"weights/.*does not have the sha256 the archive lists"):
        import_zoo(bad, tmp_path / "cache")
    assert not any((tmp_path / "cache" / "zoos").glob("fmnist-tiny-*"))


def test_an_index_that_lies_about_the_weights_is_caught_by_the_card(archive, tmp_path):
    def lie(name, data):
        if name.startswith("weights/"):
            return data[:-1] + bytes([data[-1] ^ 1])
        return data

    altered = _rewritten(archive.archive, tmp_path / "altered.tar", lie)
    with tarfile.open(altered) as tar:
        index = json.loads(tar.extractfile(INDEX).read())
        for name in index["files"]:
            if name.startswith("weights/"):
                index["files"][name] = hashlib.sha256(tar.extractfile(name).read()).hexdigest()
    consistent = _rewritten(altered, tmp_path / "consistent.tar",
                            lambda name, data: json.dumps(index).encode() if name == INDEX else data)
    with pytest.raises(PsmlError, match="do not have the sha256 its zoo card records"):
        import_zoo(consistent, tmp_path / "cache")


def test_a_member_outside_the_index_is_refused(archive, tmp_path):
    extra = tmp_path / "extra.tar"
    _rewritten(archive.archive, extra, lambda name, data: data)
    with tarfile.open(extra, "a") as tar:
        info = tarfile.TarInfo("../escape.json")
        tar.addfile(info)
    with pytest.raises(PsmlError, match="differ from its index|not a regular file"):
        import_zoo(extra, tmp_path / "cache")


def test_a_url_import_checks_the_archive_hash_on_a_loopback_server(archive, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{archive.archive.name}"
    try:
        with pytest.raises(ConfigError, match="needs --sha256"):
            import_zoo(url, tmp_path / "a")
        with pytest.raises(PsmlError, match="does not have the sha256 it was given"):
            import_zoo(url, tmp_path / "a", sha256="0" * 64)
        installed = import_zoo(url, tmp_path / "b", sha256=archive.sha256)
        assert (installed.directory / "card.json").is_file()
    finally:
        server.shutdown()


def test_the_commands_export_and_import(tiny_zoo, cache_dir, tmp_path):
    out = tmp_path / "z.tar"
    exported = subprocess.run([sys.executable, "-m", "psml_bench.cli", "--cache", str(cache_dir), "-q", "zoo",
                               "export", "fmnist-tiny", str(out)], capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr
    assert f"--sha256 {file_sha256(out)}" in exported.stdout
    imported = subprocess.run([sys.executable, "-m", "psml_bench.cli", "--cache", str(tmp_path / "c"), "-q", "zoo",
                               "import", str(out)], capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr
    assert "every hash checked" in imported.stdout
    missing = subprocess.run([sys.executable, "-m", "psml_bench.cli", "zoo", "import", str(tmp_path / "none.tar")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "no zoo archive at" in missing.stderr and "Traceback" not in missing.stderr


def _lock_file(tiny_zoo, path, change=None):
    """A leaderboard's zoos.json locking the tiny zoo's weights, one model's hash replaced by ``change``."""
    card = tiny_zoo.card
    models = [{"id": m["id"], "accuracy": m["accuracy"], "weights_sha256": m["weights_sha256"]} for m in card["models"]]
    if change is not None:
        models[1]["weights_sha256"] = change
    path.write_text(json.dumps({"fmnist-tiny": {"name": card["zoo"], "config_hash": card["config_hash"],
                                                "build_environment": card["environment"], "models": models}}))
    return path


def test_an_archive_with_other_weights_than_the_lock_is_refused_unless_asked(tiny_zoo, archive, tmp_path):
    from psml_bench.zoo.lock import read_locks

    same = _lock_file(tiny_zoo, tmp_path / "same.json")
    assert import_zoo(archive.archive, tmp_path / "a", locks=read_locks(same)).directory.is_dir()
    other = _lock_file(tiny_zoo, tmp_path / "other.json", change="0" * 64)
    model = tiny_zoo.card["models"][1]["id"]
    with pytest.raises(PsmlError, match=rf"differs from the lock .* in 1 of \d+ models \({model}\): the recorded build "
                                        r"environments agree .*nothing installed.*--ignore-lock"):
        import_zoo(archive.archive, tmp_path / "b", locks=read_locks(other), lock_source=f"the lock {other}")
    assert not any((tmp_path / "b" / "zoos").glob("fmnist-tiny-*"))

    command = [sys.executable, "-m", "psml_bench.cli", "--cache", str(tmp_path / "c"), "-q", "zoo", "import",
               str(archive.archive), "--lock", str(other)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1 and "--ignore-lock" in refused.stderr
    forced = subprocess.run(command + ["--ignore-lock"], capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0, forced.stderr
    assert f"  {model}: matches the committed leaderboard: no (weights" in forced.stdout
