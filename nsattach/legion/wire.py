"""The Legion announcement datagram, bit-compatible with uWSGI's ``core/legion.c`` (uwsgi-spec §7.4).

A datagram is a 4-byte uwsgi header (modifier1 = 109, the PLAINTEXT length as u16 LE,
modifier2 = 0) followed by the encrypted body. The body is a uwsgi "vars" block: items of
``keylen u16 LE | key | vallen u16 LE | value``. Numbers travel as ASCII decimal of a signed
64-bit integer (uWSGI prints its unsigned fields with ``%lld``).

:func:`decode` carries out steps 1-5 of the receive pipeline (§7.5) and raises
:class:`PacketError` for every datagram uWSGI would skip, plus a few it would mis-handle; the
steps that need the receiver's state (legion name, loop detection, clock skew, node table)
belong to :mod:`nsattach.legion.election`.

Deliberate deviations from uWSGI's receiver (none changes what a valid uWSGI packet means):

* Numbers are parsed strictly. uWSGI's ``uwsgi_str_num`` subtracts ``'0'`` from every byte, so
  garbage silently becomes some number; here a number must be ``-?[0-9]{1,20}`` that fits in
  64 bits, otherwise the packet is rejected. Fields uWSGI declares unsigned (``checksum``,
  ``lord_valor``) are taken modulo 2**64, so a sender's ``%lld`` rendering of a value above
  2**63 keeps its meaning.
* A negative ``valor`` is rejected (a uWSGI node configured with one would wrap to 2**64-N and
  its peers would parse its ``-N`` as garbage anyway).
* An empty ``name`` is rejected here (Q-L3: uWSGI leaks its legion lock and deadlocks on it).
* Datagrams longer than ``max_size`` (65499, uWSGI's read size) are rejected instead of being
  truncated and then failing to decrypt.
* ``dead`` counts as present whatever its value, like uWSGI. Duplicate keys: the last one wins,
  like uWSGI. ``uuid``/``lord_uuid`` values that are not exactly 36 bytes are ignored (they stay
  36 NUL bytes), like uWSGI.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from nsattach.legion.crypto import LegionCipher

MODIFIER1 = 109
MAX_DATAGRAM = 65499            # 65535 - 32 - 4: what uWSGI reads per datagram
UUID_LEN = 36
NO_UUID = b"\0" * UUID_LEN      # "no candidate yet", as uWSGI announces before its first election
_U64 = 1 << 64
_NUMBER = re.compile(rb"-?[0-9]{1,20}")


class PacketError(ValueError):
    """A datagram the receive pipeline rejects; ``reason`` is the uWSGI log text when there is one."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Announcement:
    """One node's announcement. ``legion``/``name`` are text (UTF-8, undecodable bytes kept via
    surrogateescape so they round-trip byte-exactly); the uuids are exactly 36 raw bytes."""

    legion: str
    valor: int
    unix: int                   # sender's wall clock, seconds
    lord: int                   # wall time the sender became Lord, 0 if it is not (informational)
    name: str                   # sender's hostname
    pid: int
    uuid: bytes                 # 36 bytes: lower-case textual uuid (NULs if the sender sent none)
    checksum: int               # sender's membership checksum, unsigned 64-bit
    lord_valor: int             # valor of the sender's current candidate
    lord_uuid: bytes            # 36 bytes; NULs before the sender's first election
    scroll: bytes | None = None
    dead: bool = False


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _num(value: int) -> bytes:
    """uWSGI's ``%lld`` of a uint64: values from 2**63 on print as negative numbers."""
    value %= _U64
    if value >= 1 << 63:
        value -= _U64
    return str(value).encode()


def _item(key: bytes, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"legion field {key.decode()} is {len(value)} bytes, more than 65535")
    return struct.pack("<H", len(key)) + key + struct.pack("<H", len(value)) + value


def encode_body(ann: Announcement) -> bytes:
    """The plaintext body, fields in uWSGI's order (receivers do not care, but byte-identical
    packets make captures comparable)."""
    for label, uuid in (("uuid", ann.uuid), ("lord_uuid", ann.lord_uuid)):
        if len(uuid) != UUID_LEN:
            raise ValueError(f"{label} must be {UUID_LEN} bytes, not {len(uuid)}")
    parts = [
        _item(b"legion", _text(ann.legion)),
        _item(b"valor", _num(ann.valor)),
        _item(b"unix", _num(ann.unix)),
        _item(b"lord", _num(ann.lord)),
        _item(b"name", _text(ann.name)),
        _item(b"pid", _num(ann.pid)),
        _item(b"uuid", ann.uuid),
        _item(b"checksum", _num(ann.checksum)),
        _item(b"lord_valor", _num(ann.lord_valor)),
        _item(b"lord_uuid", ann.lord_uuid),
    ]
    if ann.scroll:      # uWSGI only sends a non-empty scroll
        parts.append(_item(b"scroll", ann.scroll))
    if ann.dead:
        parts.append(_item(b"dead", b"1"))
    return b"".join(parts)


