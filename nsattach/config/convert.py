"""Converters for option values: each takes the text and returns a typed value or raises
ValueError with a message that says what is wrong and what would be valid.

They are pure apart from account lookups (``resolve_user``/``resolve_group``), which read the
password and group databases and take them as parameters so tests can pass their own.
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
import signal
from dataclasses import dataclass
from typing import Callable

from nsattach.config.model import Identity

TRUE_WORDS = ("", "1", "true", "yes", "on", "y")
FALSE_WORDS = ("0", "false", "no", "off", "n")


def as_bool(text: str) -> bool:
    """uWSGI booleans: a bare key means true; ``false``/``off``/``no``/``0`` mean false.

    uWSGI takes any other word as true; we refuse it, because ``daemonize = maybe`` is a typo,
    not a decision.
    """
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false, yes/no, on/off, 1/0)")


def as_int(text: str, minimum: int = 0, maximum: int | None = None) -> int:
    word = text.strip()
    try:
        value = int(word, 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise ValueError(f"{value} is too small (must be ≥ {minimum})")
    if maximum is not None and value > maximum:
        raise ValueError(f"{value} is too large (must be ≤ {maximum})")
    return value


def int_range(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    def convert(text: str) -> int:
        return as_int(text, minimum, maximum)

    convert.__name__ = f"int≥{minimum}"
    return convert


def as_str(text: str) -> str:
    return text


def as_nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("a value is required")
    return text


_SIGNAL_NAMES = {s.name: int(s) for s in signal.Signals if not s.name.startswith("SIG_")}
MAX_SIGNAL = int(signal.SIGRTMAX)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def as_signal(text: str) -> int:
    """A signal by name (``TERM``, ``SIGTERM``, any case) or number (1..SIGRTMAX).

    uWSGI's attach-daemon2 takes numbers only and turns ``TERM`` into 0, meaning "never
    signal" (Q-D4); we accept both forms and refuse anything else.
    """
    word = text.strip()
    if word.isdigit():
        number = int(word)
        if 1 <= number <= MAX_SIGNAL:
            return number
        raise ValueError(f"{word} is not a signal number (1..{MAX_SIGNAL})")
    name = word.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name in _SIGNAL_NAMES:
        return _SIGNAL_NAMES[name]
    raise ValueError(f"{text!r} is not a signal (use a name like TERM, SIGHUP, QUIT or a number)")


# --- accounts -------------------------------------------------------------------------

@dataclass(frozen=True)
class Accounts:
    """The account databases; a seam so tests and the jail can supply their own."""

    getpwnam: Callable[[str], pwd.struct_passwd] = pwd.getpwnam
    getpwuid: Callable[[int], pwd.struct_passwd] = pwd.getpwuid
    getgrnam: Callable[[str], grp.struct_group] = grp.getgrnam
    getgrgid: Callable[[int], grp.struct_group] = grp.getgrgid


SYSTEM_ACCOUNTS = Accounts()


def resolve_identity(user: str | None, group: str | None, accounts: Accounts = SYSTEM_ACCOUNTS) -> Identity:
    """Turn ``uid``/``gid`` texts (names or numbers) into an Identity, or raise ValueError.

    Fixes uWSGI's silent root (Q-D4): a name that does not resolve is an error, never 0.
    With a user and no group, the group is the user's primary group, so a uid drop never
    leaves the process in root's group; a numeric uid that has no passwd entry therefore
    needs an explicit gid.
    """
    uid = gid = None
    name = home = None
    if user is not None:
        text = user.strip()
        if not text:
            raise ValueError("uid: empty value (give a user name or a numeric uid)")
        if text.isdigit():
            uid = int(text)
            try:
                entry = accounts.getpwuid(uid)
            except KeyError:
                entry = None
        else:
            try:
                entry = accounts.getpwnam(text)
            except KeyError:
                raise ValueError(f"uid: user {text!r} not found (give a name from the passwd database or a numeric uid)") from None
            uid = entry.pw_uid
        if entry is not None:
            name, home = entry.pw_name, entry.pw_dir
            gid = entry.pw_gid
    if group is not None:
        text = group.strip()
        if not text:
            raise ValueError("gid: empty value (give a group name or a numeric gid)")
        if text.isdigit():
            gid = int(text)
        else:
            try:
                gid = accounts.getgrnam(text).gr_gid
            except KeyError:
                raise ValueError(f"gid: group {text!r} not found (give a name from the group database or a numeric gid)") from None
    if uid is not None and gid is None:
        raise ValueError(f"uid {uid} has no passwd entry, so its group is unknown: give gid= as well")
    return Identity(uid=uid, gid=gid, user=name, home=home)


# --- addresses ------------------------------------------------------------------------

def as_udp_address(text: str) -> tuple[str, int]:
    """``ip:port`` or ``:port`` (IPv4, numeric: uWSGI does no DNS lookup here)."""
    word = text.strip()
    host, sep, port_text = word.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is not an ip:port address (unix sockets cannot carry legion traffic)")
    try:
        port = as_int(port_text, 1, 65535)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number in 1..65535") from None
    host = host or "0.0.0.0"
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not a numeric IPv4 address") from None
    return host, port


# --- uWSGI's key=value lists (attach-daemon2) --------------------------------------------

def split_escaped(text: str, separator: str) -> list[str]:
    """Split on unescaped ``separator``; a backslash escapes the next character (and is removed)."""
    items, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == separator:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if escaped:
        current.append("\\")
    items.append("".join(current))
    return items


def parse_kvlist(text: str) -> list[tuple[str, str | None]]:
    """uWSGI's ``key=value,key=value`` list: ``\\,`` is a literal comma, the key ends at the
    first ``=``, the value may hold more ``=``. Keys are stripped (uWSGI does not strip, so
    ``cmd=x, pidfile=y`` silently loses the pidfile there). A bare ``key`` gives value None.
    Empty items are skipped.
    """
    pairs: list[tuple[str, str | None]] = []
    for item in split_escaped(text, ","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        pairs.append((key.strip(), value if sep else None))
    return pairs


def split_touch_list(text: str) -> list[str]:
    """``touch=`` files: ``;``-separated, with '…', "…" and backslash quoting; empty items dropped."""
    items, current, quote, escaped = [], [], None, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quote:
            if ch == quote:
                quote = None
            else:
                current.append(ch)
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return [i.strip() for i in items if i.strip()]
