#!/usr/bin/env python3
"""Respawn latency of a smart daemon (one with a pidfile) after its process is SIGKILLed.

Three kinds of smart daemon (``--variant``, default: all three, one master each):

  fg      smart-attach-daemon  = P sh -c 'echo $$ > P; exec sleep X'   (writes its own pid, stays
                                                                        in the foreground)
  bg      smart-attach-daemon  = P sh -c 'sleep X & echo $! > P'        (daemonizes: the shell
                                                                        exits, sleep carries on)
  smart2  smart-attach-daemon2 = P sleep X                              (the master daemonizes it
                                                                        and writes P)

N daemons per variant (distinct X and P). Once all pidfiles name live processes and every
daemon is older than --age seconds (no throttle), each daemon's pid is read from its pidfile and
SIGKILLed; one sample is the time until the pidfile names a *different* pid that is alive and runs
``sleep X``. The pidfile and /proc are polled about every millisecond. uWSGI checks pidfiles once
a second.

    python bench/smart_respawn.py [--n 4] [--variant fg|bg|smart2|all] [--quick] [--no-uwsgi]
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (Master, Row, Timeout, _ACTIVE, alive, base_parser, children, cmdline, descendants, median,  # noqa: E402
                     run_main, sleep_argv, wait_for, want_uwsgi)

TARGET_S = 0.050
VARIANTS = ("fg", "bg", "smart2")
RUNAWAY_LOG_BYTES = 5_000_000     # the master logged this much after one kill: it is spinning


class Runaway(Exception):
    pass


def daemon_line(variant: str, pidfile: str, argv: tuple[str, str]) -> str:
    prog = " ".join(argv)
    if variant == "fg":
        return f"smart-attach-daemon = {pidfile} sh -c 'echo $$ > {pidfile}; exec {prog}'\n"
    if variant == "bg":
        return f"smart-attach-daemon = {pidfile} sh -c '{prog} & echo $! > {pidfile}'\n"
    return f"smart-attach-daemon2 = {pidfile} {prog}\n"


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read(64).strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def runs(pid: int, argv: tuple[str, ...]) -> bool:
    """``pid`` is alive and is the program, or a shell whose descendant is the program (uWSGI's
    smart-attach-daemon2 writes the pid of ``/bin/sh -c CMD``, and dash forks CMD)."""
    if not alive(pid):
        return False
    if cmdline(pid) == argv:
        return True
    return any(cmdline(q) == argv and alive(q) for q in descendants(pid))


def programs_anywhere(argv: tuple[str, ...]) -> set[int]:
    """Live processes running ``argv`` below us: below a master, or orphaned (we are a subreaper)."""
    return {p for p in descendants(os.getpid()) if cmdline(p) == argv and alive(p)}


def reap_own_zombies() -> None:
    """A daemonized smart daemon orphaned by uWSGI lands on us (we are a subreaper): reap it
    when it dies, as init would, so that uWSGI's kill(pid, 0) sees it gone."""
    masters = {m.pid for m in _ACTIVE}
    for p in children(os.getpid()):
        if p not in masters and not alive(p):
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass


