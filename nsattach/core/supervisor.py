"""The pure core: daemon lifecycles, the master's stop and reload, as state machines.

``Supervisor.handle(event)`` takes one event (with ``now``) and returns the effects to carry
out. It never sleeps, forks, signals or reads a file: the runtime does that and feeds the
results back as events. Tests drive it with scripted event histories and a fake clock.

Log texts keep uWSGI's wording (uwsgi-spec §2.12) so operators' greps keep working; each line
ends with ``[name]`` so it is clear which daemon it is about.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from nsattach.config.model import DaemonKind, DaemonPlan, Plan
from nsattach.core import effects as fx
from nsattach.core import events as ev
from nsattach.core.throttle import Throttle

PIDFILE_CHECK_INTERVAL_S = 1.0     # how often pidfiles are re-read, as uWSGI does
STOP_GRACE_S = 1.0                 # after the SIGKILL round, how long a stop may still wait

# Linux signal numbers (the core imports no system module)
SIGKILL = 9
SIGHUP = 1


class DaemonState(enum.Enum):
    IDLE = "idle"            # not running, nothing pending (before start, after a stop)
    PROBING = "probing"      # smart: reading the pidfile to adopt a running instance
    STARTING = "starting"    # smart: spawned, waiting for a valid pidfile
    RUNNING = "running"
    BACKOFF = "backoff"      # waiting for the respawn delay
    STOPPING = "stopping"    # signalled, waiting for it to exit
    CLEANING = "cleaning"    # its process died; stopping what is left of its session
    RECHECK = "recheck"      # smart: its process died; reading the pidfile before respawning


class After(enum.Enum):
    """What to do once a daemon is down."""

    RESPAWN = "respawn"      # unexpected death: respawn, throttled
    RESTART = "restart"      # deliberate restart (touch, reload): spawn at once
    IDLE = "idle"            # stay down (master stopping)
    REMOVE = "remove"        # removed from the config by a reload


class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    DONE = "done"            # Exit has been issued


def exit_description(status: int | None) -> str:
    """uWSGI's wording for a wait status."""
    if status is None:
        return "exited"
    if status & 0x7F == 0:
        return f"exited with code {(status >> 8) & 0xFF}"
    if status & 0xFF == 0x7F:
        return "stopped"
    return f"exited by signal {status & 0x7F}"


@dataclass
class Daemon:
    """Runtime state of one daemon."""

    plan: DaemonPlan
    state: DaemonState = DaemonState.IDLE
    pid: int | None = None            # the tracked process (the program)
    child_pid: int | None = None      # smart: the process we forked, until it exits
    spawned_pid: int | None = None    # the process we forked last (for log lines)
    dead_pid: int | None = None       # smart: the pid that just died, while rechecking
    sid: int | None = None            # session we gave it (dumb daemons)
    started_at: float = 0.0
    respawns: int = 0                 # spawns so far (1 = first spawn)
    throttle: Throttle = field(default_factory=Throttle)
    pidfile_checks: int = 0
    pidfile_problem: str | None = None   # last reported pidfile problem (log once per change)
    after: After = After.RESPAWN
    remnants: set[int] = field(default_factory=set)
    escalated: bool = False           # SIGKILL already sent in this stop
    last_exit: int | None = None
    backoff_until: float | None = None
    new_plan: DaemonPlan | None = None   # replacement plan waiting for this daemon to go down

    @property
    def name(self) -> str:
        return self.plan.name

    def tag(self) -> str:
        return f"[{self.plan.name}]"


