"""A non-blocking client for etcd's HTTP/JSON gateway (``POST /v3/...``), driven by the master's loop.

Why not an existing etcd client: the maintained Python clients of the v3 API (python-etcd3,
etcd3gw's relatives, aetcd) speak gRPC, and gRPC's Python runtime runs its own threads (a
completion-queue poller, keepalive and resolver threads) and is documented as unsafe across
``fork()``. The nsattach master is single-threaded on purpose: it forks daemons and legion
actions at any moment, and a fork taken while another thread holds a lock (malloc's, gRPC's,
the GIL handover) can leave the child deadlocked. A blocking HTTP client is no better: one
hanging etcd member would stall daemon supervision for as long as it hangs. So this module
talks to the JSON gateway etcd serves on its client port with the standard library only:

* every call is one HTTP/1.1 request on its own connection (``Connection: close``): a
  non-blocking ``connect``, a non-blocking TLS handshake (``ssl`` with
  ``do_handshake_on_connect=False``) for ``https`` endpoints, the request, the response;
* the host's loop tells the client when a socket is readable or writable (``watch``); the
  client never sleeps, never blocks and never starts a thread;
* every call has a deadline (``timeout``): the owner calls :meth:`EtcdClient.expire` from its
  timer, and a call past its deadline fails with a transport error whatever the member does
  (a SIGSTOPped member accepts the TCP connection and then says nothing);
* a call that failed on the transport (refused, reset, timed out, "unavailable") makes the next
  call go to the next endpoint, so a cluster with one dead member keeps working;
* with a user, the client gets a token from ``/v3/auth/authenticate`` before its first call and
  again whenever etcd says the token is no longer valid.

Keys and values are base64 in the gateway's JSON and 64-bit integers are JSON strings; the
helpers :func:`b64` and :func:`unb64` do the former, callers do ``int(...)`` for the latter.

The only blocking step is resolving endpoint host names (``getaddrinfo`` has no non-blocking
form in the standard library): :meth:`EtcdClient.resolve` does it once, when the legion
starts. Endpoints written as IP addresses never touch a resolver.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import json
import selectors
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

DEFAULT_PORT = 2379
MAX_RESPONSE = 8 << 20          # bytes: a legion's keys are tiny; anything bigger is a wrong endpoint
READ_CHUNK = 65536
# gRPC status codes etcd answers with (google.golang.org/grpc/codes)
CODE_NOT_FOUND = 5
CODE_UNAVAILABLE = 14
CODE_UNAUTHENTICATED = 16


def b64(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix`` (etcd's rule)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


# --- endpoints ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    url: str
    scheme: str         # http or https
    host: str           # name or IP address (IPv6 without brackets)
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """``http(s)://HOST[:PORT][/]``; HOST a name, an IPv4 address or a bracketed IPv6 address."""
    word = text.strip()
    try:
        parts = urlsplit(word)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"etcd endpoint {word!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"etcd endpoint {word!r}: must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"etcd endpoint {word!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"etcd endpoint {word!r}: only scheme://host:port (put credentials in legion-etcd-user)")
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not all(label and len(label) <= 63 and all(ch.isalnum() or ch == "-" for ch in label)
                   for label in host.rstrip(".").split(".")):
            raise ValueError(f"etcd endpoint {word!r}: {host!r} is neither an IP address nor a host name") from None
    return Endpoint(word, parts.scheme, host, port or DEFAULT_PORT)


