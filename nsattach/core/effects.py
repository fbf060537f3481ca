"""What to do: the outputs of the pure core, carried out by the runtime."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Effect:
    pass


@dataclass(frozen=True)
class Spawn(Effect):
    """Fork and exec the daemon; the runtime answers with Spawned or SpawnFailed."""

    name: str
    respawn: bool


@dataclass(frozen=True)
class Watch(Effect):
    """Watch ``pid`` (open a pidfd); its death comes back as ProcessExited."""

    pid: int


@dataclass(frozen=True)
class Unwatch(Effect):
    pid: int


@dataclass(frozen=True)
class SendSignal(Effect):
    """Signal a watched process, or its whole process group when ``group`` is set.

    The runtime signals through the pidfd it holds, so a pid that was recycled meanwhile is
    never hit; for a group it uses killpg, which is safe while the group has members (the
    kernel does not hand out a pid that is still some group's id)."""

    pid: int
    signum: int
    group: bool = True


@dataclass(frozen=True)
class FindRemnants(Effect):
    """Look for processes left in the daemon's session (sid = the pid we spawned);
    answered with RemnantsFound."""

    name: str
    sid: int


@dataclass(frozen=True)
class KillPids(Effect):
    """Signal stray processes (remnants) by pid after checking they are still in ``sid``."""

    pids: tuple[int, ...]
    sid: int
    signum: int
    name: str = ""        # the daemon: with SIGKILL the runtime empties its whole cgroup too


@dataclass(frozen=True)
class ReadPidfile(Effect):
    """Read and check the daemon's pidfile; answered with PidfileRead."""

    name: str


@dataclass(frozen=True)
class ArmTimer(Effect):
    name: str
    key: str
    at: float


@dataclass(frozen=True)
class CancelTimer(Effect):
    name: str
    key: str


@dataclass(frozen=True)
class WatchTouch(Effect):
    """Start (or stop, with paths=()) polling these files for the daemon ("" = the master)."""

    name: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Log(Effect):
    text: str
    level: str = "info"


@dataclass(frozen=True)
class LoadConfig(Effect):
    """Read the configuration again; answered with ConfigReloaded or ConfigReloadFailed."""


@dataclass(frozen=True)
class Exit(Effect):
    status: int
