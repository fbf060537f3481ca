#!/usr/bin/env python3
"""Run every benchmark script and print one table.

    PYTHONPATH=/path/to/repo python bench/run_all.py [--quick] [--no-uwsgi] [--only a,b] [--skip a,b]

Each script runs as its own process (its own temporary directory and cleanup), with a deadline;
its result rows come back as JSON. Exit status 1 when a script failed or a target was missed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import Row, become_subreaper, check_nsattach_importable, print_rows, reap_orphans  # noqa: E402

SCRIPTS = [
    "respawn_latency",
    "smart_respawn",
    "stop_many",
    "stop_stubborn",
    "start_many",
    "idle_cost",
    "many_daemons",
    "legion_failover",
]
DEADLINE_S = {"quick": 240, "full": 480}


def run_script(name: str, extra: list[str], deadline: float) -> tuple[int | None, list[Row], float]:
    fd, out = tempfile.mkstemp(prefix=f"nsattach-bench-{name}-", suffix=".json")
    os.close(fd)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, f"{name}.py"), "--json-out", out, *extra],
                            start_new_session=True)
    try:
        try:
            status = proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            print(f"run_all: {name} still running after {deadline:.0f} s: stopping it (SIGTERM, it cleans up)",
                  file=sys.stderr)
            proc.send_signal(signal.SIGTERM)
            try:
                status = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)    # the session we created for it
                proc.wait(timeout=10)
                status = None
        rows: list[Row] = []
        try:
            with open(out) as f:
                data = json.load(f)
            rows = [Row(**r) for r in data["rows"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return status, rows, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        reap_orphans()          # masters orphaned by a killed script come back to us
        try:
            os.unlink(out)
        except OSError:
            pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every script")
    p.add_argument("--no-uwsgi", action="store_true", help="skip the uWSGI comparisons")
    p.add_argument("--only", default="", help="comma-separated scripts to run (default: all)")
    p.add_argument("--skip", default="", help="comma-separated scripts to leave out")
    args = p.parse_args()
    check_nsattach_importable()
    become_subreaper()
    only = [s for s in args.only.split(",") if s]
    skip = {s for s in args.skip.split(",") if s}
    unknown = [s for s in [*only, *skip] if s not in SCRIPTS]
    if unknown:
        p.error(f"unknown script(s) {unknown}; known: {', '.join(SCRIPTS)}")
    names = [s for s in (only or SCRIPTS) if s not in skip]
    extra = (["--quick"] if args.quick else []) + (["--no-uwsgi"] if args.no_uwsgi else [])
    deadline = DEADLINE_S["quick" if args.quick else "full"]

    all_rows: list[Row] = []
    failures: list[str] = []
    started = time.monotonic()
    for name in names:
        print(f"\n##### {name} {' '.join(extra)}", flush=True)
        status, rows, took = run_script(name, extra, deadline)
        print(f"##### {name}: {took:.1f} s, exit status {status}", flush=True)
        if status not in (0, 2):            # 2: ran through, a target missed (reported below)
            failures.append(f"{name} (exit status {status})")
        for r in rows:
            r.figure = f"{name}: {r.figure}"
        all_rows.extend(rows)
        if not rows:
            all_rows.append(Row(f"{name}: (no result)", "s", None, note=f"exit status {status}"))

    print_rows(all_rows, f"all benchmarks ({time.monotonic() - started:.0f} s)")
    print("\nuWSGI/nsattach: how many times more time (or CPU, memory) uWSGI needs for the same work;"
          " above 1 means nsattach is faster or cheaper.")
    missed = [r.figure for r in all_rows if r.met is False]
    if missed:
        print("targets missed: " + "; ".join(missed))
    if failures:
        print("scripts failed: " + "; ".join(failures))
    return 1 if missed or failures else 0


if __name__ == "__main__":
    sys.exit(main())
