"""The pure core, driven by scripted event histories with a fake clock."""

from __future__ import annotations

import signal

import pytest

from nsattach.config.model import DaemonKind, DaemonPlan, MasterPlan, Plan
from nsattach.core import effects as fx
from nsattach.core import events as ev
from nsattach.core.supervisor import DaemonState, Phase, Supervisor, exit_description
from nsattach.errors import Origin

O = Origin("t.ini", 1)
TERM, KILL, HUP, USR1 = int(signal.SIGTERM), int(signal.SIGKILL), int(signal.SIGHUP), int(signal.SIGUSR1)


def dumb(name="d", **kw):
    return DaemonPlan(name=name, command=f"run-{name}", kind=DaemonKind.DUMB, option="attach-daemon", origin=O, **kw)


def smart(name="s", kind=DaemonKind.SMART, **kw):
    return DaemonPlan(name=name, command=f"run-{name}", kind=kind, option="smart-attach-daemon", origin=O,
                      pidfile=f"/run/{name}.pid", **kw)


def plan(*daemons, mercy=3, **master):
    return Plan(config_files=("t.ini",), master=MasterPlan(reload_mercy=mercy, **master), daemons=tuple(daemons))


def of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


def logs(effects):
    return [e.text for e in effects if isinstance(e, fx.Log)]


class Harness:
    """Feeds events, remembers armed timers like the runtime does."""

    def __init__(self, p: Plan):
        self.sup = Supervisor(p)
        self.timers: dict[tuple[str, str], float] = {}
        self.now = 0.0

    def feed(self, event):
        out = self.sup.handle(event)
        for e in out:
            if isinstance(e, fx.ArmTimer):
                self.timers[(e.name, e.key)] = e.at
            elif isinstance(e, fx.CancelTimer):
                self.timers.pop((e.name, e.key), None)
        return out

    def start(self):
        return self.feed(ev.MasterStarted(self.now))

    def command(self, verb, name, now, signum=None):
        ok, msg, out = self.sup.command(verb, name, now, signum)
        for e in out:
            if isinstance(e, fx.ArmTimer):
                self.timers[(e.name, e.key)] = e.at
            elif isinstance(e, fx.CancelTimer):
                self.timers.pop((e.name, e.key), None)
        return ok, msg, out

    def spawned(self, name, pid, program_pid=None):
        return self.feed(ev.Spawned(self.now, name, pid, program_pid or pid))

    def exited(self, pid, status=0):
        return self.feed(ev.ProcessExited(self.now, pid, status))

    def fire(self, name, key):
        at = self.timers.pop((name, key))
        self.now = max(self.now, at)
        return self.feed(ev.TimerFired(self.now, name, key))

    def state(self, name):
        return self.sup.daemons[name].state


# --- dumb daemons -------------------------------------------------------------------------

def test_start_spawns_every_dumb_daemon_in_order():
    h = Harness(plan(dumb("a"), dumb("b")))
    out = h.start()
    assert [e.name for e in of(out, fx.Spawn)] == ["a", "b"]
    assert h.sup.phase is Phase.RUNNING


def test_spawned_dumb_daemon_is_watched_and_running():
    h = Harness(plan(dumb("a")))
    h.start()
    out = h.spawned("a", 100)
    assert fx.Watch(100) in out
    assert h.state("a") is DaemonState.RUNNING
    assert any('spawning "run-a"' in t for t in logs(out))


def test_death_looks_for_remnants_then_respawns_at_once_after_a_long_life():
    h = Harness(plan(dumb("a")))
    h.start()
    h.spawned("a", 100)
    h.now = 60.0
    out = h.exited(100, 9)
    assert of(out, fx.FindRemnants) == [fx.FindRemnants("a", 100)]
    assert h.state("a") is DaemonState.CLEANING
    out = h.feed(ev.RemnantsFound(h.now, "a", ()))
    assert of(out, fx.Spawn) == [fx.Spawn("a", respawn=True)]


