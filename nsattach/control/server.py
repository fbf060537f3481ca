"""The control socket inside the master's event loop.

Non-blocking throughout: a client that connects and sends nothing, sends garbage, or stops
reading its reply can never stall the master; each connection has a deadline and a size
limit. Only root (and, when configured, members of one group) may talk to it: the socket
file is 0600 (0660 with a group) and every peer is checked with SO_PEERCRED as well.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
import struct
from typing import Callable

from nsattach.control.protocol import MAX_REQUEST_BYTES, ProtocolError, encode, parse_request

CONNECTION_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64


class ControlSocketError(OSError):
    pass


def bind_control_socket(path: str, gid: int | None = None) -> socket.socket:
    """Create the listening socket at ``path``, refusing to steal it from a running master."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(errno.EEXIST, f"{path} exists and is not a socket; remove it or set control-socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)          # a stale socket of a master that is gone
        else:
            raise ControlSocketError(errno.EADDRINUSE, f"another nsattach is running with control socket {path}: "
                                                       "refusing to start the same daemons twice")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177 if gid is None else 0o117)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    if gid is not None:
        os.chown(path, 0, gid)
    sock.listen(64)
    return sock


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)       # pid, uid, gid


class Connection:
    def __init__(self, server: "ControlServer", sock: socket.socket, deadline: float):
        self.server = server
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.deadline = deadline
        self.replied = False
        self.closed = False

    def reply(self, message: dict) -> None:
        """Queue the reply and send what the socket takes now; the rest when it is writable."""
        if self.closed or self.replied:
            return
        self.replied = True
        self.outbuf = encode(message)
        self._flush()

    def _flush(self) -> None:
        try:
            while self.outbuf:
                n = self.sock.send(self.outbuf)
                self.outbuf = self.outbuf[n:]
        except BlockingIOError:
            self.server.loop.watch(self.sock.fileno(), None, self._flush)
            return
        except OSError:
            pass
        self.close()

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.inbuf += data
        if b"\n" in self.inbuf:
            line = self.inbuf.split(b"\n", 1)[0]
            self.server.loop.watch(self.sock.fileno(), None, None)
            self._dispatch(line)
        elif len(self.inbuf) > MAX_REQUEST_BYTES:
            self.server.loop.watch(self.sock.fileno(), None, None)
            self.reply({"ok": False, "message": f"request larger than {MAX_REQUEST_BYTES} bytes"})

    def _dispatch(self, line: bytes) -> None:
        try:
            request = parse_request(line)
        except ProtocolError as exc:
            self.reply({"ok": False, "message": str(exc)})
            return
        try:
            self.server.handler(request, self)
        except Exception as exc:       # a bug in one request must not take the master down
            self.server.log(f"control: error handling {request.get('cmd')!r}: {exc!r}", "error")
            self.reply({"ok": False, "message": f"internal error: {exc}"})

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.loop.watch(self.sock.fileno(), None, None)
        self.sock.close()
        self.server.connections.discard(self)


class ControlServer:
    def __init__(self, loop, sock: socket.socket, handler: Callable[[dict, Connection], None], log,
                 allowed_gid: int | None = None, clock=None, on_connect: Callable[[], None] | None = None):
        self.loop = loop
        self.on_connect = on_connect        # lets the owner arm a deadline check only while needed
        self.sock = sock
        self.handler = handler
        self.log = log
        self.allowed_gid = allowed_gid
        self.clock = clock or loop.clock
        self.connections: set[Connection] = set()
        loop.add_reader(sock.fileno(), self._on_accept)

    def _allowed(self, uid: int, gid: int) -> bool:
        if uid == 0:
            return True
        if self.allowed_gid is None:
            return False
        if gid == self.allowed_gid:
            return True
        try:
            user = pwd.getpwuid(uid)
            return self.allowed_gid in os.getgrouplist(user.pw_name, user.pw_gid)
        except (KeyError, OSError):
            return False

    def _on_accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log(f"control: accept(): {exc.strerror}", "error")
                return
            conn.setblocking(False)
            pid, uid, gid = peer_credentials(conn)
            c = Connection(self, conn, self.clock() + CONNECTION_TIMEOUT_S)
            self.connections.add(c)
            if self.on_connect is not None:
                self.on_connect()
            if not self._allowed(uid, gid):
                self.log(f"control: refused a request from uid {uid} (pid {pid})", "warning")
                c.reply({"ok": False, "message": "permission denied: only root (or the control group) may control nsattach"})
                continue
            if len(self.connections) > MAX_CONNECTIONS:
                c.reply({"ok": False, "message": "too many control connections"})
                continue
            self.loop.watch(conn.fileno(), c._on_readable, None)

    def expire(self) -> None:
        """Drop connections past their deadline (called from the master's periodic timer)."""
        now = self.clock()
        for c in list(self.connections):
            if c.deadline < now and not c.replied:
                c.reply({"ok": False, "message": "timed out"})
            elif c.deadline + CONNECTION_TIMEOUT_S < now:
                c.close()

    def close(self) -> None:
        for c in list(self.connections):
            c.close()
        self.loop.watch(self.sock.fileno(), None, None)
        self.sock.close()
