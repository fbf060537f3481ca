"""Capturing daemon output line by line, without letting a daemon stall the master.

A captured daemon writes into a pipe; the master reads it when the loop says it is readable,
at most ``READ_CHUNK`` bytes per wake-up (so one flooding daemon cannot starve the others or
delay a respawn), cuts it into lines, and hands each line to a sink: the master's log with
the daemon's name, or a per-daemon file that can be reopened (logrotate). A line longer than
``MAX_LINE`` is cut; a daemon that never writes a newline is flushed in ``MAX_LINE`` pieces.
"""

from __future__ import annotations

import os
import time

READ_CHUNK = 64 * 1024
MAX_LINE = 16 * 1024


class FileSink:
    """An append-mode file that can be reopened after it was rotated away."""

    def __init__(self, path: str):
        self.path = path
        self.fd = -1
        self.reopen()

    def reopen(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd

    def write_line(self, name: str, line: bytes) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S").encode()
        try:
            os.write(self.fd, stamp + b" " + line + b"\n")
        except OSError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LogSink:
    """Lines into the master's log, tagged with the daemon's name."""

    def __init__(self, log):
        self.log = log

    def write_line(self, name: str, line: bytes) -> None:
        self.log(f"[{name}] {line.decode('utf-8', 'backslashreplace')}")

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


class Capture:
    """The read end of one spawned daemon's output pipe."""

    def __init__(self, name: str, fd: int, sink):
        self.name = name
        self.fd = fd
        self.sink = sink
        self.partial = b""

    def on_readable(self) -> bool:
        """Read one chunk; False at end of file (the caller then closes it)."""
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            if self.partial:
                self.sink.write_line(self.name, self.partial)
                self.partial = b""
            return False
        buf = self.partial + data
        lines = buf.split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            self._emit(line)
        while len(self.partial) >= MAX_LINE:
            self._emit(self.partial[:MAX_LINE])
            self.partial = self.partial[MAX_LINE:]
        return True

    def _emit(self, line: bytes) -> None:
        while len(line) > MAX_LINE:
            self.sink.write_line(self.name, line[:MAX_LINE])
            line = line[MAX_LINE:]
        self.sink.write_line(self.name, line.rstrip(b"\r"))

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
