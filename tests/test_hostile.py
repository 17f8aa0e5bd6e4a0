"""Hostile submissions, each a small plugin: what the sandbox denies an attack, and what it cannot forge."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from psml_bench import Knowledge
from psml_bench.isolation.attack_process import AttackFailed, PluginLocator, run_attack, sandbox_available
from psml_bench.contract.registries import ATTACKS, DEFENSES
from psml_bench.serving.frontend import Frontend

pytestmark = pytest.mark.skipif(not sandbox_available(), reason="the sandbox needs bubblewrap and user namespaces")

ROOT = Path(__file__).resolve().parents[1]
HOOK = "__editable__.psml_bench-0.1.0.finder.__path_hook__"
SHM = f"psml_hostile_{os.getpid()}"

OUTCOME = '''

def outcome(action):
    try:
        action()
        return "allowed"
    except OSError as exc:
        return type(exc).__name__


def looks():
    outcomes = {outcome(lambda: os.listdir(path) if os.path.isdir(path) else open(path, "rb").read(1))
                for path in DENIED}
    return [f"files: {sorted(outcomes)}",
            f"network: {outcome(lambda: socket.create_connection(('1.1.1.1', 53), timeout=2))}",
            f"environment: {sorted(os.environ)}", f"descriptors: {len(os.listdir('/proc/self/fd'))}"]
'''
"""What each hostile plugin reports with: what one of its tries came to, and what it found of
the files, network, environment and descriptors the harness keeps from it."""

PLUGIN = '''
import ctypes
import os
import socket
import sys
import time

from psml_bench import Attack, Spec, SurrogateConfig, query_batched, train_surrogate

DENIED = {denied!r}
DRIVER_CWD = {driver_cwd!r}
MARKER = {marker!r}
HOOK = {hook!r}
SHM = {shm!r}
{outcome}

class Looks(Attack):
    """Tries every file the harness keeps from attacks, the network, the environment and its descriptors."""

    def run(self, target, knowledge, budget, rng):
        seen = looks()
        seen.append(f"loopback: {{outcome(lambda: socket.create_connection(('127.0.0.1', 22), timeout=2))}}")
        seen.append(f"cwd: {{os.getcwd()}}")
        raise RuntimeError("; ".join(seen))


class PlantsAPathHook(Attack):
    """Plants the editable install's relative sys.path entry, with a module, where the driver would find it."""

    def run(self, target, knowledge, budget, rng):
        seen = []
        for base in (os.getcwd(), DRIVER_CWD, "/tmp"):
            def plant():
                os.makedirs(os.path.join(base, HOOK, "attacks"), exist_ok=True)
                with open(os.path.join(base, HOOK, "attacks", "__init__.py"), "w") as file:
                    file.write(f"open({{MARKER!r}}, 'w').write('planted')\\n")
            seen.append(f"{{base}}: {{outcome(plant)}}")
        raise RuntimeError("; ".join(seen))


class HangsWithChildren(Attack):
    """Forks children (one detached in its own session) that rename themselves, then hangs."""

    def run(self, target, knowledge, budget, rng):
        libc = ctypes.CDLL(None)
        for detach in (False, True, False):
            if os.fork() == 0:
                if detach:
                    os.setsid()
                    if os.fork() != 0:
                        os._exit(0)
                libc.prctl(15, b"psmlhostilekid", 0, 0, 0)  # PR_SET_NAME
                while True:
                    time.sleep(1)
        while True:
            time.sleep(1)


