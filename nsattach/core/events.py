"""What happened: the inputs of the pure core. Every event carries ``now`` (monotonic seconds)."""

from __future__ import annotations

from dataclasses import dataclass

from nsattach.config.model import Plan


@dataclass(frozen=True)
class Event:
    now: float


@dataclass(frozen=True)
class MasterStarted(Event):
    pass


@dataclass(frozen=True)
class Spawned(Event):
    """A Spawn effect succeeded: ``pid`` is our child, ``program_pid`` runs the program
    (different from pid only when the master daemonized it)."""

    name: str
    pid: int
    program_pid: int


@dataclass(frozen=True)
class SpawnFailed(Event):
    name: str
    reason: str


@dataclass(frozen=True)
class ProcessExited(Event):
    """A watched process is gone. ``status`` is the wait status when we reaped it (our child),
    None when it was not our child (seen through its pidfd only)."""

    pid: int
    status: int | None


@dataclass(frozen=True)
class PidfileRead(Event):
    """The result of reading a daemon's pidfile: a live, plausible pid, or None with the reason."""

    name: str
    pid: int | None
    reason: str = ""


@dataclass(frozen=True)
class TimerFired(Event):
    name: str          # daemon name, or "" for the master
    key: str


@dataclass(frozen=True)
class Touched(Event):
    name: str          # daemon name, or "" for touch-reload
    path: str


@dataclass(frozen=True)
class RemnantsFound(Event):
    """After a daemon's tracked process died: the pids still in its session (may be empty)."""

    name: str
    pids: tuple[int, ...]


@dataclass(frozen=True)
class StopRequested(Event):
    signame: str = "SIGTERM"


@dataclass(frozen=True)
class ReloadRequested(Event):
    pass


@dataclass(frozen=True)
class ConfigReloaded(Event):
    plan: Plan


@dataclass(frozen=True)
class ConfigReloadFailed(Event):
    errors: tuple[str, ...]


@dataclass(frozen=True)
class LordChanged(Event):
    """This node became (or stopped being) the lord of ``legion``; ``since`` is wall time."""

    legion: str
    lord: bool
    since: float = 0.0
