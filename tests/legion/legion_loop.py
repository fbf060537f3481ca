"""A tiny real event loop for LegionService tests: selectors for the UDP sockets and the
pidfds of action processes, one timer per host, and every wait bounded by a deadline.

It stands in for the master's runtime, implementing the LegionHost protocol of
``nsattach.legion.node`` with recording (logs, lord changes, actions run) so tests can assert on
what happened. Several services may share one loop (several "nodes" in one process).
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import time
from typing import Callable

from nsattach.legion.node import LegionService


class MiniLoop:
    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.timers: dict[FakeHost, float] = {}
        self.children: list[subprocess.Popen] = []

    def host(self, name: str, *, echo: bool = False) -> "FakeHost":
        return FakeHost(self, name, echo=echo)

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Dispatch events until ``predicate()`` is true (-> True) or ``timeout`` passed (-> False)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            wait = deadline - now
            if self.timers:
                wait = min(wait, max(0.0, min(self.timers.values()) - now))
            for key, _ in self.selector.select(min(wait, 0.5)):
                key.data()
            now = time.monotonic()
            for host, when in list(self.timers.items()):
                if when <= now and self.timers.get(host) == when:
                    del self.timers[host]
                    if host.service is not None:
                        host.service.on_timer()

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait(5)
        self.selector.close()


class FakeHost:
    """LegionHost for tests: records everything; runs cmd:/exec: with ``sh -c`` for real."""

    def __init__(self, loop: MiniLoop, name: str, *, echo: bool = False):
        self.loop = loop
        self.name = name
        self.echo = echo
        self.service: LegionService | None = None
        self.logs: list[tuple[str, str]] = []
        self.lord_events: list[tuple[str, bool, float]] = []
        self.lord: dict[str, bool] = {}
        self.actions: list[tuple[str, str, str, dict]] = []      # (legion, event, argument, env)
        self.fail_spawn = False

    def __hash__(self) -> int:
        return id(self)

    # LegionHost
    def call_at(self, when_monotonic: float) -> None:
        self.loop.timers[self] = when_monotonic

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.loop.selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        try:
            self.loop.selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def run_action(self, legion, event, action, env, on_done) -> None:
        self.actions.append((legion, event, action.argument, env))
        if self.fail_spawn:
            on_done(None)
            return
        child = subprocess.Popen(["/bin/sh", "-c", action.argument], env={**os.environ, **env},
                                 stdin=subprocess.DEVNULL)
        self.loop.children.append(child)
        pidfd = os.pidfd_open(child.pid)

        def exited() -> None:
            self.loop.selector.unregister(pidfd)
            os.close(pidfd)
            on_done(child.wait())

        self.loop.selector.register(pidfd, selectors.EVENT_READ, exited)

    def log(self, text: str, level: str = "info") -> None:
        self.logs.append((level, text))
        if self.echo:
            print(f"[{self.name}] {level}: {text}", flush=True)

    def lord_changed(self, legion: str, lord: bool, since_wall: float) -> None:
        self.lord_events.append((legion, lord, since_wall))
        self.lord[legion] = lord

    # helpers
    def logged(self, fragment: str) -> bool:
        return any(fragment in text for _, text in self.logs)

    def stop_timer(self) -> None:
        self.loop.timers.pop(self, None)


def free_udp_ports(count: int) -> list[int]:
    """Ports that were free on 127.0.0.1 a moment ago (the kernel picked them)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