def encode(ann: Announcement, cipher: LegionCipher) -> bytes:
    body = encode_body(ann)
    if len(body) > 0xFFFF:
        raise ValueError(f"legion announcement body is {len(body)} bytes; the header holds at most 65535")
    return struct.pack("<BHB", MODIFIER1, len(body), 0) + cipher.encrypt(body)


def parse_items(body: bytes) -> list[tuple[bytes, bytes]]:
    """uWSGI's ``uwsgi_hooked_parse``, quirk included: it insists on MORE than two bytes being
    left before it reads a key length, and a key may not be empty (a value may)."""
    items = []
    pos, end = 0, len(body)
    while pos < end:
        if pos + 2 >= end:
            raise PacketError("invalid packet (truncated item)")
        (keylen,) = struct.unpack_from("<H", body, pos)
        if keylen == 0:
            raise PacketError("invalid packet (empty key)")
        pos += 2
        if pos + keylen > end:
            raise PacketError("invalid packet (key runs past the end)")
        key = body[pos:pos + keylen]
        pos += keylen
        if pos + 2 > end:
            raise PacketError("invalid packet (missing value length)")
        (vallen,) = struct.unpack_from("<H", body, pos)
        pos += 2
        if pos + vallen > end:
            raise PacketError("invalid packet (value runs past the end)")
        items.append((key, body[pos:pos + vallen]))
        pos += vallen
    return items


def _parse_number(key: bytes, value: bytes) -> int:
    if not _NUMBER.fullmatch(value):
        raise PacketError(f"invalid packet ({key.decode()} is not a decimal number: {value[:24]!r})")
    number = int(value)
    if not -(1 << 63) <= number < _U64:
        raise PacketError(f"invalid packet ({key.decode()} does not fit in 64 bits)")
    return number


def decode(data: bytes, cipher: LegionCipher, max_size: int = MAX_DATAGRAM) -> Announcement:
    """Steps 1-5 of §7.5 plus field validation; raises PacketError naming the rejection."""
    if len(data) < 4:
        raise PacketError(f"invalid packet size: {len(data)}")
    if len(data) > max_size:
        raise PacketError(f"invalid packet size: {len(data)} (more than {max_size})")
    if data[0] != MODIFIER1:
        raise PacketError(f"invalid modifier1 ({data[0]})")
    (pktsize,) = struct.unpack_from("<H", data, 1)
    try:
        body = cipher.decrypt(data[4:])
    except ValueError as exc:
        raise PacketError(f"EVP_DecryptFinal_ex() failed (wrong cipher or secret?): {exc}") from None
    if len(body) != pktsize:
        raise PacketError(f"invalid packet size (header says {pktsize}, decrypted {len(body)})")

    fields: dict[bytes, bytes] = {}
    for key, value in parse_items(body):
        fields[key] = value         # last one wins, as uWSGI's hook overwrites

    def number(key: bytes) -> int:
        return _parse_number(key, fields[key]) if key in fields else 0

    def uuid(key: bytes) -> bytes:
        value = fields.get(key, b"")
        return value if len(value) == UUID_LEN else NO_UUID

    valor = number(b"valor")
    if valor < 0:
        raise PacketError(f"invalid packet (negative valor {valor})")
    name = fields.get(b"name", b"")
    if not name:
        raise PacketError("invalid packet (empty node name)")
    scroll = fields.get(b"scroll")
    return Announcement(
        legion=fields.get(b"legion", b"").decode("utf-8", "surrogateescape"),
        valor=valor,
        unix=number(b"unix"),
        lord=number(b"lord"),
        name=name.decode("utf-8", "surrogateescape"),
        pid=number(b"pid"),
        uuid=uuid(b"uuid"),
        checksum=number(b"checksum") % _U64,
        lord_valor=number(b"lord_valor") % _U64,
        lord_uuid=uuid(b"lord_uuid"),
        scroll=scroll if scroll else None,
        dead=b"dead" in fields,
    )