def measure(kind: str, variant: str, n: int, args, workdir: str) -> tuple[list[float], list[str]]:
    vdir = os.path.join(workdir, f"{kind}-{variant}")
    os.mkdir(vdir)
    base = 20000 if variant == "fg" else 30000 if variant == "bg" else 40000
    daemons = [(os.path.join(vdir, f"d{i}.pid"), sleep_argv(i, base)) for i in range(n)]
    config = "".join(daemon_line(variant, p, a) for p, a in daemons)
    m = Master(kind, config, vdir).start()
    samples: list[float] = []
    problems: list[str] = []
    leaks: list[str] = []
    try:
        proc = psutil.Process(m.pid)

        def all_valid():
            reap_own_zombies()
            if not m.running():
                raise RuntimeError(f"{kind} master exited early; log:\n{m.log_tail()}")
            return all((pid := read_pid(p)) and runs(pid, a) for p, a in daemons)

        wait_for(all_valid, 20, 0.01, f"{kind}/{variant}: all pidfiles valid")
        time.sleep(args.age)
        rng = random.Random(args.seed)
        for pidfile, argv in daemons:
            time.sleep(rng.uniform(0.0, args.gap))
            old = read_pid(pidfile)
            if not old or not alive(old):
                problems.append(f"{pidfile}: no live pid before the kill")
                continue
            m.remember_tree()
            before = programs_anywhere(argv)
            log0 = m.log_size()
            cpu0 = sum(proc.cpu_times()[:2])

            def respawned(pidfile=pidfile, argv=argv, old=old, log0=log0):
                reap_own_zombies()
                if m.log_size() - log0 > RUNAWAY_LOG_BYTES:
                    raise Runaway()
                pid = read_pid(pidfile)
                return pid if pid and pid != old and runs(pid, argv) else None

            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            t1 = time.monotonic()
            try:
                new, waited = wait_for(respawned, args.deadline, 0.001, "the respawn")
                samples.append(waited + (t1 - t0))
                time.sleep(0.05)
                left = before & programs_anywhere(argv)
                if left:
                    leaks.append(f"{variant}: killing pid {old} (the pid in the pidfile) left "
                                 f"{' '.join(argv)} running as pid(s) {sorted(left)}, and a second one was started")
            except (Timeout, Runaway) as exc:
                elapsed = time.monotonic() - t0
                cpu = sum(proc.cpu_times()[:2]) - cpu0 if m.running() else float("nan")
                what = (f"logged {m.log_size() - log0:,} bytes" if isinstance(exc, Runaway)
                        else "no new pid in the pidfile")
                problems.append(f"{variant}: pid {old} ({' '.join(argv)}) not respawned: after {elapsed:.1f} s "
                                f"the master had {what} and used {cpu:.2f} s CPU; "
                                f"pidfile holds {read_pid(pidfile)}; log excerpt: {_excerpt(m)}")
                break          # the master is wedged: its other daemons would say nothing new
    finally:
        m.cleanup()
    if leaks:
        problems.append(f"{len(leaks)} of {len(samples)} kill(s) left the old program running ({leaks[0]})")
    return samples, problems


def _excerpt(m: Master) -> str:
    lines = [ln.split(" - ", 1)[-1] for ln in m.log_tail(4).splitlines()]
    return " | ".join(x.strip() for x in lines[-3:])


def body(args, workdir, rows):
    n = args.n or (2 if args.quick else 4)
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    kinds = ["nsattach"] + (["uwsgi"] if want_uwsgi(args) else [])
    for variant in variants:
        res = {}
        for kind in kinds:
            print(f"{kind}/{variant}: {n} smart daemon(s), each SIGKILLed once ...", flush=True)
            samples, problems = measure(kind, variant, n, args, workdir)
            res[kind] = (samples, problems)
            if samples:
                print(f"  {kind}/{variant}: median {median(samples) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms "
                      f"over {len(samples)} respawn(s)")
            for p in problems:
                print(f"  {kind}/{variant}: PROBLEM: {p}")
        ns, nsp = res["nsattach"]
        uw, uwp = res.get("uwsgi", ([], []))
        note = " ".join([f"nsattach: {p}" for p in nsp] + [f"uwsgi: {p}" for p in uwp])
        ok = None if not ns and not nsp else (bool(ns) and not nsp and median(ns) <= TARGET_S)
        rows.append(Row(f"smart respawn ({variant}), median", "ms", median(ns) if ns else None,
                        median(uw) if uw else None, f"<= {TARGET_S * 1000:.0f} ms", ok, note))


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", "--repeat", dest="n", type=int, default=0,
                   help="daemons per variant, each killed once (default 4, --quick 2)")
    p.add_argument("--variant", choices=(*VARIANTS, "all"), default="all")
    p.add_argument("--age", type=float, default=4.2, help="seconds the daemons live before the kills (> 3)")
    p.add_argument("--gap", type=float, default=1.0, help="random pause of 0..GAP s before each kill")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--deadline", type=float, default=5.0, help="give up on one respawn after this many seconds")
    return run_main("smart_respawn", body, p)


if __name__ == "__main__":
    sys.exit(main())
