"""Plan -> text or JSON, for ``nsattach check``."""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

from nsattach.config.convert import signal_name
from nsattach.config.model import DEFAULT_MAX_THROTTLE_S, DaemonPlan, Identity, Plan
from nsattach.errors import Origin


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Origin):
        return str(value)
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def plan_to_dict(plan: Plan) -> dict:
    data = _jsonable(plan)
    for d, raw in zip(data["daemons"], plan.daemons):
        d["stop_signal_name"] = signal_name(raw.stop_signal)
        d["reload_signal_name"] = signal_name(raw.effective_reload_signal)
    for legion in data["legions"]:
        legion["secret"] = "***"     # never print the shared key
    for legion in data["etcd_legions"]:
        if legion["password"] is not None:
            legion["password"] = "***"
    return data


def plan_to_json(plan: Plan) -> str:
    return json.dumps(plan_to_dict(plan), indent=2, sort_keys=False) + "\n"


def _identity(identity: Identity) -> str:
    return identity.describe()


def _daemon_lines(d: DaemonPlan) -> list[str]:
    lines = [f"  {d.name}  ({d.option}, {d.kind.value}{', control' if d.control else ''})  {d.origin}",
             f"      command: {d.command}"]
    if d.pidfile:
        lines.append(f"      pidfile: {d.pidfile}  (wait {d.freq} s for it after a spawn)")
    reload = signal_name(d.effective_reload_signal)
    lines.append(f"      signals: stop {signal_name(d.stop_signal)}, reload {reload}"
                 f"{', smart daemon notified on stop/reload' if d.notifypid else ''}")
    lines.append(f"      runs as: {_identity(d.identity)}")
    extras = []
    if d.chdir:
        extras.append(f"chdir {d.chdir}")
    if d.honour_stdin:
        extras.append("stdin inherited")
    if d.touch:
        extras.append("restart on touch of " + ", ".join(d.touch))
    if d.legion:
        extras.append(f"only on the lord of legion {d.legion}")
    if d.max_throttle != DEFAULT_MAX_THROTTLE_S:
        extras.append(f"respawn delay at most {d.max_throttle} s")
    if extras:
        lines.append("      " + "; ".join(extras))
    return lines


def plan_to_text(plan: Plan) -> str:
    out: list[str] = []
    files = ", ".join(plan.config_files) or "(command line only)"
    out.append(f"nsattach plan from {files}")
    m = plan.master
    out.append("master:")
    out.append(f"  runs as: {_identity(m.identity)}")
    out.append(f"  reload-mercy: {m.reload_mercy} s")
    for label, value in (("pidfile", m.pidfile), ("chdir", m.chdir), ("logto", m.logto)):
        if value:
            out.append(f"  {label}: {value}")
    if m.vacuum:
        out.append("  vacuum: remove the pidfile at exit")
    if m.binsh != "/bin/sh":
        out.append(f"  shell: {m.binsh}")
    for path in m.touch_reload:
        out.append(f"  reload when touched: {path}")
    for path in m.master_fifo:
        out.append(f"  master fifo: {path}")
    for key, value in m.env:
        out.append(f"  env: {key}={value}")
    for key in m.unenv:
        out.append(f"  unenv: {key}")
    if m.unshare:
        out.append(f"  unshare: {', '.join(m.unshare)}")
    out.append(f"daemons ({len(plan.daemons)}):")
    for d in plan.daemons:
        out.extend(_daemon_lines(d))
    if plan.namespace:
        ns = plan.namespace
        out.append(f"namespace: pivot into {ns.root}"
                   f"{f', hostname {ns.hostname}' if ns.hostname else ''}"
                   f"{', own network namespace' if ns.net else ''}")
        for km in ns.keep_mounts:
            out.append(f"  keep mount: {km.source} -> {km.target}{' (read-only)' if km.readonly else ''}")
    if plan.hooks:
        out.append("hooks:")
        for h in plan.hooks:
            out.append(f"  {h.phase}: {h.family}: {h.value}  ({h.origin})")
    if plan.legions:
        s = plan.legion_settings
        out.append(f"legions (freq {s.freq} s, tolerance {s.tolerance} s, skew tolerance {s.skew_tolerance} s):")
        for lg in plan.legions:
            out.append(f"  {lg.name}: {lg.address}{' (multicast)' if lg.multicast else ''}, valor {lg.valor}"
                       f"{' (arbiter)' if lg.valor == 0 else ''}, cipher {lg.cipher}, quorum {lg.quorum}")
            for node in lg.nodes:
                out.append(f"    node: {node.address}")
            if lg.scroll:
                out.append(f"    scroll: {lg.scroll}")
            for a in lg.actions:
                out.append(f"    on {a.event}: {a.action}:{a.argument}")
    if plan.etcd_legions:
        out.append("etcd legions:")
        for lg in plan.etcd_legions:
            out.append(f"  {lg.name}: etcd {', '.join(lg.endpoints)}, valor {lg.valor}"
                       f"{' (arbiter)' if lg.valor == 0 else ''}, keys under {lg.prefix}{lg.name}/, "
                       f"lease TTL {lg.ttl} s")
            for label, value in (("CA", lg.cacert), ("client cert", lg.cert), ("client key", lg.key),
                                 ("user", lg.user)):
                if value:
                    out.append(f"    {label}: {value}")
            if lg.scroll:
                out.append(f"    scroll: {lg.scroll}")
            for a in lg.actions:
                out.append(f"    on {a.event}: {a.action}:{a.argument}")
    return "\n".join(out) + "\n"
