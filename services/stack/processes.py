"""Child processes of the embedded stack: start, pid files, stale-process recovery, stop.

Children get a parent-death signal, so even a SIGKILLed ``up`` leaves nothing
running; a pid file per child lets the next ``up`` on the same data dir clean
up anything that survived anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pwd
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from shared.errors import StackError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup(death_signal: int, user: str | None) -> Callable[[], None]:
    """Runs in the forked child: drop privileges first, then ask for the death signal.

    The order matters: a credential change clears the parent-death signal.
    """
    entry = pwd.getpwnam(user) if user else None

    def setup() -> None:
        os.setpgid(0, 0)
        if entry is not None:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
        _libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)

    return setup


@dataclass
class Child:
    """One child process the stack owns, with its pid file and log file."""

    name: str
    argv: Sequence[str]
    run_dir: Path
    log_file: Path
    env: dict[str, str] | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    process: asyncio.subprocess.Process | None = field(default=None, init=False)

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start the process; its output is appended to its log file."""
        reap_stale(self.pid_file)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                preexec_fn=_child_setup(self.stop_signal, self.user),
            )
        self.pid_file.write_text(f"{self.process.pid}\n")
        log.debug("started %s pid=%s", self.name, self.process.pid)

    async def stop(self, timeout: float = 10.0) -> int | None:
        """Ask the process to stop, wait, then kill its whole process group."""
        proc = self.process
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        _kill_group_leftovers(proc.pid)
        self.pid_file.unlink(missing_ok=True)
        return proc.returncode

    def tail_log(self, lines: int = 30) -> str:
        """The end of the child's log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _kill_group_leftovers(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def reap_stale(pid_file: Path, *, timeout: float = 10.0) -> bool:
    """Stop a process left behind by a crashed run, if the pid file names a live one.

    Returns True when something was stopped. The process is only touched when its
    start time predates the pid file, so a recycled pid is never killed.
    """
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        pid_file.unlink(missing_ok=True)
        return False
    stopped = False
    try:
        proc = psutil.Process(pid)
        if proc.create_time() <= pid_file.stat().st_mtime + 1:
            log.warning("stopping stale %s (pid %s) left by an earlier run", pid_file.stem, pid)
            stop_process_tree(proc, timeout=timeout)
            stopped = True
    except psutil.NoSuchProcess:
        pass
    pid_file.unlink(missing_ok=True)
    return stopped


def stop_process_tree(proc: psutil.Process, *, timeout: float = 10.0) -> None:
    """SIGTERM a process and its descendants, SIGKILL whatever is left after timeout."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


async def wait_for(
    check: Callable[[], object],
    *,
    child: Child | None,
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> None:
    """Poll an async or sync check until it succeeds; fail fast if the child died."""
    deadline = asyncio.get_running_loop().time() + timeout
    last_error: BaseException | None = None
    while True:
        if child is not None and not child.running():
            raise StackError(f"{what}: process exited early\n{child.tail_log()}")
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result is not False:
                return
        except Exception as exc:
            last_error = exc
        if asyncio.get_running_loop().time() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            tail = f"\n{child.tail_log()}" if child else ""
            raise StackError(f"{what}: not ready after {timeout:.0f}s{detail}{tail}")
        await asyncio.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