def test_remnants_are_stopped_before_the_respawn_and_killed_after_the_mercy():
    h = Harness(plan(dumb("a"), mercy=5))
    h.start()
    h.spawned("a", 100)
    h.now = 60.0
    h.exited(100, 9)
    out = h.feed(ev.RemnantsFound(h.now, "a", (101, 102)))
    assert fx.KillPids((101, 102), 100, TERM, "a") in out
    assert fx.Watch(101) in out and fx.Watch(102) in out
    assert not of(out, fx.Spawn)
    assert h.timers[("a", "kill")] == 65.0
    out = h.fire("a", "kill")
    assert fx.KillPids((101, 102), 100, KILL, "a") in out
    assert not of(h.exited(101, 9), fx.Spawn)
    out = h.exited(102, 9)
    assert of(out, fx.FindRemnants) == [fx.FindRemnants("a", 100)]      # anything forked meanwhile?
    out = h.feed(ev.RemnantsFound(h.now, "a", (103,)))
    assert fx.KillPids((103,), 100, KILL, "a") in out                   # already escalated
    out = h.exited(103, 9)
    out = h.feed(ev.RemnantsFound(h.now, "a", ()))
    assert of(out, fx.Spawn) == [fx.Spawn("a", respawn=True)]


def test_quick_deaths_are_throttled_growing_by_one_second_and_capped():
    h = Harness(plan(dumb("a", max_throttle=3)))
    h.start()
    delays = []
    pid = 100
    for _ in range(6):
        h.spawned("a", pid)
        h.now += 0.5
        h.exited(pid, 256)
        out = h.feed(ev.RemnantsFound(h.now, "a", ()))
        if of(out, fx.Spawn):
            delays.append(0)
        else:
            at = h.timers[("a", "respawn")]
            delays.append(round(at - h.now))
            assert any("throttling" in t for t in logs(out))
            assert h.state("a") is DaemonState.BACKOFF
            out = h.fire("a", "respawn")
            assert of(out, fx.Spawn)
        pid += 1
    assert delays == [0, 1, 2, 3, 3, 3]


def test_stop_during_backoff_cancels_the_pending_spawn():
    h = Harness(plan(dumb("a")))
    h.start()
    for pid in (100, 101):
        h.spawned("a", pid)
        h.exited(pid)
        h.feed(ev.RemnantsFound(h.now, "a", ()))
    assert h.state("a") is DaemonState.BACKOFF
    out = h.feed(ev.StopRequested(h.now, "SIGINT"))
    assert ("a", "respawn") not in h.timers
    assert of(out, fx.Exit) == [fx.Exit(0)]


def test_stop_signals_all_dumb_daemons_at_once_and_exits_when_all_are_down():
    h = Harness(plan(dumb("a"), dumb("b", stop_signal=USR1), mercy=4))
    h.start()
    h.spawned("a", 100)
    h.spawned("b", 200)
    out = h.feed(ev.StopRequested(h.now, "SIGTERM"))
    assert of(out, fx.SendSignal) == [fx.SendSignal(100, TERM, True), fx.SendSignal(200, USR1, True)]
    assert h.timers[("a", "kill")] == 4.0 and h.timers[("b", "kill")] == 4.0
    assert not of(out, fx.Exit)
    h.exited(100, 15)
    h.feed(ev.RemnantsFound(h.now, "a", ()))
    h.exited(200, 10)
    out = h.feed(ev.RemnantsFound(h.now, "b", ()))
    assert of(out, fx.Exit) == [fx.Exit(0)]
    assert not of(out, fx.Spawn)


def test_stubborn_daemon_gets_sigkill_at_the_deadline_and_stop_is_bounded():
    h = Harness(plan(dumb("a"), mercy=2))
    h.start()
    h.spawned("a", 100)
    h.feed(ev.StopRequested(0.0, "SIGINT"))
    out = h.fire("a", "kill")
    assert fx.SendSignal(100, KILL, True) in out
    assert any("did not die in time" in t for t in logs(out))
    # even if the kill never shows, the stop ends mercy + 1 s after it began
    assert h.timers[("", "stop-final")] == 3.0
    out = h.fire("", "stop-final")
    assert of(out, fx.Exit) == [fx.Exit(0)]


def test_second_stop_signal_kills_at_once_and_never_restarts():
    h = Harness(plan(dumb("a")))
    h.start()
    h.spawned("a", 100)
    h.feed(ev.StopRequested(0.0, "SIGINT"))
    out = h.feed(ev.StopRequested(0.1, "SIGINT"))
    assert fx.SendSignal(100, KILL, True) in out
    h.exited(100, 9)
    out = h.feed(ev.RemnantsFound(h.now, "a", ()))
    assert not of(out, fx.Spawn)
    assert of(out, fx.Exit) == [fx.Exit(0)]


