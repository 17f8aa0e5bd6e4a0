"""The sandbox: attack processes forked from a preloaded zygote inside a bubblewrap jail, fresh namespaces per cell.

Each process that runs attacks (an executor's worker, ``validate``) starts one *sandbox*: bubblewrap
(``bwrap``, Debian package ``bubblewrap``) with new user, PID, mount, network, IPC, UTS and cgroup
namespaces, ``--die-with-parent`` and ``--new-session``, a cleared environment and a read-only
filesystem that holds only the system libraries (``/usr/lib``), the Python installation and the
harness's own packages (``psml_bench``, ``attacks``, ``defenses``, ``strategies``, mounted at
:data:`SANDBOX_ROOT`). Nothing else exists in it: no dataset, no zoo cache, no working directory,
no output directory, no network, and no descriptor but its control socket. Inside, a *zygote*
Python (``-I -S``: no environment variables, no site hooks, no working directory on ``sys.path``)
imports the code every attack needs once, then forks one attack process per cell (and one process
per instance of a submitted defense, :mod:`psml_bench.isolation.jailed_defense`). Each such process enters fresh
user, PID, mount, IPC and network namespaces (it is PID 1 of its own, so every
child it starts ends with it), mounts a private ``/tmp`` and ``/dev/shm``, drops every capability,
and talks to its worker over a socket pair passed to it, nothing else. Plugin code the sandbox cannot
see is read by the worker (:func:`read_sources`) and imported from memory (:class:`MemoryFinder`).

A run on a GPU (``psml-bench run --device cuda``) gives its workers' jails the host's NVIDIA device
files and a read-only ``/sys`` as well, so that the attack process can train its surrogate there.

Where bubblewrap is missing or cannot create namespaces, only built-in attacks run, in an
unsandboxed zygote (with a warning); any other attack is refused with one message.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

SANDBOX_ROOT = "/opt/psml-bench"
"""Where the harness's packages appear inside the sandbox (the only entry of ``sys.path`` outside Python's own)."""
HARNESS_PACKAGES = ("psml_bench", "attacks", "defenses", "strategies")
SANDBOX_ID = 65534
"""uid and gid of every process in the sandbox ("nobody")."""
TMPFS_SIZE = "512m"
"""Size limit of an attack process's private ``/tmp`` and ``/dev/shm`` each."""
START_TIMEOUT_S = 300.0
"""How long a zygote may take to import its preloads."""
STASH = "/opt/psml-bench-stash"
"""Where an attack process keeps the jail's ``/tmp`` while it mounts its private one (see :func:`_private_tmpfs`)."""
PRIVATE_POINTS = ("/tmp", "/dev/shm")
"""Where every attack process mounts its own tmpfs."""
SYSTEM_TREES = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib", "/etc/ld.so.cache", "/etc/ld.so.conf",
                "/etc/ld.so.conf.d")
