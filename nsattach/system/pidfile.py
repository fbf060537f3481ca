"""Reading a daemon's pidfile and deciding whether the pid in it is plausibly the daemon.

uWSGI trusts ``kill(pid, 0)`` (Q-D9): a dead daemon whose pid was recycled looks alive, and a
stale pidfile naming an unrelated process gets that process adopted and signalled. Here a pid
is accepted only when the process is alive (not a zombie), is not us nor PID 1, and started
no later than the pidfile was last written (a recycled pid belongs to a newer process).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from nsattach.system import procfs

MAX_PIDFILE_BYTES = 64
START_SLACK_S = 2.0     # process start times have tick resolution; pidfile mtimes can be coarse


@dataclass(frozen=True)
class PidfileResult:
    pid: int | None
    reason: str = ""           # why pid is None


def read_pid(path: str) -> PidfileResult:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return PidfileResult(None, "missing")
    except OSError as exc:
        return PidfileResult(None, f"cannot open: {exc.strerror}")
    try:
        st = os.fstat(fd)
        import stat as stat_mod
        if not stat_mod.S_ISREG(st.st_mode):
            return PidfileResult(None, "not a regular file")
        data = os.read(fd, MAX_PIDFILE_BYTES + 1)
    except OSError as exc:
        return PidfileResult(None, f"cannot read: {exc.strerror}")
    finally:
        os.close(fd)
    if len(data) > MAX_PIDFILE_BYTES:
        return PidfileResult(None, "too large to hold a pid")
    text = data.split(b"\n", 1)[0].strip()
    if not text:
        return PidfileResult(None, "empty")
    if not text.isdigit():
        return PidfileResult(None, f"does not hold a pid ({text[:20]!r})")
    pid = int(text)
    if pid <= 0 or pid > 4194304:
        return PidfileResult(None, f"{pid} is not a valid pid")
    return PidfileResult(pid)


def plausible(pid: int, pidfile: str) -> str | None:
    """None when ``pid`` may be adopted; otherwise the reason it may not."""
    if pid == os.getpid():
        return f"pid {pid} is nsattach itself"
    if pid == 1:
        return "pid 1 is init, never a daemon of ours"
    st = procfs.read_stat(pid)
    if st is None or st.is_zombie:
        return f"pid {pid} is not running"
    try:
        written = os.stat(pidfile).st_mtime
    except OSError:
        return None
    if procfs.start_time(st) > written + START_SLACK_S:
        return f"pid {pid} started after the pidfile was written (a recycled pid, not the daemon)"
    return None


def write_pid(path: str, pid: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{pid}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