def test_control_daemon_death_stops_the_instance_with_a_failure_status():
    h = Harness(plan(dumb("ctl", control=True), dumb("other")))
    h.start()
    h.spawned("ctl", 100)
    h.spawned("other", 200)
    out = h.exited(100, 3 << 8)
    assert any("control daemon" in t and "exited with code 3" in t for t in logs(out))
    assert fx.SendSignal(200, TERM, True) in out
    assert not of(out, fx.Spawn)
    h.exited(200, 15)
    out = h.feed(ev.RemnantsFound(h.now, "other", ()))
    assert of(out, fx.Exit) == [fx.Exit(1)]


def test_spawn_failure_is_logged_and_retried_with_backoff():
    h = Harness(plan(dumb("a")))
    h.start()
    out = h.feed(ev.SpawnFailed(0.0, "a", "chdir(/nope): No such file or directory"))
    assert any("chdir(/nope)" in t for t in logs(out))
    assert of(out, fx.Spawn)           # first failure: at once
    out = h.feed(ev.SpawnFailed(0.0, "a", "again"))
    assert h.state("a") is DaemonState.BACKOFF


def test_touch_restarts_with_the_stop_signal_then_spawns_at_once():
    h = Harness(plan(dumb("a", stop_signal=USR1, touch=("/t",))))
    h.start()
    out = h.spawned("a", 100)
    assert fx.WatchTouch("a", ("/t",)) in out
    out = h.feed(ev.Touched(1.0, "a", "/t"))
    assert fx.SendSignal(100, USR1, True) in out
    assert any("has been touched" in t for t in logs(out))
    h.exited(100, 10)
    out = h.feed(ev.RemnantsFound(1.0, "a", ()))
    assert of(out, fx.Spawn)


def test_unknown_child_exit_is_only_logged():
    h = Harness(plan(dumb("a")))
    h.start()
    out = h.exited(4242, 0)
    assert logs(out) == ["subprocess 4242 exited with code 0"]


# --- smart daemons ------------------------------------------------------------------------

def test_smart_daemon_is_adopted_from_a_valid_pidfile_without_spawning():
    h = Harness(plan(smart("s")))
    out = h.start()
    assert of(out, fx.ReadPidfile) == [fx.ReadPidfile("s")]
    assert not of(out, fx.Spawn)
    out = h.feed(ev.PidfileRead(0.0, "s", 777))
    assert fx.Watch(777) in out
    assert any("found valid/active pidfile" in t for t in logs(out))
    assert h.state("s") is DaemonState.RUNNING


def test_smart_daemon_spawns_waits_for_pidfile_and_adopts_the_daemonized_pid():
    h = Harness(plan(smart("s")))
    h.start()
    out = h.feed(ev.PidfileRead(0.0, "s", None, "missing"))
    assert of(out, fx.Spawn)
    h.spawned("s", 100)
    assert h.state("s") is DaemonState.STARTING
    h.exited(100, 0)                       # the self-daemonizing child exits
    assert h.state("s") is DaemonState.STARTING
    out = h.fire("s", "pidfile")
    assert of(out, fx.ReadPidfile)
    out = h.feed(ev.PidfileRead(h.now, "s", 555))
    assert any("found changed pid" in t and "new_pid: 555" in t for t in logs(out))
    assert fx.Watch(555) in out
    assert h.state("s") is DaemonState.RUNNING


def test_smart_daemon_that_never_writes_its_pidfile_warns_every_freq_checks():
    h = Harness(plan(smart("s", freq=2)))
    h.start()
    h.feed(ev.PidfileRead(0.0, "s", None, "missing"))
    h.spawned("s", 100)
    warnings = 0
    for _ in range(4):
        h.fire("s", "pidfile")
        out = h.feed(ev.PidfileRead(h.now, "s", None, "missing"))
        warnings += sum("did not daemonize" in t for t in logs(out))
    assert warnings == 2
    assert h.state("s") is DaemonState.STARTING


