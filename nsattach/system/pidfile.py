"""Reading a daemon's pidfile and deciding whether the pid in it is plausibly the daemon.

uWSGI trusts ``kill(pid, 0)`` (Q-D9): a dead daemon whose pid was recycled looks alive, and a
stale pidfile naming an unrelated process gets that process adopted and signalled. Here a pid
is accepted only when

* the pidfile is a regular file (not a symbolic link) holding one small positive number;
* the process is alive (not a zombie), is not nsattach itself and not PID 1;
* it started no later than the pidfile was last written (a recycled pid is a newer process);
* and, when someone other than root could have written the pidfile (it or its directory is
  writable by a non-root user, like anything in /tmp), the process runs as the pidfile's
  owner or the daemon's own user, or is a descendant of nsattach. A user who can write the
  pidfile can then only point nsattach at processes that user could signal anyway.
"""

from __future__ import annotations

import errno
import os
import stat
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
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return PidfileResult(None, "missing")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return PidfileResult(None, "is a symbolic link (refused: it could point anywhere)")
        return PidfileResult(None, f"cannot open: {exc.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
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


def _writable_by_others(st: os.stat_result) -> bool:
    """Could a user other than root have changed this file or directory?"""
    if st.st_uid != 0 and st.st_mode & stat.S_IWUSR:
        return True
    if st.st_gid != 0 and st.st_mode & stat.S_IWGRP:
        return True
    return bool(st.st_mode & stat.S_IWOTH)


def is_descendant(pid: int, ancestor: int) -> bool:
    for _ in range(256):           # bounded: a parent chain is never that long
        st = procfs.read_stat(pid)
        if st is None or st.ppid <= 1:
            return False
        if st.ppid == ancestor:
            return True
        pid = st.ppid
    return False


def plausible(pid: int, pidfile: str, daemon_uid: int | None = None, master_pid: int | None = None) -> str | None:
    """None when ``pid`` may be adopted; otherwise the reason it may not."""
    master_pid = os.getpid() if master_pid is None else master_pid
    if pid == master_pid:
        return f"pid {pid} is nsattach itself"
    if pid == 1:
        return "pid 1 is init, never a daemon of ours"
    st = procfs.read_stat(pid)
    if st is None or st.is_zombie:
        return f"pid {pid} is not running"
    try:
        file_st = os.stat(pidfile, follow_symlinks=False)
        dir_st = os.stat(os.path.dirname(pidfile) or ".")
    except OSError:
        return f"pid {pid}: cannot stat the pidfile"
    if procfs.start_time(st) > file_st.st_mtime + START_SLACK_S:
        return f"pid {pid} started after the pidfile was written (a recycled pid, not the daemon)"
    if _writable_by_others(file_st) or _writable_by_others(dir_st):
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return f"pid {pid} is not running"
        allowed = {file_st.st_uid} | ({daemon_uid} if daemon_uid is not None else set())
        if owner not in allowed and not is_descendant(pid, master_pid):
            return (f"pid {pid} runs as uid {owner}, but the pidfile can be written by other users and belongs to "
                    f"uid {file_st.st_uid}: not adopting a process nsattach cannot tell is the daemon")
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