_LINKS = ("/lib", "/lib64", "/lib32")

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = (
    0x00020000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MNT_DETACH = 2, 4, 4096, 16384, 2
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 4


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here; the message says which and what to do."""


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


# --- the jail, seen from the worker ---------------------------------------------------------------

def harness_trees() -> dict[str, str]:
    """Host directory -> sandbox directory of each harness package this process imports."""
    trees = {}
    for name in HARNESS_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            trees[str(Path(list(spec.submodule_search_locations)[0]).resolve())] = f"{SANDBOX_ROOT}/{name}"
    return trees


def python_trees() -> list[str]:
    """The Python installation (prefixes and every ``site-packages`` on ``sys.path``), read-only in the sandbox."""
    trees = {str(Path(p).resolve()) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    for entry in sys.path:
        if entry and os.path.isabs(entry) and Path(entry).name in ("site-packages", "dist-packages") \
                and Path(entry).is_dir():
            resolved = str(Path(entry).resolve())
            if not any(_inside(resolved, tree) for tree in trees):
                trees.add(resolved)
    return sorted(trees)


def _inside(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def visible(path: Path | str) -> bool:
    """Whether a host file is readable inside the sandbox (under the Python installation or a harness package)."""
    resolved = str(Path(path).resolve())
    return any(_inside(resolved, tree) for tree in (*python_trees(), *harness_trees()))


def sandbox_sys_path() -> list[str]:
    """``sys.path`` of the zygote: the harness packages, then this process's entries inside the Python trees
    (resolved, since the jail binds each tree at its real path: a symlinked prefix is not there)."""
    trees = python_trees()
    entries = [SANDBOX_ROOT]
    for entry in sys.path:
        if not (entry and os.path.isabs(entry) and Path(entry).exists()):
            continue
        resolved = str(Path(entry).resolve())
        if any(_inside(resolved, t) for t in trees) and resolved not in entries:
            entries.append(resolved)
    return entries


def kept_trees() -> list[str]:
    """The bound Python trees that lie under a place where each attack process mounts its private tmpfs
    (a venv under ``/tmp``): the attack process binds them back (:func:`_private_tmpfs`)."""
    return [tree for tree in python_trees() if any(_inside(tree, point) for point in PRIVATE_POINTS)]


def hidden_paths() -> list[str]:
    """Host directories masked (empty) in the sandbox should a bound tree contain them: data, caches, this directory."""
    candidates = [os.getcwd(), os.environ.get("PSML_BENCH_FMNIST_DIR", ""), "/usr/share/datasets",
                  os.environ.get("PSML_BENCH_CACHE", ""), os.environ.get("PSML_BENCH_TEST_CACHE", ""),
                  str(Path.home() / ".cache")]
    return [str(Path(p).resolve()) for p in candidates if p and Path(p).is_dir()]


def gpu_binds(dev: Path = Path("/dev")) -> list[str]:
    """bubblewrap arguments that give the jail the host's NVIDIA device files under ``dev`` (read-write:
    CUDA opens them so) and, read-only, the ``/sys`` its driver library inspects; none without a GPU."""
    devices = sorted(str(p) for p in dev.glob("nvidia*"))
    if not devices:
        return []
    binds = [arg for device in devices for arg in ("--dev-bind", device, device)]
    return binds + ["--ro-bind-try", "/sys", "/sys"]


def bwrap_command(executable: str, argv: list[str], gpu: bool = False) -> list[str]:
    """The bubblewrap command line that runs ``executable argv`` in the jail (with the GPUs if ``gpu``)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("the attack sandbox needs bubblewrap, and 'bwrap' is not on PATH (Debian package "
                                 "bubblewrap; scripts/install.sh installs it)")
    command = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
               "--setenv", "HOME", "/tmp", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8"]
    # The jail's own mounts first: a tmpfs on /tmp (or a fresh /dev) made after the binds would hide a
    # Python installation or harness that lives there (a venv under /tmp).
    command += ["--dev", "/dev", "--proc", "/proc", "--size", str(2**20), "--tmpfs", "/tmp"]
    for tree in SYSTEM_TREES:
        command += ["--ro-bind-try", tree, tree]
    for link in _LINKS:
        if os.path.islink(link):
            command += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            command += ["--ro-bind", link, link]
    bound = python_trees()
    for tree in bound:
        command += ["--ro-bind", tree, tree]
    for source, target in harness_trees().items():
        command += ["--ro-bind", source, target]
        bound.append(source)
    for path in hidden_paths():
        if any(_inside(path, tree) and path != tree for tree in bound):
            command += ["--tmpfs", path]
    if kept_trees():
        command += ["--dir", STASH]
    command += [*(gpu_binds() if gpu else []), "--remount-ro", "/dev", "--remount-ro", "/",
                "--uid", str(SANDBOX_ID), "--gid", str(SANDBOX_ID), "--chdir", "/", executable, *argv]
    return command


@functools.lru_cache(maxsize=None)  # a probe of this machine, not a result: bubblewrap works or not for the process
def sandbox_problem() -> str:
    """Why the sandbox cannot run here ("" when it can): bubblewrap missing, or refused namespaces."""
    try:
        command = bwrap_command(str(Path(sys.executable).resolve()), ["-I", "-S", "-c", "pass"])
    except SandboxUnavailable as exc:
        return str(exc)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the attack sandbox cannot start: bwrap failed ({exc})"
    if done.returncode != 0:
        reason = last_line(done.stderr) or f"exit code {done.returncode}"
        return f"the attack sandbox cannot start: bwrap failed here ({reason})"
    return ""