def test_missing_pidfile_is_logged_once_not_every_second():
    h = Harness(plan(smart("s")))
    h.start()
    h.feed(ev.PidfileRead(0.0, "s", 777))
    count = 0
    for _ in range(5):
        h.fire("s", "pidfile")
        out = h.feed(ev.PidfileRead(h.now, "s", None, "missing"))
        count += sum("pidfile /run/s.pid: missing" in t for t in logs(out))
    assert count == 1
    assert h.state("s") is DaemonState.RUNNING   # the watched process is still alive


def test_smart_daemon_death_rereads_pidfile_then_respawns():
    h = Harness(plan(smart("s")))
    h.start()
    h.feed(ev.PidfileRead(0.0, "s", 777))
    h.now = 100.0
    out = h.feed(ev.ProcessExited(h.now, 777, None))
    assert h.state("s") is DaemonState.RECHECK
    assert of(out, fx.ReadPidfile)
    out = h.feed(ev.PidfileRead(h.now, "s", None, "pid 777 is not running"))
    assert of(out, fx.Spawn)


def test_smart_daemon_that_changed_pid_is_followed_not_respawned():
    h = Harness(plan(smart("s")))
    h.start()
    h.feed(ev.PidfileRead(0.0, "s", 777))
    h.feed(ev.ProcessExited(1.0, 777, None))
    out = h.feed(ev.PidfileRead(1.0, "s", 778))
    assert fx.Watch(778) in out and not of(out, fx.Spawn)
    assert h.state("s") is DaemonState.RUNNING


def test_smart_daemons_survive_stop_and_notifypid_gets_one_signal():
    h = Harness(plan(smart("s"), smart("n", notifypid=True, stop_signal=USR1)))
    h.start()
    h.feed(ev.PidfileRead(0.0, "s", 700))
    h.feed(ev.PidfileRead(0.0, "n", 800))
    out = h.feed(ev.StopRequested(0.0, "SIGINT"))
    assert of(out, fx.SendSignal) == [fx.SendSignal(800, USR1, True)]
    assert of(out, fx.Exit) == [fx.Exit(0)]


def test_smart2_spawn_tracks_the_grandchild_directly():
    h = Harness(plan(smart("s2", kind=DaemonKind.SMART2)))
    h.start()
    h.feed(ev.PidfileRead(0.0, "s2", None, "missing"))
    out = h.spawned("s2", 100, program_pid=101)
    assert fx.Watch(101) in out
    assert h.state("s2") is DaemonState.RUNNING


# --- reload --------------------------------------------------------------------------------

def test_reload_requests_config_and_keeps_old_one_on_errors():
    h = Harness(plan(dumb("a")))
    h.start()
    h.spawned("a", 100)
    out = h.feed(ev.ReloadRequested(1.0))
    assert of(out, fx.LoadConfig)
    out = h.feed(ev.ConfigReloadFailed(1.0, ("t.ini:3: foo: unknown option",)))
    assert any("t.ini:3: foo" in t for t in logs(out))
    assert not of(out, fx.SendSignal)
    assert h.state("a") is DaemonState.RUNNING


def test_reload_restarts_dumb_with_reload_signal_adds_and_removes_and_keeps_smart():
    old = plan(dumb("a", reload_signal=HUP), dumb("gone"), smart("s", notifypid=True))
    h = Harness(old)
    h.start()
    h.spawned("a", 100)
    h.spawned("gone", 200)
    h.feed(ev.PidfileRead(0.0, "s", 700))
    new = plan(dumb("a", reload_signal=HUP), smart("s", notifypid=True), dumb("new"))
    out = h.feed(ev.ConfigReloaded(1.0, new))
    sigs = of(out, fx.SendSignal)
    assert fx.SendSignal(100, HUP, True) in sigs
    assert fx.SendSignal(200, TERM, True) in sigs
    assert fx.SendSignal(700, HUP, True) in sigs      # notifypid on reload: SIGHUP
    assert of(out, fx.Spawn) == [fx.Spawn("new", respawn=False)]
    h.exited(100, 1)
    out = h.feed(ev.RemnantsFound(1.0, "a", ()))
    assert of(out, fx.Spawn) == [fx.Spawn("a", respawn=True)]
    h.exited(200, 15)
    h.feed(ev.RemnantsFound(1.0, "gone", ()))
    assert "gone" not in h.sup.daemons
    assert h.state("s") is DaemonState.RUNNING


