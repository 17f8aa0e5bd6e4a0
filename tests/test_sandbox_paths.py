"""The sandbox starts wherever Python lives (a venv under /tmp), and says why when it cannot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from psml_bench.isolation.sandbox import Sandbox, SandboxUnavailable, bwrap_command, last_line
from psml_bench.isolation.attack_process import SANDBOX_TARGETS, sandbox_available

SANDBOXED = pytest.mark.skipif(not sandbox_available(), reason="the sandbox needs bubblewrap and user namespaces")
REPO = Path(__file__).resolve().parents[1]

LATE_IMPORT = '''
import os

from psml_bench import Attack


class LateImport(Attack):
    """Imports a module of the venv only once it runs, after its private /tmp is mounted."""

    def run(self, target, knowledge, budget, rng):
        import venv_helper

        here = os.path.dirname(os.path.abspath(venv_helper.__file__))
        mounts = [line.split() for line in open("/proc/self/mountinfo")]
        point = max((f[4] for f in mounts if here == f[4] or here.startswith(f[4].rstrip("/") + "/")), key=len)
        options = next(fields[5] for fields in mounts if fields[4] == point)
        with open("/tmp/scratch", "w") as file:
            file.write("private")
        raise RuntimeError(f"{venv_helper.VALUE} from {here} ({options.split(',')[0]}); /tmp writable")
'''

DRIVER = '''
import sys
from pathlib import Path

import numpy as np

import psml_bench
from psml_bench import Knowledge
from psml_bench.isolation.attack_process import AttackFailed, PluginLocator, run_attack
from psml_bench.contract.registries import DEFENSES
from psml_bench.serving.frontend import Frontend
from psml_bench.zoo.build import open_zoo

assert psml_bench.__file__.startswith(sys.argv[2]), psml_bench.__file__
zoo = open_zoo("fmnist-tiny", Path(sys.argv[1]), progress=False)
server = Frontend(zoo, defense=DEFENSES.get("none")(), rng=np.random.default_rng(0), budget=10)
knowledge = Knowledge(input_shape=zoo.input_shape, num_classes=zoo.num_classes, spec_range=server.spec_range,
                      pool=zoo.splits["attacker_x"], role="rank:1")
try:
    run_attack(server, PluginLocator("venv_attack:LateImport"), knowledge, 10, np.random.default_rng(0), timeout_s=120)
except AttackFailed as exc:
    print(exc)
'''


@SANDBOXED
def test_an_attack_runs_sandboxed_from_a_venv_and_a_clone_under_tmp(tiny_zoo, tmp_path):
    """A copied-interpreter venv and a copy of the harness, both under /tmp, which the jail's and the attack
    process's own tmpfs on /tmp used to hide (``bwrap: execvp .../bin/python3: No such file or directory``)."""
    assert str(tmp_path).startswith("/tmp/")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--copies", "--without-pip", str(venv)],
                   check=True)
    python = venv / "bin" / "python3"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    assert purelib.startswith(str(venv)) and purelib != sysconfig.get_path("purelib")
    (Path(purelib) / "venv_helper.py").write_text("VALUE = 'helper imported'\n")
    (Path(purelib) / "venv_attack.py").write_text(LATE_IMPORT)
    clone = tmp_path / "clone"
    for package in ("psml_bench", "attacks", "defenses", "strategies"):
        shutil.copytree(REPO / package, clone / package, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([str(python), "-c", DRIVER, str(tiny_zoo.directory.parent.parent), str(clone)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(clone),
                               "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (f"the attack raised RuntimeError: helper imported from {purelib} (ro); "
                                   "/tmp writable"), done.stdout + done.stderr[-2000:]


@SANDBOXED
def test_a_jail_that_cannot_start_says_why_in_one_line(monkeypatch, tmp_path):
    missing = tmp_path / "gone" / "python3"
    monkeypatch.setattr(sys, "executable", str(missing))
    sandbox = Sandbox(jailed=True, preload=(), targets=SANDBOX_TARGETS)
    try:
        with pytest.raises(SandboxUnavailable) as error:
            sandbox.fork()
    finally:
        sandbox.stop()
    message = str(error.value)
    assert message.startswith("the attack sandbox did not start (the zygote ended before it was ready): bwrap: ")
    assert str(missing) in message and "\n" not in message, message


def test_the_jails_own_mounts_come_before_the_binds_they_would_hide():
    command = bwrap_command("/usr/bin/python3", ["-c", "pass"])
    first_bind = command.index("--ro-bind")
    assert command.index("/tmp") < first_bind and command.index("--dev") < first_bind
    assert command.index("--proc") < first_bind


@pytest.mark.parametrize(("stderr", "line"), [
    (b"", ""),
    (b"Traceback\n  File x\nModuleNotFoundError: No module named 'psml_bench'\n\n",
     "ModuleNotFoundError: No module named 'psml_bench'"),
    (b"bwrap: execvp /tmp/v/bin/python3: No such file or directory\x1b[2J\n",
     "bwrap: execvp /tmp/v/bin/python3: No such file or directory [2J"),
])
def test_last_line_is_one_printable_line(stderr, line):
    assert last_line(stderr) == line