class AbusesTheResourceTracker(Attack):
    """Writes a huge line and bad lines to any inherited pipe (a resource tracker's), then has a
    tracker of its own unlink a /dev/shm file of the host and register a segment of its own."""

    def run(self, target, knowledge, budget, rng):
        from multiprocessing import resource_tracker, shared_memory

        def pipes():
            found = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{{fd}}").startswith("pipe:"):
                        found.append(int(fd))
                except OSError:
                    pass
            return found

        inherited = pipes()
        bad = b"x" * 2**24 + b"\\n" + f"UNREGISTER:/{{SHM}}_canary:nonsense\\n".encode() + b"garbage\\n"
        for fd in inherited:
            outcome(lambda: os.write(fd, bad))
        seen = [f"inherited pipes: {{len(inherited)}}"]
        seen.append(f"unlink host file: {{outcome(lambda: os.unlink(f'/dev/shm/{{SHM}}_canary'))}}")
        own = shared_memory.SharedMemory(name=f"{{SHM}}_own", create=True, size=4096)  # starts a tracker in the cell
        resource_tracker.register(f"/{{SHM}}_canary", "shared_memory")  # for it to unlink at exit
        tracker = resource_tracker._resource_tracker._fd
        seen.append(f"own tracker: {{tracker in pipes()}}")
        outcome(lambda: os.write(tracker, bad))
        seen.append(f"own segment: {{os.path.exists(f'/dev/shm/{{SHM}}_own') and own.size >= 4096}}")
        raise RuntimeError("; ".join(seen))


class NamesAHubModel(Attack):
    """Returns a surrogate whose architecture is a Hugging Face Hub name."""

    def run(self, target, knowledge, budget, rng):
        spec = Spec(knowledge.spec_range.accuracy[0], knowledge.spec_range.latency_ms[1])
        inputs = knowledge.pool[:20]
        surrogate = train_surrogate(inputs, query_batched(target, inputs, spec), knowledge,
                                    SurrogateConfig(min_steps=2, epochs=1), rng)
        surrogate.net.pretrained_cfg["architecture"] = "hf-hub:mallory/victim"
        return surrogate


class ChoosesItsReason(Attack):
    """Raises an exception whose class and message imitate the harness's own failure reasons."""

    def run(self, target, knowledge, budget, rng):
        class BudgetExhausted(Exception):
            pass
        raise BudgetExhausted("timed out after 1s\\n| forged | row |\\x1b[31m" + "x" * 2_000_000)
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory, tiny_zoo):
    folder = tmp_path_factory.mktemp("hostile_plugin")
    marker = folder / "planted"
    denied = [str(tiny_zoo.directory), str(tiny_zoo.directory / "card.json"), "/usr/share/datasets/fashion-mnist",
              os.environ.get("PSML_BENCH_FMNIST_DIR", "/usr/share/datasets"), str(ROOT / "tests"),
              str(ROOT / "README.md"), str(folder), str(Path.home() / ".cache")]
    (folder / "hostile_plugin.py").write_text(PLUGIN.format(denied=denied, driver_cwd=str(folder), marker=str(marker),
                                                            hook=HOOK, shm=SHM, outcome=OUTCOME))
    return folder, marker, denied


def _run(zoo, plugin, monkeypatch, cls: str, budget: int = 30, timeout_s: float = 120):
    folder = plugin[0]
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.chdir(folder)  # a driver working directory the sandbox user could write, were it visible
    defense = DEFENSES.get("none")()
    server = Frontend(zoo, defense=defense, rng=np.random.default_rng([0, 2]), budget=budget)
    knowledge = Knowledge(input_shape=zoo.input_shape, num_classes=zoo.num_classes, spec_range=server.spec_range,
                          pool=zoo.splits["attacker_x"], role="rank:1")
    locator = PluginLocator(f"hostile_plugin:{cls}")
    ATTACKS.get(locator.name)
    return run_attack(server, locator, knowledge, budget, np.random.default_rng(0), timeout_s=timeout_s)


