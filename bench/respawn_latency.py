#!/usr/bin/env python3
"""Respawn latency of a dumb daemon (attach-daemon) after a SIGKILL.

N daemons ``attach-daemon = sleep 10000``, ``sleep 10001``, ... run under one master. Once
every one has lived more than --age seconds (4.2 by default: a death within 3 s of the spawn is
throttled, by uWSGI and by nsattach), they are SIGKILLed one after another, with a random pause
of 0..--gap seconds before each kill; for each, the time
from the kill until a new live ``sleep 1000i`` runs below the master (polled through /proc about
every millisecond) is one sample. Each daemon dies once, so no throttle applies.

    python bench/respawn_latency.py [--n 10] [--quick] [--no-uwsgi]
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (Master, Row, Timeout, alive, base_parser, cmdline, descendants, median,  # noqa: E402
                     run_main, sleep_argv, wait_for, want_uwsgi)

TARGET_S = 0.020


def measure(kind: str, n: int, age: float, workdir: str, deadline: float, gap: float, seed: int) -> tuple[list[float], list[str]]:
    config = "".join(f"attach-daemon = {' '.join(sleep_argv(i))}\n" for i in range(n))
    m = Master(kind, config, workdir).start()
    samples: list[float] = []
    problems: list[str] = []
    try:
        argvs = [sleep_argv(i) for i in range(n)]
        m.wait_programs(argvs, timeout=30)
        all_up = time.monotonic()
        time.sleep(max(0.0, all_up + age - time.monotonic()))
        rng = random.Random(seed)
        for argv in argvs:
            # a random pause between kills: a master that polls on a fixed period (uWSGI wakes
            # once a second) is then hit at a uniformly random phase of its cycle
            time.sleep(rng.uniform(0.0, gap))
            old = set(m.programs().get(argv, []))
            if len(old) != 1:
                problems.append(f"{' '.join(argv)}: expected 1 live process before the kill, found {len(old)}")
                continue
            victim = next(iter(old))

            def respawned(argv=argv, old=old):
                for p in descendants(m.pid):
                    if p not in old and cmdline(p) == argv and alive(p):
                        return p
                return None

            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            t0_wait = time.monotonic()
            try:
                _, waited = wait_for(respawned, deadline, 0.001, "the respawn")
            except Timeout:
                problems.append(f"{' '.join(argv)} (pid {victim}) was not respawned within {deadline:.0f} s")
                if not m.running():
                    problems.append(f"the {kind} master died")
                    break
                continue
            samples.append(waited + (t0_wait - t0))
            m.remember_tree()
    finally:
        m.cleanup()
    return samples, problems


def body(args, workdir, rows):
    n = args.n or (5 if args.quick else 10)
    results = {}
    kinds = ["nsattach"] + (["uwsgi"] if want_uwsgi(args) else [])
    for kind in kinds:
        print(f"{kind}: {n} daemons, each SIGKILLed once {args.age:.1f} s after start ...", flush=True)
        samples, problems = measure(kind, n, args.age, workdir, args.deadline, args.gap, args.seed)
        results[kind] = (samples, problems)
        if samples:
            print(f"  {kind}: median {median(samples) * 1000:.1f} ms, min {min(samples) * 1000:.1f} ms, "
                  f"max {max(samples) * 1000:.1f} ms over {len(samples)} respawn(s)")
        for p in problems:
            print(f"  {kind}: PROBLEM: {p}")
    ns, ns_problems = results["nsattach"]
    uw, uw_problems = results.get("uwsgi", ([], []))
    note = "; ".join(f"nsattach: {p}" for p in ns_problems) + "; ".join(f"uwsgi: {p}" for p in uw_problems)
    ns_med = median(ns) if ns else None
    rows.append(Row("respawn latency, median", "ms", ns_med, median(uw) if uw else None,
                    f"<= {TARGET_S * 1000:.0f} ms", None if ns_med is None else (ns_med <= TARGET_S and not ns_problems),
                    note))
    rows.append(Row("respawn latency, max", "ms", max(ns) if ns else None, max(uw) if uw else None))


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", "--repeat", dest="n", type=int, default=0,
                   help="daemons, each killed once (default 10, --quick 5)")
    p.add_argument("--age", type=float, default=4.2, help="seconds every daemon lives before the kills (> 3)")
    p.add_argument("--gap", type=float, default=1.0,
                   help="random pause of 0..GAP seconds before each kill (de-synchronises from a polling master)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random pauses")
    p.add_argument("--deadline", type=float, default=10.0, help="give up on one respawn after this many seconds")
    return run_main("respawn_latency", body, p)


if __name__ == "__main__":
    sys.exit(main())