def last_line(text: str | bytes) -> str:
    """The last non-empty line of a process's stderr, on one line and bounded (its own words on why it ended)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join("".join(c if c.isprintable() else " " for c in lines[-1]).split())[:300] if lines else ""


class Sandbox:
    """One zygote (jailed, or plain for built-ins where bubblewrap cannot run) that forks processes.

    ``targets`` are ``module:function`` entry points (an attack process's, a submitted defense's);
    :meth:`fork` names which one the new process runs.
    """

    def __init__(self, jailed: bool, preload: tuple[str, ...], targets: tuple[str, ...], gpu: bool = False):
        self.jailed = jailed
        self.gpu = gpu
        self.preload = preload
        self.targets = targets
        self.process: subprocess.Popen | None = None
        self.control: socket.socket | None = None
        self.stderr: Any = None  # the zygote's start-up output (it silences itself once ready)
        self.ready = False

    def start(self) -> None:
        parent, child = socket.socketpair()
        imports = "; ".join(f"from {module} import {function} as target{i}"
                            for i, (module, _, function) in enumerate(t.partition(":") for t in self.targets))
        functions = ", ".join(f"target{i}" for i in range(len(self.targets)))
        boot = (f"import sys; sys.path[:] = {sandbox_sys_path() if self.jailed else _plain_sys_path()!r}; "
                f"from psml_bench.isolation.sandbox import zygote; {imports}; "
                f"zygote({child.fileno()}, ({functions},), {self.preload!r}, {self.jailed!r}, "
                f"{kept_trees() if self.jailed else []!r})")
        executable = str(Path(sys.executable).resolve())
        argv = ["-I", "-S", "-c", boot]
        command = bwrap_command(executable, argv, self.gpu) if self.jailed else [executable, *argv]
        if self.stderr is not None:
            self.stderr.close()
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self.stderr, cwd="/",
                                        env={} if self.jailed else {"PATH": "/usr/bin:/bin"})
        child.close()
        self.control = parent

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _wait_ready(self) -> None:
        """Wait for the zygote's imports (so that an attack's time limit does not count them)."""
        self.control.settimeout(START_TIMEOUT_S)
        try:
            if self.control.recv(1) != b"r":
                raise OSError("the zygote ended before it was ready")
        except OSError as exc:
            reason = self._startup_error()
            self.stop()
            raise SandboxUnavailable(f"the attack sandbox did not start ({exc})" + (f": {reason}" if reason else "")
                                     ) from None
        finally:
            if self.control is not None:
                self.control.settimeout(None)
        self.ready = True

    def _startup_error(self) -> str:
        """bubblewrap's or the zygote's last line on stderr (e.g. ``bwrap: execvp /x/bin/python3: No such file``)."""
        if self.stderr is None or self.process is None:
            return ""
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.stderr.seek(0, os.SEEK_END)
        self.stderr.seek(max(0, self.stderr.tell() - 8192))
        return last_line(self.stderr.read())

    def fork(self, target: int = 0) -> Connection:
        """A new process running ``targets[target]``; returns the worker's end of its channel."""
        for attempt in (0, 1):
            if not self.alive():
                self.stop()
                self.start()
            if not self.ready:
                self._wait_ready()
            ours, theirs = socket.socketpair()
            try:
                socket.send_fds(self.control, [bytes([target])], [theirs.fileno()])
            except OSError:
                ours.close()
                self.stop()
                if attempt:
                    raise
                continue
            finally:
                theirs.close()
            return Connection(ours.detach())
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """End the zygote and, with it, every process in the sandbox."""
        self.ready = False
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.process = None


def _plain_sys_path() -> list[str]:
    return [os.path.abspath(p) for p in sys.path if p and os.path.isabs(p)] + \
        [str(Path(src).parent) for src in harness_trees()]


