"""The control protocol: one JSON object per line over a unix stream socket.

A client connects, sends one request line and reads one reply line, then the connection is
closed. Requests: ``{"cmd": "status"}``, ``{"cmd": "stop"|"start"|"restart", "names": [...]}``,
``{"cmd": "signal", "names": [...], "signal": "HUP"}``, ``{"cmd": "reload"}``,
``{"cmd": "shutdown"}``, ``{"cmd": "reopen-logs"}``. Every reply has ``ok`` (bool) and
``message`` (text for humans); the rest depends on the command.
"""

from __future__ import annotations

import json
import os

MAX_REQUEST_BYTES = 64 * 1024
RUN_DIR = "/run/nsattach"
COMMANDS = ("status", "stop", "start", "restart", "signal", "reload", "shutdown", "reopen-logs")
NAMED_COMMANDS = ("stop", "start", "restart", "signal")


class ProtocolError(ValueError):
    pass


def default_socket_path(config_files: list[str] | tuple[str, ...]) -> str:
    """``/run/nsattach/<first config file's name without extension>.sock``."""
    stem = "nsattach"
    if config_files:
        stem = os.path.splitext(os.path.basename(config_files[0]))[0] or stem
    return os.path.join(RUN_DIR, f"{stem}.sock")


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def parse_request(line: bytes) -> dict:
    """A request dict, checked; ProtocolError says what is wrong with it."""
    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON request: {exc}") from None
    if not isinstance(request, dict):
        raise ProtocolError("a request is a JSON object")
    cmd = request.get("cmd")
    if cmd not in COMMANDS:
        raise ProtocolError(f"unknown command {cmd!r} (known: {', '.join(COMMANDS)})")
    if cmd in NAMED_COMMANDS:
        names = request.get("names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ProtocolError(f"{cmd} needs a non-empty list of daemon names")
        if len(names) > 10000:
            raise ProtocolError("too many names")
    if cmd == "signal" and not isinstance(request.get("signal"), (str, int)):
        raise ProtocolError("signal needs a signal name or number")
    return request
