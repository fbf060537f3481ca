"""The master's log: one timestamped line per event, written to fd 2.

Nothing is configured at import time. The timestamp is uWSGI's verbose prefix
(``Thu Nov 26 15:25:32 2026 - ``) so existing log parsers keep working. Daemons write to the
same fds 1 and 2 as the master, as under uWSGI; ``logto`` points both at a file.
"""

from __future__ import annotations

import os
import sys
import time

LEVEL_TAGS = {"info": "", "warning": "WARNING: ", "error": "ERROR: "}


class Logger:
    def __init__(self, fd: int = 2):
        self.fd = fd

    def __call__(self, text: str, level: str = "info") -> None:
        line = f"{time.strftime('%a %b %d %H:%M:%S %Y')} - {LEVEL_TAGS.get(level, '')}{text}\n"
        data = line.encode("utf-8", "backslashreplace")
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except BlockingIOError:
            pass    # never let a full log pipe stall the master
        except OSError:
            pass


def open_logto(path: str) -> None:
    """Point fds 1 and 2 (ours and, by inheritance, the daemons') at ``path``, appending."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
