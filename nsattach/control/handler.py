"""What the master does with each control request.

``stop``, ``start`` and ``restart`` answer once the daemons got where they were asked to go
(or a deadline passed), so the reply says what actually happened; everything else answers at
once. The runtime calls ``check_waiters`` after every batch of events.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from nsattach.config.convert import as_signal, signal_name
from nsattach.core.supervisor import DaemonState, exit_description

WAIT_GRACE_S = 2.0


@dataclass
class Waiter:
    conn: object
    verb: str
    names: list[str]
    deadline: float
    started: float = field(default_factory=time.monotonic)
    messages: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)     # refused at once


def handle_request(rt, request: dict, conn) -> None:
    cmd = request["cmd"]
    now = time.monotonic()
    if cmd == "status":
        conn.reply(status_reply(rt, now))
    elif cmd in ("stop", "start", "restart"):
        _named(rt, conn, cmd, request["names"], now)
    elif cmd == "signal":
        try:
            signum = as_signal(str(request["signal"]))
        except ValueError as exc:
            conn.reply({"ok": False, "message": str(exc)})
            return
        results, ok = [], True
        for name in request["names"]:
            worked, message, effects = rt.core.command("signal", name, now, signum)
            rt.execute_all(effects)
            ok &= worked
            results.append({"name": name, "ok": worked, "message": message})
        conn.reply({"ok": ok, "message": "; ".join(r["message"] for r in results), "results": results})
    elif cmd == "reload":
        from nsattach.core import events as ev

        rt.last_reload = None
        rt.post(ev.ReloadRequested(now))
        rt.drain()
        if rt.last_reload is None:
            conn.reply({"ok": False, "message": "not reloading: nsattach is stopping"})
        elif rt.last_reload[0]:
            conn.reply({"ok": True, "message": f"reloaded: {len(rt.core.daemons)} daemon(s) configured"})
        else:
            conn.reply({"ok": False, "message": "the configuration has errors; still running the previous one",
                        "errors": rt.last_reload[1]})
    elif cmd == "shutdown":
        conn.reply({"ok": True, "message": f"stopping nsattach (pid {os.getpid()})"})
        rt.request_stop(now, "shutdown request")
        rt.drain()
    elif cmd == "reopen-logs":
        rt.reopen_logs()
        conn.reply({"ok": True, "message": "log files reopened"})


def _named(rt, conn, verb: str, names: list[str], now: float) -> None:
    waiter = Waiter(conn, verb, [], 0.0)
    longest = 0.0
    for name in dict.fromkeys(names):
        worked, message, effects = rt.core.command(verb, name, now)
        rt.execute_all(effects)
        if not worked:
            waiter.failed[name] = message
            continue
        waiter.names.append(name)
        waiter.messages[name] = message
        d = rt.core.daemons.get(name)
        if d is not None:
            wait = rt.core.mercy + WAIT_GRACE_S
            if verb != "stop" and d.plan.is_smart:
                wait += d.plan.freq
            longest = max(longest, wait)
    rt.save_held()
    waiter.deadline = now + longest
    rt.waiters.append(waiter)
    rt.arm_housekeeping()
    check_waiters(rt)


def _outcome(rt, verb: str, name: str) -> tuple[bool, str] | None:
    """(worked, message) once ``name`` got where ``verb`` wants it, else None."""
    d = rt.core.daemons.get(name)
    if d is None:
        return True, f"{name}: removed"
    if verb == "stop":
        if d.state is DaemonState.IDLE:
            how = f" ({exit_description(d.last_exit)})" if d.last_exit is not None else ""
            return True, f"{name}: stopped{how}"
        return None
    if d.state is DaemonState.RUNNING:
        return True, f"{name}: running (pid {d.pid})"
    if d.state is DaemonState.BACKOFF:
        return False, f"{name}: failed to start, next try in {round(d.backoff_until - time.monotonic())} s"
    return None


def check_waiters(rt) -> None:
    now = time.monotonic()
    for waiter in list(rt.waiters):
        results, done = [], True
        for name in waiter.names:
            outcome = _outcome(rt, waiter.verb, name)
            if outcome is None:
                if now < waiter.deadline:
                    done = False
                    break
                d = rt.core.daemons.get(name)
                outcome = (False, f"{name}: not {'stopped' if waiter.verb == 'stop' else 'running'} "
                                  f"after {round(now - waiter.started, 1)} s (state {d.state.value if d else 'gone'})")
            results.append({"name": name, "ok": outcome[0], "message": outcome[1]})
        if not done:
            continue
        rt.waiters.remove(waiter)
        for name, message in waiter.failed.items():
            results.append({"name": name, "ok": False, "message": message})
        ok = all(r["ok"] for r in results)
        waiter.conn.reply({"ok": ok, "message": "; ".join(r["message"] for r in results), "results": results})


def status_reply(rt, now: float) -> dict:
    rows = rt.core.status(now)
    for row in rows:
        d = rt.core.daemons[row["name"]]
        row["stop_signal"] = signal_name(d.plan.stop_signal)
    master = {
        "pid": os.getpid(),
        "config": list(rt.plan.config_files),
        "uptime": round(now - rt.started_at, 3),
        "phase": rt.core.phase.value,
        "control_socket": rt.plan.master.control_socket,
    }
    legions = {}
    for service in rt.legions:
        legions.update(service.status())
    return {"ok": True, "message": f"{len(rows)} daemon(s)", "master": master, "daemons": rows,
            "legions": _plain(legions)}


def _plain(value):
    """Legion status holds bytes (uuids, scrolls): make it JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.rstrip(b"\0").decode("utf-8", "backslashreplace")
    return value
