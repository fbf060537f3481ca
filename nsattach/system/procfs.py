"""Reading process facts from /proc: state, session, start time, and the members of a session.

All readers return None (or an empty result) for a process that is gone; none of them raises
for a race with an exiting process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start_ticks: int      # since boot, in clock ticks

    @property
    def is_zombie(self) -> bool:
        return self.state in ("Z", "X")


def read_stat(pid: int, proc: str = "/proc") -> ProcStat | None:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may itself hold spaces and ')': cut at the last ')'
    end = data.rfind(b")")
    if end < 0:
        return None
    fields = data[end + 2:].split()
    try:
        return ProcStat(pid=pid, state=fields[0].decode(), ppid=int(fields[1]), pgrp=int(fields[2]),
                        session=int(fields[3]), start_ticks=int(fields[19]))
    except (IndexError, ValueError):
        return None


def boot_time(proc: str = "/proc") -> float:
    with open(f"{proc}/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


_BOOT_TIME: float | None = None


def start_time(stat: ProcStat) -> float:
    """Wall-clock start time of a process (seconds since the epoch, tick resolution)."""
    global _BOOT_TIME
    if _BOOT_TIME is None:
        _BOOT_TIME = boot_time()
    return _BOOT_TIME + stat.start_ticks / CLOCK_TICKS


def all_pids(proc: str = "/proc") -> list[int]:
    return [int(name) for name in os.listdir(proc) if name.isdigit()]


def session_members(sid: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """Live (non-zombie) processes whose session is ``sid``."""
    members = []
    for pid in all_pids():
        if pid in exclude:
            continue
        st = read_stat(pid)
        if st is not None and st.session == sid and not st.is_zombie:
            members.append(pid)
    return members


def in_session(pid: int, sid: int) -> bool:
    st = read_stat(pid)
    return st is not None and st.session == sid and not st.is_zombie