@pytest.mark.parametrize("status,text", [(0, "exited with code 0"), (3 << 8, "exited with code 3"),
                                         (9, "exited by signal 9"), (None, "exited")])
def test_exit_description(status, text):
    assert exit_description(status) == text


def test_core_imports_nothing_effectful():
    import ast
    import pathlib

    import nsattach.core as core

    banned = {"os", "signal", "socket", "ctypes", "subprocess", "select", "selectors", "time", "prctl"}
    for path in pathlib.Path(core.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not banned & set(names), f"{path.name} imports {banned & set(names)}"


def test_smart_recheck_never_readopts_the_pid_that_just_died():
    h = Harness(plan(smart("s")))
    h.start()
    h.feed(ev.PidfileRead(0.0, "s", 777))
    h.feed(ev.ProcessExited(100.0, 777, None))
    out = h.feed(ev.PidfileRead(100.0, "s", 777))     # a stale pidfile still names it
    assert of(out, fx.Spawn) and not of(out, fx.Watch)


def test_throttle_streak_resets_after_a_stable_run():
    h = Harness(plan(dumb("a")))
    h.start()
    pid = 100

    def die_after(lifetime):
        nonlocal pid
        h.spawned("a", pid)
        h.now += lifetime
        h.exited(pid, 256)
        pid += 1
        out = h.feed(ev.RemnantsFound(h.now, "a", ()))
        if of(out, fx.Spawn):
            return 0
        delay = round(h.timers[("a", "respawn")] - h.now)
        h.fire("a", "respawn")
        return delay

    assert [die_after(0.1) for _ in range(3)] == [0, 1, 2]
    assert die_after(5.0) == 0            # lived past the quick-death window: back at once
    assert die_after(0.1) == 3            # ...but the streak is not forgotten yet
    assert die_after(12.0) == 0           # a stable run clears it
    assert die_after(0.1) == 0
    assert die_after(0.1) == 1


# --- operator commands ----------------------------------------------------------------------

def test_operator_stop_survives_respawn_touch_and_reload_until_started():
    h = Harness(plan(dumb("a", touch=("/t",)), dumb("b")))
    h.start()
    h.spawned("a", 100)
    h.spawned("b", 200)
    ok, msg, out = h.command("stop", "a", 1.0)
    assert ok and msg == "a: stopping" and fx.SendSignal(100, TERM, True) in out
    assert h.state("a") is DaemonState.STOPPING
    h.exited(100, 15)
    out = h.feed(ev.RemnantsFound(1.0, "a", ()))
    assert not of(out, fx.Spawn) and h.state("a") is DaemonState.IDLE
    assert not of(h.feed(ev.Touched(2.0, "a", "/t")), fx.SendSignal)
    out = h.feed(ev.ConfigReloaded(3.0, plan(dumb("a", touch=("/t",)), dumb("b"))))
    assert fx.Spawn("a", respawn=True) not in out
    assert h.sup.status(3.0)[0]["state"] == "stopped"
    ok, msg, out = h.command("start", "a", 4.0)
    assert ok and of(out, fx.Spawn) == [fx.Spawn("a", respawn=True)]


def test_operator_restart_signal_and_unknown_names():
    h = Harness(plan(dumb("a")))
    h.start()
    h.spawned("a", 100)
    ok, msg, out = h.command("signal", "a", 1.0, signum=USR1)
    assert ok and fx.SendSignal(100, USR1, True) in out
    ok, msg, out = h.command("restart", "a", 1.0)
    assert ok and fx.SendSignal(100, TERM, True) in out
    h.exited(100, 15)
    out = h.feed(ev.RemnantsFound(1.0, "a", ()))
    assert of(out, fx.Spawn)                       # comes back at once, no throttle
    ok, msg, _ = h.command("stop", "nope", 1.0)
    assert not ok and msg == "nope: no such daemon"


def test_status_rows():
    h = Harness(plan(dumb("a"), smart("s")))
    h.start()
    h.now = 5.0
    h.spawned("a", 100)
    h.feed(ev.PidfileRead(5.0, "s", 700))
    rows = {r["name"]: r for r in h.sup.status(7.5)}
    assert rows["a"]["state"] == "running" and rows["a"]["pid"] == 100 and rows["a"]["uptime"] == 2.5
    assert rows["s"]["pid"] == 700 and rows["s"]["kind"] == "smart" and rows["a"]["respawns"] == 0


# --- legion daemons -----------------------------------------------------------------------------

def legion_dumb(name="ld"):
    return DaemonPlan(name=name, command=f"run-{name}", kind=DaemonKind.DUMB, option="legion-attach-daemon",
                      origin=O, legion="L")


def legion_smart(name="ls"):
    return DaemonPlan(name=name, command=f"run-{name}", kind=DaemonKind.SMART, option="legion-smart-attach-daemon",
                      origin=O, legion="L", pidfile=f"/run/{name}.pid")


def test_legion_daemon_waits_for_lordship_and_follows_it():
    h = Harness(plan(legion_dumb(), dumb("plain")))
    out = h.start()
    assert of(out, fx.Spawn) == [fx.Spawn("plain", respawn=False)]
    out = h.feed(ev.LordChanged(1.0, "L", True, 1000.0))
    assert of(out, fx.Spawn) == [fx.Spawn("ld", respawn=False)]
    h.spawned("ld", 300)
    assert h.sup.status(1.0)[0]["lord"] is True
    out = h.feed(ev.LordChanged(2.0, "L", False))
    assert fx.SendSignal(300, TERM, True) in out
    assert any('stopping legion "L" daemon' in t for t in logs(out))
    out = h.fire("ld", "kill")                       # never-ending stop signals are not enough (Q-D12)
    assert fx.SendSignal(300, KILL, True) in out
    h.exited(300, 9)
    out = h.feed(ev.RemnantsFound(h.now, "ld", ()))
    assert not of(out, fx.Spawn) and h.state("ld") is DaemonState.IDLE


def test_legion_daemon_death_is_respawned_only_while_lord():
    h = Harness(plan(legion_dumb()))
    h.start()
    h.feed(ev.LordChanged(0.0, "L", True, 1000.0))
    h.spawned("ld", 300)
    h.now = 50.0
    h.exited(300, 9)
    assert of(h.feed(ev.RemnantsFound(50.0, "ld", ())), fx.Spawn)


def test_smart_legion_daemon_found_running_on_a_non_lord_is_stopped():
    h = Harness(plan(legion_smart()))
    out = h.start()
    assert of(out, fx.ReadPidfile)
    out = h.feed(ev.PidfileRead(0.0, "ls", 900))
    assert fx.SendSignal(900, TERM, True) in out
    assert not of(out, fx.Spawn)


def test_smart_legion_daemon_without_instance_waits_on_a_non_lord():
    h = Harness(plan(legion_smart()))
    h.start()
    out = h.feed(ev.PidfileRead(0.0, "ls", None, "missing"))
    assert not of(out, fx.Spawn) and h.state("ls") is DaemonState.IDLE


def test_master_stop_stops_smart_legion_daemons_like_dumb_ones():
    h = Harness(plan(legion_smart()))
    h.start()
    h.feed(ev.PidfileRead(0.0, "ls", None, "missing"))
    h.feed(ev.LordChanged(0.0, "L", True, 1000.0))
    h.feed(ev.PidfileRead(0.0, "ls", 901))
    out = h.feed(ev.StopRequested(1.0, "SIGTERM"))
    assert fx.SendSignal(901, TERM, True) in out
    assert not of(out, fx.Exit)


def test_lord_delay_holds_legion_daemons_back_and_is_cancelled_by_a_lost_lordship():
    from dataclasses import replace

    from nsattach.config.model import LegionSettings

    p = replace(plan(legion_dumb()), legion_settings=LegionSettings(lord_delay=5))
    h = Harness(p)
    h.start()
    out = h.feed(ev.LordChanged(1.0, "L", True, 1000.0))
    assert not of(out, fx.Spawn) and h.timers[("", "lord-delay:L")] == 6.0
    out = h.fire("", "lord-delay:L")
    assert of(out, fx.Spawn) == [fx.Spawn("ld", respawn=False)]
    h.spawned("ld", 300)
    h.feed(ev.LordChanged(7.0, "L", False))
    out = h.feed(ev.LordChanged(8.0, "L", True, 1008.0))
    assert not of(out, fx.Spawn)
    h.feed(ev.LordChanged(9.0, "L", False))
    assert ("", "lord-delay:L") not in h.timers          # lost lordship: no late start