class Supervisor:
    def __init__(self, plan: Plan, master_ids: tuple[int, int] | None = None):
        self.plan = plan
        self.master_ids = master_ids       # (uid, gid) daemons inherit when they set none
        self.daemons: dict[str, Daemon] = {d.name: Daemon(d) for d in plan.daemons}
        self.phase = Phase.STARTING
        self.exit_status = 0
        self.owners: dict[int, tuple[str, str]] = {}   # watched pid -> (daemon name, role)
        self.stop_escalated = False
        # daemons an operator stopped: they stay down through respawns, touches, legion
        # changes and reloads until an operator starts them again
        self.held: set[str] = set()
        # legion -> wall time this node became its lord; absent = not the lord
        self.lords: dict[str, float] = {}
        self.lord_ready: set[str] = set()       # lord, and legion-lord-delay has passed

    @property
    def mercy(self) -> float:
        return float(self.plan.master.reload_mercy)

    # -- entry point ----------------------------------------------------------------------

    def handle(self, event: ev.Event) -> list[fx.Effect]:
        out: list[fx.Effect] = []
        method = getattr(self, "_on_" + type(event).__name__)
        method(event, out)
        return out

    # -- events ---------------------------------------------------------------------------

    def _on_MasterStarted(self, e: ev.MasterStarted, out: list) -> None:
        self.phase = Phase.RUNNING
        for d in self.daemons.values():
            if d.name in self.held:
                continue
            if self.may_run(d) or d.plan.is_smart:
                self._start(d, e.now, out)
        if self.plan.master.touch_reload:
            out.append(fx.WatchTouch("", self.plan.master.touch_reload))

    def _on_Spawned(self, e: ev.Spawned, out: list) -> None:
        d = self.daemons.get(e.name)
        if d is None:
            return
        d.respawns += 1
        d.started_at = e.now
        d.spawned_pid = e.pid
        d.escalated = False
        d.pidfile_checks = 0
        uid, gid = d.plan.identity.uid, d.plan.identity.gid
        if self.master_ids is not None:
            uid = self.master_ids[0] if uid is None else uid
            gid = self.master_ids[1] if gid is None else gid
        verb = "respawning" if d.respawns > 1 else "spawning"
        out.append(fx.Log(f'[uwsgi-daemons] {verb} "{d.plan.command}" (uid: {_id(uid)} gid: {_id(gid)}) '
                          f'{d.tag()} pid {e.program_pid}'))
        if d.plan.kind is DaemonKind.SMART:
            d.child_pid = e.pid
            d.pid = None
            self._watch(e.pid, d, "child", out)
            d.state = DaemonState.STARTING
            out.append(fx.ArmTimer(d.name, "pidfile", e.now + PIDFILE_CHECK_INTERVAL_S))
        else:
            d.pid = e.program_pid
            d.sid = e.program_pid
            self._watch(e.program_pid, d, "main", out)
            d.state = DaemonState.RUNNING
            if d.plan.kind is DaemonKind.SMART2:
                out.append(fx.ArmTimer(d.name, "pidfile", e.now + PIDFILE_CHECK_INTERVAL_S))
        if d.plan.touch:
            out.append(fx.WatchTouch(d.name, d.plan.touch))

    def _on_SpawnFailed(self, e: ev.SpawnFailed, out: list) -> None:
        d = self.daemons.get(e.name)
        if d is None:
            return
        d.respawns += 1
        out.append(fx.Log(f'[uwsgi-daemons] unable to spawn "{d.plan.command}": {e.reason} {d.tag()}', "error"))
        d.pid = None
        d.state = DaemonState.IDLE
        if self.phase is Phase.RUNNING and d.after is not After.REMOVE:
            if d.plan.control:
                self._control_died(d, None, e.now, out)
            else:
                self._respawn_later(d, 0.0, e.now, out)

    def _on_ProcessExited(self, e: ev.ProcessExited, out: list) -> None:
        owner = self.owners.pop(e.pid, None)
        if owner is None:
            out.append(fx.Log(f"subprocess {e.pid} {exit_description(e.status)}"))
            return
        name, role = owner
        d = self.daemons.get(name)
        if d is None:
            return
        if role == "child":
            d.child_pid = None
            out.append(fx.Log(f"subprocess {e.pid} {exit_description(e.status)} {d.tag()}"))
            if d.pid == e.pid:           # a foreground smart daemon: the child was the program
                self._main_died(d, e, out)
        elif role == "remnant":
            d.remnants.discard(e.pid)
            if not d.remnants and d.state is DaemonState.CLEANING:
                # look once more: a remnant may have forked before it died (a fork storm);
                # the round ends when a look finds nothing
                out.append(fx.FindRemnants(d.name, d.sid or 0))
        else:
            if d.pid == e.pid:
                self._main_died(d, e, out)

    def _on_RemnantsFound(self, e: ev.RemnantsFound, out: list) -> None:
        d = self.daemons.get(e.name)
        if d is None or d.state is not DaemonState.CLEANING:
            return
        pids = tuple(p for p in e.pids if p not in self.owners)
        if not pids:
            self._down(d, e.now, out)
            return
        out.append(fx.Log(f"[uwsgi-daemons] stopping {len(pids)} process(es) left behind by "
                          f'"{d.plan.command}" (pids: {" ".join(map(str, pids))}) {d.tag()}'))
        d.remnants.update(pids)
        for pid in pids:
            self._watch(pid, d, "remnant", out)
        sig = SIGKILL if d.escalated else d.plan.stop_signal
        out.append(fx.KillPids(pids, d.sid or 0, sig, d.name))
        if not d.escalated:
            out.append(fx.ArmTimer(d.name, "kill", e.now + self.mercy))

    def _on_PidfileRead(self, e: ev.PidfileRead, out: list) -> None:
        d = self.daemons.get(e.name)
        if d is None:
            return
        cmd = d.plan.command
        if e.pid is None and e.reason != d.pidfile_problem and d.state in (DaemonState.RUNNING, DaemonState.STARTING):
            out.append(fx.Log(f"[uwsgi-daemons] pidfile {d.plan.pidfile}: {e.reason} {d.tag()}", "warning"))
        d.pidfile_problem = e.reason if e.pid is None else None
        if d.state is DaemonState.PROBING:
            if e.pid is not None:
                out.append(fx.Log(f'[uwsgi-daemons] found valid/active pidfile for "{cmd}" (pid: {e.pid}) {d.tag()}'))
                self._adopt(d, e.pid, e.now, out)
                if not self.may_run(d):
                    # a legion daemon left running where this node is not the lord
                    out.append(fx.Log(f'[uwsgi_daemons] stopping legion "{d.plan.legion}" daemon: {cmd} (pid: {e.pid}) {d.tag()}'))
                    self._stop(d, d.plan.stop_signal, After.IDLE, e.now, out)
            elif not self.may_run(d):
                d.state = DaemonState.IDLE
            else:
                if e.reason != "missing":
                    out.append(fx.Log(f"[uwsgi-daemons] pidfile {d.plan.pidfile}: {e.reason}; not adopting it {d.tag()}",
                                      "warning"))
                self._spawn(d, out)
        elif d.state is DaemonState.STARTING:
            if e.pid is not None:
                out.append(fx.Log(f'[uwsgi-daemons] found changed pid for "{cmd}" (old_pid: {d.child_pid or d.spawned_pid or -1} new_pid: {e.pid}) {d.tag()}'))
                self._adopt(d, e.pid, e.now, out)
                return
            d.pidfile_checks += 1
            if d.pidfile_checks >= d.plan.freq:
                d.pidfile_checks = 0
                if d.child_pid is not None:
                    out.append(fx.Log(f'[uwsgi-daemons] "{cmd}" (pid: {d.child_pid}) did not daemonize !!! '
                                      f"(no valid pidfile {d.plan.pidfile} after {d.plan.freq} s) {d.tag()}", "warning"))
                else:
                    out.append(fx.Log(f'[uwsgi-daemons] found changed pidfile for "{cmd}" (old_pid: {d.pid or -1} new_pid: -1) {d.tag()}'))
                    d.state = DaemonState.IDLE
                    self._respawn_later(d, e.now - d.started_at, e.now, out)
                    return
            out.append(fx.ArmTimer(d.name, "pidfile", e.now + PIDFILE_CHECK_INTERVAL_S))
        elif d.state is DaemonState.RUNNING:
            if e.pid is not None and e.pid != d.pid:
                out.append(fx.Log(f'[uwsgi-daemons] found changed pid for "{cmd}" (old_pid: {d.pid} new_pid: {e.pid}) {d.tag()}'))
                old = d.pid
                if old is not None and self.owners.get(old, (None, None))[1] == "main":
                    del self.owners[old]
                    out.append(fx.Unwatch(old))
                self._adopt(d, e.pid, e.now, out)
                return
            out.append(fx.ArmTimer(d.name, "pidfile", e.now + PIDFILE_CHECK_INTERVAL_S))
        elif d.state is DaemonState.RECHECK:
            if e.pid is not None and e.pid != d.dead_pid:
                out.append(fx.Log(f'[uwsgi-daemons] found changed pid for "{cmd}" (old_pid: {d.dead_pid} new_pid: {e.pid}) {d.tag()}'))
                self._adopt(d, e.pid, e.now, out)
            else:
                d.state = DaemonState.IDLE
                self._down(d, e.now, out)

    def _on_TimerFired(self, e: ev.TimerFired, out: list) -> None:
        if e.name == "":
            if e.key == "stop-final":
                self._finish_stop(out, forced=True)
            elif e.key.startswith("lord-delay:"):
                legion = e.key.partition(":")[2]
                if legion in self.lords:
                    self._lord_ready(legion, e.now, out)
            return
        d = self.daemons.get(e.name)
        if d is None:
            return
        if e.key == "respawn" and d.state is DaemonState.BACKOFF:
            d.backoff_until = None
            if self.phase is Phase.RUNNING:
                self._spawn(d, out)
        elif e.key == "pidfile" and d.state in (DaemonState.STARTING, DaemonState.RUNNING) and d.plan.pidfile:
            out.append(fx.ReadPidfile(d.name))
        elif e.key == "kill":
            self._escalate(d, out)

    def _on_LordChanged(self, e: ev.LordChanged, out: list) -> None:
        """Legion daemons run only on the lord: start them when this node becomes the lord
        (after legion-lord-delay, if set), stop them (SIGKILL after the mercy, Q-D12) when it
        stops being the lord."""
        timer = f"lord-delay:{e.legion}"
        if e.lord:
            self.lords[e.legion] = e.since
            delay = self.plan.legion_settings.lord_delay
            if delay > 0 and e.legion not in self.lord_ready:
                # like consul's lock-delay: give the previous lord's daemons time to be gone
                out.append(fx.Log(f'[uwsgi-daemons] legion "{e.legion}": lord, starting its daemons in {delay} s'))
                out.append(fx.ArmTimer("", timer, e.now + delay))
                return
            self._lord_ready(e.legion, e.now, out)
            return
        self.lords.pop(e.legion, None)
        self.lord_ready.discard(e.legion)
        out.append(fx.CancelTimer("", timer))
        if self.phase is not Phase.RUNNING:
            return
        for d in list(self.daemons.values()):
            if d.plan.legion != e.legion:
                continue
            if d.state in (DaemonState.BACKOFF, DaemonState.PROBING):
                out.append(fx.CancelTimer(d.name, "respawn"))
                d.state = DaemonState.IDLE
            elif d.state is not DaemonState.IDLE:
                out.append(fx.Log(f'[uwsgi_daemons] stopping legion "{e.legion}" daemon: {d.plan.command} (pid: {d.pid}) {d.tag()}'))
                self._stop(d, d.plan.stop_signal, After.IDLE, e.now, out)

    def _lord_ready(self, legion: str, now: float, out: list) -> None:
        self.lord_ready.add(legion)
        if self.phase is not Phase.RUNNING:
            return
        for d in list(self.daemons.values()):
            if d.plan.legion == legion and d.state is DaemonState.IDLE and d.name not in self.held:
                out.append(fx.Log(f'[uwsgi-daemons] legion "{legion}": this node is the lord, starting "{d.plan.command}" {d.tag()}'))
                self._start(d, now, out)

    def may_run(self, d: Daemon) -> bool:
        """A legion daemon runs only while this node is its legion's lord (and the lord
        delay, if any, has passed)."""
        return d.plan.legion is None or d.plan.legion in self.lord_ready

    def _on_Touched(self, e: ev.Touched, out: list) -> None:
        if self.phase is not Phase.RUNNING:
            return
        if e.name == "":
            out.append(fx.Log(f"*** {e.path} has been touched... grace them all !!! ***"))
            self._on_ReloadRequested(ev.ReloadRequested(e.now), out)
            return
        d = self.daemons.get(e.name)
        if d is None or d.pid is None or d.state is not DaemonState.RUNNING:
            return
        out.append(fx.Log(f'*** {e.path} has been touched... reloading daemon "{d.plan.command}" (pid: {d.pid}) !!! *** {d.tag()}'))
        self._stop(d, d.plan.stop_signal, After.RESTART, e.now, out)

    def _on_StopRequested(self, e: ev.StopRequested, out: list) -> None:
        if self.phase is Phase.STOPPING:
            if not self.stop_escalated:
                self.stop_escalated = True
                out.append(fx.Log(f"{e.signame} received again: killing every daemon now"))
                for d in self.daemons.values():
                    self._escalate(d, out)
            return
        out.append(fx.Log(f"{e.signame} received...stopping daemons"))
        self._begin_stop(e.now, out)

    def _on_ReloadRequested(self, e: ev.ReloadRequested, out: list) -> None:
        if self.phase is not Phase.RUNNING:
            return
        out.append(fx.Log("...gracefully reloading daemons (re-reading the configuration)..."))
        out.append(fx.LoadConfig())

    def _on_ConfigReloadFailed(self, e: ev.ConfigReloadFailed, out: list) -> None:
        for error in e.errors:
            out.append(fx.Log(f"reload: {error}", "error"))
        out.append(fx.Log("reload aborted: the configuration has errors; still running the previous one", "error"))

    def _on_ConfigReloaded(self, e: ev.ConfigReloaded, out: list) -> None:
        if self.phase is not Phase.RUNNING:
            return
        old_plan, self.plan = self.plan, e.plan
        new = {d.name: d for d in e.plan.daemons}
        for d in list(self.daemons.values()):
            replacement = new.get(d.name)
            d.throttle.reset()
            if replacement is None:
                out.append(fx.Log(f'[uwsgi-daemons] daemon removed from the configuration: "{d.plan.command}" {d.tag()}'))
                self._stop(d, d.plan.stop_signal, After.REMOVE, e.now, out)
            elif d.plan.is_smart and replacement.is_smart and replacement.pidfile == d.plan.pidfile:
                d.plan = replacement
                if d.plan.notifypid and d.pid is not None:
                    out.append(fx.SendSignal(d.pid, d.plan.reload_signal or SIGHUP))
            else:
                d.new_plan = replacement
                self._stop(d, d.plan.effective_reload_signal if not d.plan.is_smart else d.plan.stop_signal,
                           After.RESTART, e.now, out)
        for name, dp in new.items():
            if name not in self.daemons:
                d = self.daemons[name] = Daemon(dp)
                if name not in self.held and (self.may_run(d) or d.plan.is_smart):
                    self._start(d, e.now, out)
        if old_plan.master.touch_reload != e.plan.master.touch_reload:
            out.append(fx.WatchTouch("", e.plan.master.touch_reload))
        out.append(fx.Log(f"reload done: {len(new)} daemon(s) configured"))

    # -- helpers --------------------------------------------------------------------------

    def _watch(self, pid: int, d: Daemon, role: str, out: list) -> None:
        self.owners[pid] = (d.name, role)
        out.append(fx.Watch(pid))

    def _start(self, d: Daemon, now: float, out: list) -> None:
        if d.plan.is_smart:
            d.state = DaemonState.PROBING
            out.append(fx.ReadPidfile(d.name))
        else:
            self._spawn(d, out)

    def _spawn(self, d: Daemon, out: list) -> None:
        d.after = After.RESPAWN
        d.state = DaemonState.STARTING
        out.append(fx.Spawn(d.name, respawn=d.respawns > 0))

    def _adopt(self, d: Daemon, pid: int, now: float, out: list) -> None:
        d.pid = pid
        d.state = DaemonState.RUNNING
        d.pidfile_problem = None
        if d.started_at == 0.0:
            d.started_at = now       # adopted: its real start is unknown, count from now
        if pid == d.child_pid:
            self.owners[pid] = (d.name, "child")   # its exit arrives as the child's exit
        elif pid not in self.owners:
            self._watch(pid, d, "main", out)
        out.append(fx.ArmTimer(d.name, "pidfile", now + PIDFILE_CHECK_INTERVAL_S))

    def _main_died(self, d: Daemon, e: ev.ProcessExited, out: list) -> None:
        d.last_exit = e.status
        out.append(fx.CancelTimer(d.name, "pidfile"))
        if d.state is DaemonState.STOPPING:
            if d.after is After.RESPAWN:
                d.after = After.IDLE
        else:
            d.after = After.RESPAWN
            if self.phase is Phase.RUNNING:
                out.append(fx.Log(f'[uwsgi-daemons] daemon "{d.plan.command}" (pid: {e.pid}) '
                                  f"{exit_description(e.status)} {d.tag()}"))
                if d.plan.control:
                    d.pid = None
                    self._control_died(d, e.status, e.now, out)
                    return
            else:
                d.after = After.IDLE
        if d.plan.is_smart:
            if d.after is After.RESPAWN:
                # a daemon that re-executes itself writes its new pid before the old one
                # exits: read the pidfile before deciding it is gone
                d.state = DaemonState.RECHECK
                d.dead_pid, d.pid = e.pid, None
                out.append(fx.ReadPidfile(d.name))
            else:
                d.pid = None
                self._down(d, e.now, out)
            return
        d.pid = None
        d.state = DaemonState.CLEANING
        out.append(fx.FindRemnants(d.name, d.sid or e.pid))

    def _down(self, d: Daemon, now: float, out: list) -> None:
        """The daemon has nothing left running: decide what comes next."""
        out.append(fx.CancelTimer(d.name, "kill"))
        d.pid = None
        d.remnants.clear()
        d.state = DaemonState.IDLE
        after = d.after
        if after is After.REMOVE:
            del self.daemons[d.name]
            self.held.discard(d.name)
        else:
            if after is After.RESTART and d.new_plan is not None:
                d.plan, d.new_plan = d.new_plan, None
            if self.phase is Phase.RUNNING and d.name not in self.held and self.may_run(d):
                if after is After.RESTART:
                    self._start(d, now, out)
                elif after is After.RESPAWN:
                    self._respawn_later(d, now - d.started_at, now, out)
        if self.phase is Phase.STOPPING:
            self._finish_stop(out)

    def _respawn_later(self, d: Daemon, lifetime: float, now: float, out: list) -> None:
        delay = d.throttle.delay_after_death(lifetime, d.plan.max_throttle)
        if delay <= 0:
            self._spawn(d, out)
            return
        d.state = DaemonState.BACKOFF
        d.backoff_until = now + delay
        out.append(fx.Log(f'[uwsgi-daemons] throttling "{d.plan.command}" for {delay} seconds {d.tag()}'))
        out.append(fx.ArmTimer(d.name, "respawn", now + delay))

    def _stop(self, d: Daemon, signum: int, after: After, now: float, out: list) -> None:
        out.append(fx.CancelTimer(d.name, "respawn"))
        out.append(fx.CancelTimer(d.name, "pidfile"))
        d.backoff_until = None
        d.after = after
        if d.state is DaemonState.CLEANING:
            return                        # its remnants are already being stopped
        if d.pid is not None and d.state in (DaemonState.RUNNING, DaemonState.STOPPING, DaemonState.RECHECK):
            if d.state is not DaemonState.STOPPING:
                out.append(fx.Log(f"[uwsgi-daemons] stopping daemon (pid: {d.pid}): {d.plan.command} {d.tag()}"))
                out.append(fx.SendSignal(d.pid, signum, group=True))
                out.append(fx.ArmTimer(d.name, "kill", now + self.mercy))
                d.state = DaemonState.STOPPING
            return
        if d.child_pid is not None and d.state is DaemonState.STARTING and after is not After.IDLE:
            # a smart daemon that has not daemonized yet: stop the process we started
            d.pid = d.child_pid
            self._stop(d, signum, after, now, out)
            return
        d.state = DaemonState.IDLE
        self._down(d, now, out)

    def _escalate(self, d: Daemon, out: list) -> None:
        if d.state is DaemonState.STOPPING and d.pid is not None and not d.escalated:
            d.escalated = True
            out.append(fx.Log(f"[uwsgi-daemons] daemon did not die in time, killing (pid: {d.pid}): {d.plan.command} {d.tag()}"))
            out.append(fx.SendSignal(d.pid, SIGKILL, group=True))
        elif d.state is DaemonState.CLEANING and d.remnants and not d.escalated:
            d.escalated = True
            out.append(fx.Log(f"[uwsgi-daemons] processes left by {d.name} did not die in time, killing "
                              f"(pids: {' '.join(map(str, sorted(d.remnants)))}) {d.tag()}"))
            out.append(fx.KillPids(tuple(sorted(d.remnants)), d.sid or 0, SIGKILL, d.name))

    def _control_died(self, d: Daemon, status: int | None, now: float, out: list) -> None:
        out.append(fx.Log(f'control daemon "{d.plan.command}" {exit_description(status)}: stopping the instance {d.tag()}',
                          "error"))
        self.exit_status = 1
        d.state = DaemonState.IDLE
        d.after = After.IDLE
        self._begin_stop(now, out)

    def _begin_stop(self, now: float, out: list) -> None:
        self.phase = Phase.STOPPING
        for d in list(self.daemons.values()):
            if d.plan.is_smart and d.plan.legion is None:    # legion daemons stop like dumb ones
                out.append(fx.CancelTimer(d.name, "pidfile"))
                out.append(fx.CancelTimer(d.name, "respawn"))
                if d.state in (DaemonState.STOPPING, DaemonState.CLEANING):
                    d.after = After.IDLE      # a restart in progress: finish the stop, no respawn
                    continue
                if d.plan.notifypid and d.pid is not None:
                    out.append(fx.SendSignal(d.pid, d.plan.stop_signal))
                d.state = DaemonState.IDLE    # smart daemons survive the master
                continue
            self._stop(d, d.plan.stop_signal, After.IDLE, now, out)
        out.append(fx.ArmTimer("", "stop-final", now + self.mercy + STOP_GRACE_S))
        self._finish_stop(out)

    def _finish_stop(self, out: list, forced: bool = False) -> None:
        if self.phase is not Phase.STOPPING:
            return
        busy = [d for d in self.daemons.values() if d.state is not DaemonState.IDLE]
        if busy and not forced:
            return
        for d in busy:
            out.append(fx.Log(f"daemon {d.name} still has processes after SIGKILL (pid: {d.pid}, "
                              f"remnants: {sorted(d.remnants)}); giving up waiting {d.tag()}", "error"))
        self.phase = Phase.DONE
        out.append(fx.CancelTimer("", "stop-final"))
        out.append(fx.Exit(self.exit_status))

    # -- operator commands ------------------------------------------------------------------

    def command(self, verb: str, name: str, now: float, signum: int | None = None) -> tuple[bool, str, list[fx.Effect]]:
        """An operator's stop/start/restart/signal of one daemon: (worked, what happened, effects)."""
        out: list[fx.Effect] = []
        d = self.daemons.get(name)
        if d is None:
            return False, f"{name}: no such daemon", out
        if self.phase is not Phase.RUNNING:
            return False, f"{name}: nsattach is {self.phase.value}", out
        if verb == "stop":
            self.held.add(name)
            out.append(fx.Log(f"operator request: stop {d.tag()}"))
            if d.state in (DaemonState.IDLE, DaemonState.BACKOFF, DaemonState.PROBING):
                out.append(fx.CancelTimer(d.name, "respawn"))
                d.state = DaemonState.IDLE
                return True, f"{name}: stopped (was not running)", out
            self._stop(d, d.plan.stop_signal, After.IDLE, now, out)
            return True, f"{name}: stopping", out
        if verb == "start":
            was_held = name in self.held
            self.held.discard(name)
            if d.state is DaemonState.BACKOFF:
                out.append(fx.CancelTimer(d.name, "respawn"))
                self._spawn(d, out)
                return True, f"{name}: starting (respawn delay skipped)", out
            if d.state is DaemonState.IDLE:
                out.append(fx.Log(f"operator request: start {d.tag()}"))
                self._start(d, now, out)
                return True, f"{name}: starting", out
            if d.state is DaemonState.STOPPING and d.after is After.IDLE:
                d.after = After.RESTART
                return True, f"{name}: will start once stopped", out
            return True, f"{name}: already {'starting' if was_held else 'running'} ({d.state.value})", out
        if verb == "restart":
            self.held.discard(name)
            out.append(fx.Log(f"operator request: restart {d.tag()}"))
            if d.state in (DaemonState.RUNNING, DaemonState.STARTING, DaemonState.STOPPING, DaemonState.CLEANING):
                d.throttle.reset()
                self._stop(d, d.plan.stop_signal, After.RESTART, now, out)
                return True, f"{name}: restarting", out
            out.append(fx.CancelTimer(d.name, "respawn"))
            self._start(d, now, out)
            return True, f"{name}: starting", out
        if verb == "signal":
            if d.pid is None or d.state not in (DaemonState.RUNNING, DaemonState.STOPPING):
                return False, f"{name}: not running", out
            out.append(fx.Log(f"operator request: signal {signum} to pid {d.pid} {d.tag()}"))
            out.append(fx.SendSignal(d.pid, int(signum), group=True))
            return True, f"{name}: signal {_signame(int(signum))} sent to pid {d.pid}", out
        return False, f"unknown command {verb!r}", out

    # -- queries (for status) ---------------------------------------------------------------

    def daemon_states(self) -> dict[str, DaemonState]:
        return {name: d.state for name, d in self.daemons.items()}

    def status(self, now: float) -> list[dict]:
        rows = []
        for d in self.daemons.values():
            running = d.pid is not None and d.state in (DaemonState.RUNNING, DaemonState.STOPPING)
            rows.append({
                "name": d.name,
                "kind": d.plan.kind.value,
                "option": d.plan.option,
                "state": "stopped" if d.name in self.held and d.state is DaemonState.IDLE else d.state.value,
                "held": d.name in self.held,
                "pid": d.pid if running else None,
                "uptime": round(now - d.started_at, 3) if running and d.started_at else None,
                "respawns": max(0, d.respawns - 1),
                "last_exit": None if d.last_exit is None else exit_description(d.last_exit),
                "backoff": round(d.backoff_until - now, 3) if d.backoff_until is not None else None,
                "legion": d.plan.legion,
                "lord": None if d.plan.legion is None else d.plan.legion in self.lords,
                "command": d.plan.command,
            })
        return rows


_SIGNAMES = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 9: "SIGKILL", 10: "SIGUSR1", 12: "SIGUSR2", 15: "SIGTERM"}


def _signame(number: int) -> str:
    return _SIGNAMES.get(number, f"signal {number}")


def _id(value: int | None) -> str:
    return "-" if value is None else str(value)
