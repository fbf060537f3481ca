"""The client side of the control socket, used by the CLI verbs."""

from __future__ import annotations

import glob
import json
import os
import socket

from nsattach.control.protocol import RUN_DIR, default_socket_path, encode
from nsattach.errors import ControlError


def find_socket(explicit: str | None, config_files: list[str]) -> str:
    """The socket to talk to: --socket, else the one the config implies, else the only one running."""
    if explicit:
        return explicit
    if config_files:
        return default_socket_path(config_files)
    found = sorted(glob.glob(os.path.join(RUN_DIR, "*.sock")))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ControlError(f"no nsattach control socket in {RUN_DIR}: is nsattach running? (or give -c FILE / --socket PATH)")
    raise ControlError(f"several nsattach instances run ({', '.join(found)}): say which with -c FILE or --socket PATH")


def request(path: str, message: dict, timeout: float = 60.0) -> dict:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"{path} does not exist: is nsattach running?") from None
        except ConnectionRefusedError:
            raise ControlError(f"{path}: connection refused (a stale socket: nsattach is not running)") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (only root or the control group may use it)") from None
        sock.sendall(encode(message))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise ControlError(f"{path}: no answer within {timeout} s") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ControlError(f"{path}: unreadable answer {data[:80]!r}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: unexpected answer {reply!r}")
    return reply