# --- replies --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    """The outcome of one call: ``data`` (the decoded JSON) when etcd answered 200 without an
    error; otherwise ``error``, with ``code`` (gRPC status) when etcd itself refused, or
    ``transport`` when there was no usable answer at all (refused, reset, timed out)."""

    data: dict | None = None
    error: str | None = None
    code: int | None = None
    transport: bool = False
    endpoint: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_http_response(raw: bytes, *, complete: bool) -> tuple[int, bytes] | None:
    """(status, body) of an HTTP/1.1 response in ``raw``; None if more bytes are needed (only
    when not ``complete``, i.e. the peer did not close yet). Raises ValueError on garbage."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        if complete:
            raise ValueError("connection closed before the response headers")
        return None
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:60]!r}")
    status = int(status_line[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        body = bytearray()
        pos = 0
        while True:
            eol = rest.find(b"\r\n", pos)
            if eol < 0:
                break
            size_text = rest[pos:eol].split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ValueError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                return status, bytes(body)
            if len(rest) < eol + 2 + size + 2:
                break
            body += rest[eol + 2:eol + 2 + size]
            pos = eol + 2 + size + 2
        if complete:
            if body:
                return status, bytes(body)      # a stream the server ended by closing
            raise ValueError("connection closed in the middle of a chunked response")
        return None
    length = headers.get(b"content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise ValueError(f"bad Content-Length {length[:20]!r}") from None
        if len(rest) >= n:
            return status, rest[:n]
        if complete:
            raise ValueError("connection closed before the whole response body")
        return None
    return (status, rest) if complete else None


def decode_reply(status: int, body: bytes, endpoint: str) -> Reply:
    """The gateway's JSON: a message, a ``{"result": message}`` stream item (lease keepalive),
    or an error ``{"error", "message", "code"}`` (also inside a stream item)."""
    text = body.decode("utf-8", "replace").strip()
    data = None
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        first = text.split("\n", 1)[0]
        try:
            data = json.loads(first)
        except ValueError:
            pass
    if not isinstance(data, dict):
        kind = "transport" if status >= 500 or status == 404 else "etcd"
        return Reply(error=f"HTTP {status}: {text[:120] or 'empty body'}", transport=kind == "transport",
                     endpoint=endpoint)
    failed = status != 200
    if isinstance(data.get("result"), dict):
        data = data["result"]
    elif isinstance(data.get("error"), dict):     # an error item in a stream: {grpc_code, http_code, message}
        data, failed = data["error"], True
    if failed or "error" in data or ("code" in data and "message" in data and "header" not in data):
        message = str(data.get("message") or data.get("error") or f"HTTP {status}")
        code = data.get("code", data.get("grpc_code"))
        code = int(code) if isinstance(code, (int, str)) and str(code).isdigit() else None
        transport = code == CODE_UNAVAILABLE or status in (502, 503, 504) or (status == 404 and code is None)
        return Reply(error=message, code=code, transport=transport, endpoint=endpoint)
    return Reply(data=data, endpoint=endpoint)


# --- the client -----------------------------------------------------------------------------

class EtcdClient:
    """Calls to one etcd cluster. ``watch(fd, on_read, on_write)`` registers interest with the
    owner's loop (both None: forget the fd); the owner calls :meth:`expire` at
    :meth:`next_deadline`."""

    def __init__(self, endpoints: list[str] | tuple[str, ...], *,
                 watch: Callable[[int, Callable[[], None] | None, Callable[[], None] | None], None],
                 clock: Callable[[], float] = time.monotonic, timeout: float = 2.0,
                 ssl_context: ssl.SSLContext | None = None, user: str | None = None,
                 password: str | None = None):
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        if not self.endpoints:
            raise ValueError("no etcd endpoint")
        if any(e.tls for e in self.endpoints) and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self.ssl_context = ssl_context
        self.watch = watch
        self.clock = clock
        self.timeout = timeout
        self.user = user
        self.password = password
        self.addresses: list[tuple | None] = [None] * len(self.endpoints)   # (family, sockaddr)
        self.current = 0
        self.token: str | None = None
        self.calls: set[_Call] = set()
        self._auth: _Call | None = None
        self._awaiting_token: list[_Call] = []
        self.closed = False

    def resolve(self) -> list[str]:
        """Resolve every endpoint once (blocking for host names, see the module docstring).
        Returns the problems; endpoints that do not resolve are skipped by later calls."""
        problems = []
        for i, ep in enumerate(self.endpoints):
            try:
                infos = socket.getaddrinfo(ep.host, ep.port, 0, socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                problems.append(f"{ep.url}: cannot resolve {ep.host}: {getattr(exc, 'strerror', None) or exc}")
                continue
            family, _, _, _, sockaddr = infos[0]
            self.addresses[i] = (family, sockaddr)
        return problems

    # -- calls -------------------------------------------------------------------------------

    def call(self, path: str, body: dict, on_done: Callable[[Reply], None], *,
             timeout: float | None = None) -> "_Call":
        """POST ``body`` to ``path`` (e.g. ``/v3/kv/range``); ``on_done(Reply)`` is called exactly
        once, possibly before this method returns (a connect that fails at once)."""
        call = _Call(self, path, body, on_done, self.clock() + (timeout or self.timeout))
        self.calls.add(call)
        if self.closed:
            call.fail("the etcd client is closed", transport=True)
        elif self.user is not None and self.token is None:
            self._awaiting_token.append(call)
            self._authenticate()
        else:
            call.connect()
        return call

    def _authenticate(self) -> None:
        if self._auth is not None:
            return
        self._auth = _Call(self, "/v3/auth/authenticate", {"name": self.user, "password": self.password or ""},
                           self._authenticated, self.clock() + self.timeout, needs_token=False)
        self.calls.add(self._auth)
        self._auth.connect()

    def _authenticated(self, reply: Reply) -> None:
        self._auth = None
        waiting, self._awaiting_token = self._awaiting_token, []
        if reply.ok and isinstance(reply.data.get("token"), str):
            self.token = reply.data["token"]
            for call in waiting:
                if not call.done:
                    call.connect()
            return
        error = reply.error or "no token in the answer"
        for call in waiting:
            call.fail(f"etcd authentication as {self.user!r} failed: {error}", code=reply.code,
                      transport=reply.transport)

    def next_deadline(self) -> float:
        return min((c.deadline for c in self.calls), default=float("inf"))

    def expire(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for call in [c for c in self.calls if c.deadline <= now]:
            call.fail(f"no answer within {self.timeout:g} s", transport=True)

    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the client's own sockets and handle them, without the
        owner's loop (for a last request when the master is exiting)."""
        selector = selectors.DefaultSelector()
        try:
            for call in list(self.calls):
                if call.sock is not None and call.interest:
                    selector.register(call.sock.fileno(), call.interest, call)
            if selector.get_map():
                for key, _ in selector.select(max(0.0, timeout)):
                    if not key.data.done:
                        key.data.on_ready()
            elif timeout > 0:
                time.sleep(min(timeout, 0.01))
        finally:
            selector.close()
        self.expire()

    def close(self) -> None:
        """Abandon every call (their callbacks are not called)."""
        self.closed = True
        for call in list(self.calls):
            call.on_done = lambda reply: None
            call.fail("closed", transport=True)

    # -- endpoint choice -----------------------------------------------------------------------

    def _pick(self) -> int | None:
        n = len(self.endpoints)
        for step in range(n):
            i = (self.current + step) % n
            if self.addresses[i] is not None:
                self.current = i
                return i
        return None

    def _failed(self, index: int) -> None:
        if index == self.current and len(self.endpoints) > 1:
            self.current = (index + 1) % len(self.endpoints)


class _Call:
    """One HTTP exchange on its own connection."""

    def __init__(self, client: EtcdClient, path: str, body: dict, on_done, deadline: float, *,
                 needs_token: bool = True):
        self.client = client
        self.path = path
        self.body = json.dumps(body, separators=(",", ":")).encode()
        self.on_done = on_done
        self.deadline = deadline
        self.needs_token = needs_token
        self.index: int | None = None
        self.sock: socket.socket | ssl.SSLSocket | None = None
        self.fd = -1
        self.state = "new"
        self.interest = 0
        self.out = b""
        self.inbuf = bytearray()
        self.done = False

    @property
    def endpoint(self) -> str:
        index = self.index if self.index is not None else self.client.current
        return self.client.endpoints[index].url

    def connect(self) -> None:
        client = self.client
        index = client._pick()
        if index is None:
            self.fail("no etcd endpoint could be resolved", transport=True)
            return
        self.index = index
        ep = client.endpoints[index]
        family, sockaddr = client.addresses[index]
        headers = [f"POST {self.path} HTTP/1.1", f"Host: {ep.authority}", "Content-Type: application/json",
                   "Accept: application/json", f"Content-Length: {len(self.body)}", "Connection: close"]
        if self.needs_token and client.token:
            headers.append(f"Authorization: {client.token}")
        self.out = ("\r\n".join(headers) + "\r\n\r\n").encode() + self.body
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            self.fail(f"socket(): {exc.strerror or exc}", transport=True)
            return
        self.sock, self.fd = sock, sock.fileno()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(sockaddr)
        except OSError as exc:
            err = exc.errno or errno.EIO
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self.fail(f"connect(): {errno.errorcode.get(err, err)} {os_strerror(err)}", transport=True)
            return
        self.state = "connecting"
        self._want(selectors.EVENT_WRITE)

    def _want(self, interest: int) -> None:
        if self.done or self.sock is None:
            return
        self.interest = interest
        self.client.watch(self.fd, self.on_ready if interest & selectors.EVENT_READ else None,
                          self.on_ready if interest & selectors.EVENT_WRITE else None)

    def on_ready(self) -> None:
        if self.done or self.sock is None:
            return
        try:
            if self.state == "connecting":
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.fail(f"connect(): {os_strerror(err)}", transport=True)
                    return
                if self.client.endpoints[self.index].tls:
                    ep = self.client.endpoints[self.index]
                    # the kernel socket stays registered under the same fd: wrap_socket keeps it
                    self.sock = self.client.ssl_context.wrap_socket(
                        self.sock, server_hostname=ep.host, do_handshake_on_connect=False)
                    self.state = "handshake"
                else:
                    self.state = "sending"
            if self.state == "handshake":
                try:
                    self.sock.do_handshake()
                except ssl.SSLWantReadError:
                    self._want(selectors.EVENT_READ)
                    return
                except ssl.SSLWantWriteError:
                    self._want(selectors.EVENT_WRITE)
                    return
                self.state = "sending"
            if self.state == "sending":
                while self.out:
                    try:
                        n = self.sock.send(self.out)
                    except (BlockingIOError, ssl.SSLWantWriteError):
                        self._want(selectors.EVENT_WRITE)
                        return
                    except ssl.SSLWantReadError:
                        self._want(selectors.EVENT_READ)
                        return
                    self.out = self.out[n:]
                self.state = "receiving"
                self._want(selectors.EVENT_READ)
                return
            if self.state == "receiving":
                self._receive()
        except ssl.SSLError as exc:
            self.fail(f"TLS: {exc.reason or exc}", transport=True)
        except (OSError, ValueError) as exc:
            self.fail(f"{getattr(exc, 'strerror', None) or exc}", transport=True)

    def _receive(self) -> None:
        closed = False
        while True:
            try:
                data = self.sock.recv(READ_CHUNK)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                self._want(selectors.EVENT_WRITE)
                return
            if not data:
                closed = True
                break
            self.inbuf += data
            if len(self.inbuf) > MAX_RESPONSE:
                self.fail(f"response larger than {MAX_RESPONSE} bytes", transport=True)
                return
        parsed = parse_http_response(bytes(self.inbuf), complete=closed)
        if parsed is None:
            self._want(selectors.EVENT_READ)
            return
        status, body = parsed
        self._finish(decode_reply(status, body, self.endpoint))

    def _close(self) -> None:
        if self.sock is not None:
            if self.interest:
                self.client.watch(self.fd, None, None)
            self.interest = 0
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def _finish(self, reply: Reply) -> None:
        if self.done:
            return
        self.done = True
        self._close()
        client = self.client
        client.calls.discard(self)
        if self in client._awaiting_token:
            client._awaiting_token.remove(self)
        if reply.transport and self.index is not None:
            client._failed(self.index)
        if reply.code == CODE_UNAUTHENTICATED or (reply.error and "invalid auth token" in reply.error):
            client.token = None         # the next call authenticates again
        self.on_done(reply)

    def fail(self, error: str, *, code: int | None = None, transport: bool = False) -> None:
        self._finish(Reply(error=error, code=code, transport=transport, endpoint=self.endpoint))


def os_strerror(err: int) -> str:
    import os

    try:
        return os.strerror(err)
    except ValueError:
        return str(err)