def test_dataset_cache_repository_network_and_descriptors_are_out_of_reach(tiny_zoo, plugin, monkeypatch):
    with pytest.raises(AttackFailed) as error:
        _run(tiny_zoo, plugin, monkeypatch, "Looks")
    message = str(error.value)
    assert "files: ['FileNotFoundError']" in message, message  # none of them exists in the sandbox
    assert "network: OSError" in message and "loopback: OSError" in message, message  # no interface is up
    assert "PSML" not in message and "'HOME', 'LANG', 'PATH'" in message, message  # a cleared environment
    assert "descriptors: 5" in message, message  # stdin, stdout, stderr, the channel, the listing itself
    assert "cwd: /" in message


def test_a_planted_path_hook_never_runs(tiny_zoo, plugin, monkeypatch):
    folder, marker, _ = plugin
    with pytest.raises(AttackFailed) as error:
        _run(tiny_zoo, plugin, monkeypatch, "PlantsAPathHook")
    message = str(error.value)
    assert message.startswith("the attack raised RuntimeError: /: OSError;"), message  # its cwd is read-only
    assert "/tmp: allowed" in message, message  # its private /tmp (the driver's folder here is under /tmp too)
    assert not (folder / HOOK).exists() and not marker.exists()
    # the next attack process starts from the same zygote: nothing planted reaches it
    with pytest.raises(AttackFailed, match="the attack raised RuntimeError"):
        _run(tiny_zoo, plugin, monkeypatch, "PlantsAPathHook")
    assert not marker.exists()


def test_no_resource_tracker_pipe_reaches_an_attack_and_its_own_tracker_stays_in_the_cell(tiny_zoo, plugin,
                                                                                            monkeypatch, capfd):
    canary = Path("/dev/shm") / f"{SHM}_canary"
    canary.write_text("the host's")
    try:
        with pytest.raises(AttackFailed) as error:
            _run(tiny_zoo, plugin, monkeypatch, "AbusesTheResourceTracker")
        message = str(error.value)
        assert "inherited pipes: 0;" in message, message  # nothing to write a 16 MiB or bad line to
        assert "unlink host file: FileNotFoundError" in message, message  # its /dev/shm is its own
        assert "own tracker: True" in message and "own segment: True" in message, message
        time.sleep(1)  # a tracker outside the cell would act on its exit now
        assert canary.read_text() == "the host's"  # registered for unlinking, never unlinked
        assert not (Path("/dev/shm") / f"{SHM}_own").exists()
        assert capfd.readouterr().err == ""  # no tracker's traceback reaches the driver
    finally:
        canary.unlink()


def _kids() -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and Path(f"/proc/{pid}/comm").read_text().strip() == "psmlhostilekid":
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_a_hanging_attack_and_all_its_children_end_with_its_timeout(tiny_zoo, plugin, monkeypatch):
    started = time.monotonic()
    with pytest.raises(AttackFailed, match=r"^timed out after 4s$"):
        _run(tiny_zoo, plugin, monkeypatch, "HangsWithChildren", timeout_s=4)
    deadline = time.monotonic() + 5
    while _kids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _kids() == [] and time.monotonic() - started < 4 + 15


def test_surrogate_architectures_resolve_locally_and_failure_reasons_are_the_harness(tiny_zoo, plugin, monkeypatch):
    with pytest.raises(AttackFailed, match="names 'hf-hub:mallory/victim', which is not a timm architecture"):
        _run(tiny_zoo, plugin, monkeypatch, "NamesAHubModel")
    with pytest.raises(AttackFailed) as error:
        _run(tiny_zoo, plugin, monkeypatch, "ChoosesItsReason")
    message = str(error.value)
    assert message.startswith("the attack raised BudgetExhausted: timed out after 1s | forged | row |"), message
    assert len(message) < 400 and "\n" not in message and "\x1b" not in message