def read_sources(folder: Path) -> dict[str, str]:
    """Module name -> source of every ``.py`` file under ``folder`` (read by the worker)."""
    sources = {}
    for path in sorted(folder.rglob("*.py")):
        relative = path.relative_to(folder).with_suffix("")
        parts = list(relative.parts)
        if any(not p.isidentifier() for p in parts):
            continue
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        if parts:
            sources[".".join(parts) + ("/__init__" if is_package else "")] = path.read_text()
    return sources


# --- inside the sandbox ---------------------------------------------------------------------------

class MemoryFinder:
    """Imports a submission's modules from sources the worker sent."""

    def __init__(self, sources: dict[str, str], origin: str):
        self.sources = sources
        self.origin = origin

    def find_spec(self, name: str, path: Any = None, target: Any = None):
        import importlib.util

        if f"{name}/__init__" in self.sources:
            spec = importlib.util.spec_from_loader(name, self, origin=f"{self.origin}/{name}", is_package=True)
            spec.submodule_search_locations = []
            return spec
        if name in self.sources:
            return importlib.util.spec_from_loader(name, self, origin=f"{self.origin}/{name}.py")
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        source = self.sources.get(f"{module.__name__}/__init__", self.sources.get(module.__name__))
        code = compile(source, module.__spec__.origin, "exec")
        exec(code, module.__dict__)  # noqa: S102 - this is the sandboxed plugin import



def zygote(fd: int, targets: tuple[Callable[[Connection], None], ...], preload: tuple[str, ...],
           jailed: bool, kept: list[str] = ()) -> None:
    """Import ``preload``, then fork one process per request on ``fd``, running the target it names
    with its channel (``kept``: the Python trees under ``/tmp`` that each such process binds back)."""
    for module in preload:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    quiet = os.open(os.devnull, os.O_WRONLY)  # start-up went well: the worker reads stderr only when it did not
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    os.close(quiet)
    _libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)  # attack processes cannot trace it or read its memory
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked children are reaped by the kernel
    control = socket.socket(fileno=fd)
    control.sendall(b"r")
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 1)
        except OSError:
            return
        if not message or not fds or message[0] >= len(targets):
            return
        if os.fork() == 0:
            control.close()
            try:
                _cell_process(fds[0], targets[message[0]], jailed, tuple(kept))
            finally:
                os._exit(0)
        os.close(fds[0])


def _cell_process(fd: int, target: Callable[[Connection], None], jailed: bool, kept: tuple[str, ...] = ()) -> None:
    libc = _libc()
    if not jailed:  # a built-in without bubblewrap: dies with the zygote, which dies with its worker
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        target(Connection(fd))
        return
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare failed")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as file:
            file.write(text)
    if os.fork() != 0:  # the attack process is PID 1 of the new namespace: all its children end with it
        return
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for point in PRIVATE_POINTS:
        _private_tmpfs(libc, point, [tree for tree in kept if _inside(tree, point)])
    _drop_capabilities(libc)
    target(Connection(fd))


def _private_tmpfs(libc: Any, point: str, kept: list[str]) -> None:
    """Mount a fresh tmpfs on ``point``, binding back the Python trees under it (``kept``), which the
    tmpfs would hide: the jail's ``point`` is first bound at :data:`STASH`, then unmounted from there."""
    def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                      data.encode() if data else None) != 0:
            raise OSError(ctypes.get_errno(), f"mounting {source} on {target} failed")

    if kept:
        mount(point, STASH, None, _MS_BIND | _MS_REC)
    mount("tmpfs", point, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={TMPFS_SIZE},mode=1777")
    for tree in kept:
        os.makedirs(tree, exist_ok=True)
        mount(STASH + tree[len(point.rstrip("/")):], tree, None, _MS_BIND | _MS_REC)  # read-only, as bound
    if kept and libc.umount2(STASH.encode(), _MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), f"unmounting {STASH} failed")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities(libc: Any) -> None:
    """Give up the capabilities a new user namespace grants (they would let the attack unmount its private /tmp)."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "dropping capabilities failed")