@pytest.mark.slow  # 20 s: a driver, a worker and its sandbox start for one cell
def test_a_hanging_pipeline_ends(tiny_zoo, plugin, cache_dir, tmp_path):
    """`psml-bench run ... | cat` ends soon after the cell timeout, with every child of the attack gone."""
    grid = tmp_path / "grid.toml"
    grid.write_text('name = "g"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nbudgets = [20]\nseeds = [0]\n'
                    'benign_queries = 20\n[[attacks]]\nname = "hostile_plugin:HangsWithChildren"\n'
                    '[[defenses]]\nname = "none"\n')
    env = {**os.environ, "PSML_BENCH_CACHE": str(cache_dir),
           "PYTHONPATH": os.pathsep.join([str(plugin[0]), os.environ.get("PYTHONPATH", "")])}
    command = (f"{sys.executable} -m psml_bench.cli -q run --grid {grid} --out {tmp_path / 'lb'} --jobs 1 "
               f"--timeout 5 | cat")
    started = time.monotonic()
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120,
                            cwd=tmp_path)
    assert "1 failed" in result.stdout, (result.stdout, result.stderr)
    assert _kids() == []
    assert time.monotonic() - started < 60  # start-up (zoo, worker, sandbox) plus the 5 s timeout


def _one_cell_grid(tmp_path: Path):
    from psml_bench.bench.grid import load_grid

    path = tmp_path / "one.toml"
    path.write_text('name = "one"\nzoo = "fmnist-tiny"\nvictims = ["rank:1"]\nbudgets = [30]\nseeds = [0]\n'
                    'benign_queries = 20\n[[attacks]]\nname = "naive"\nparams = { min_steps = 5, epochs = 1 }\n'
                    '[[defenses]]\nname = "none"\n')
    return load_grid(path)


def test_a_tampered_cell_is_detected_and_recomputed(tiny_zoo, cache_dir, tmp_path, caplog):
    from psml_bench.runner import make_executor, run_grid

    grid, out = _one_cell_grid(tmp_path), tmp_path / "lb"
    first = run_grid(grid, out, cache_dir=cache_dir, executor=make_executor("inline"), progress=False)
    (path,) = (out / "cells").glob("*.json")
    honest = first.rows[0].fidelity
    path.write_text(path.read_text().replace(f'"fidelity": {honest}', '"fidelity": 0.999'))
    assert '"fidelity": 0.999' in path.read_text()
    second = run_grid(grid, out, cache_dir=cache_dir, executor=make_executor("inline"), progress=False)
    assert second.computed == 1 and second.rows[0].fidelity == honest
    assert "was altered" in caplog.text
    third = run_grid(grid, out, cache_dir=cache_dir, executor=make_executor("inline"), progress=False)
    assert third.cached == 1 and third.rows[0] == second.rows[0]


def test_the_out_directory_cannot_be_squatted_or_symlinked(tmp_path):
    from psml_bench.contract.errors import ConfigError
    from psml_bench.runner import prepare_out_dir

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "linked").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        prepare_out_dir(tmp_path / "linked")
    with pytest.raises(ConfigError, match="is a symbolic link"):  # checked before a run reads its cells
        prepare_out_dir(tmp_path / "linked", create=False)
    prepare_out_dir(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()  # a run that refuses to compute creates nothing
    (tmp_path / "open" / "cells").mkdir(parents=True)
    for directory in (tmp_path / "open", tmp_path / "open" / "cells"):
        directory.chmod(0o777)
    prepare_out_dir(tmp_path / "open")
    assert all((d.stat().st_mode & 0o777) == 0o755 for d in (tmp_path / "open", tmp_path / "open" / "cells"))
    (tmp_path / "open" / "cells").rmdir()
    (tmp_path / "open" / "cells").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        prepare_out_dir(tmp_path / "open")
    if os.geteuid() == 0:
        (tmp_path / "squatted").mkdir()
        os.chown(tmp_path / "squatted", 65534, 65534)
        with pytest.raises(ConfigError, match="belongs to uid 65534"):
            prepare_out_dir(tmp_path / "squatted")


VALIDATED = '''
import time

import numpy as np

from psml_bench import Attack


class Hostile(Attack):
    def run(self, target, knowledge, budget, rng):
        if "{mode}" == "hangs":
            while True:
                time.sleep(1)
        reserved = np.empty(30 * 2**30, dtype=np.uint8)  # a 30 GiB reservation
        return reserved
'''


@pytest.mark.parametrize("mode, reason", [("hangs", "timed out after 4s"), ("reserves", "MemoryError")])
def test_validate_limits_time_and_memory(tiny_zoo, cache_dir, tmp_path, monkeypatch, mode, reason):
    import json

    from psml_bench.bench import conformance as _conformance

    name = f"validated-{mode}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({
        "name": name, "kind": "attack", "entry": f"{name.replace('-', '_')}:Hostile", "version": "1",
        "authors": ["Mallory"], "description": "A hostile attack for the tests.", "license": "MIT",
        "parameters": {}, "grids": ["none"]}))
    (folder / f"{name.replace('-', '_')}.py").write_text(VALIDATED.format(mode=mode))
    monkeypatch.setattr(_conformance, "VALIDATE_TIMEOUT_S", 4.0)
    started = time.monotonic()
    result = _conformance.validate_submission(folder, cache_dir=cache_dir)
    assert not result.ok
    failed = [c for c in result.checks if not c.ok]
    assert failed and reason in failed[0].detail, result.checks
    assert time.monotonic() - started < 60


SNOOPING_DEFENSE = '''
import os
import socket

from psml_bench import Defense

MARKER = {marker!r}
DENIED = {denied!r}
OUT = {out!r}
try:  # module code runs wherever the module is imported
    open(MARKER, "w").write("imported")
except OSError:
    pass
{outcome}

class Snoops(Defense):
    """Reads the zoo, the dataset and the repository, forges a cell in the out directory, opens a socket."""

    version = "1"

    def postprocess(self, probabilities, rng):
        seen = looks()
        seen.append(f"out: {{outcome(lambda: open(os.path.join(OUT, 'forged.json'), 'w').write('forged'))}}")
        raise RuntimeError("; ".join(seen))
'''


def test_a_submitted_defense_runs_jailed_and_is_never_imported_by_the_harness(tiny_zoo, plugin, tmp_path):
    import json

    from psml_bench.contract.errors import DefenseError
    from psml_bench.plugins.manifests import load_manifest
    from psml_bench.plugins.registration import register
    from psml_bench.runner import prepare_out_dir
    from psml_bench.contract.spec import Spec

    out = tmp_path / "lb"
    prepare_out_dir(out)
    marker = tmp_path / "imported"
    folder = tmp_path / "snoops"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({
        "name": "snoops", "kind": "defense", "entry": "snoops:Snoops", "version": "1", "authors": ["Mallory"],
        "description": "A hostile defense for the tests.", "license": "MIT", "parameters": {}, "grids": ["none"]}))
    denied = plugin[2] + [str(out), str(out / "cells")]
    (folder / "snoops.py").write_text(SNOOPING_DEFENSE.format(marker=str(marker), denied=denied, out=str(out / "cells"),
                                                                 outcome=OUTCOME))
    register(load_manifest(folder))
    server = Frontend(tiny_zoo, defense=DEFENSES.get("snoops")(), rng=np.random.default_rng(0))
    spec = Spec(sum(server.spec_range.accuracy) / 2, sum(server.spec_range.latency_ms) / 2)
    with pytest.raises(DefenseError) as error:
        server.query(tiny_zoo.splits["benign_x"][:4], spec)
    message = str(error.value)
    # the environment is the sandbox's (torch may add its own variables in the process, e.g. its cache directory)
    assert message.startswith("defense 'snoops' raised RuntimeError: files: ['FileNotFoundError']; network: OSError; "
                              "environment: ['HOME', 'LANG', 'PATH'"), message
    assert message.endswith("; descriptors: 5; out: FileNotFoundError") and "PSML" not in message, message
    assert not marker.exists() and list((out / "cells").iterdir()) == []  # never imported here; nothing forged
