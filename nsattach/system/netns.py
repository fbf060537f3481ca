"""The jail's network: loopback up in a new network namespace (uWSGI leaves it down, Q-N6),
an optional veth pair between the host and the jail, and joining a named network namespace.

Everything goes through pyroute2's ``IPRoute`` in the current network namespace (no helper
process is forked, unlike ``NetNS``). The host side is done by the process outside the jail
(the monitor), the jail side by the jailed master *before* it pivots (pyroute2 and the
modules it loads lazily live in site-packages, which the jail does not have).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Callable

from nsattach.config.model import VethPlan
from nsattach.errors import SetupError


class NetworkError(SetupError):
    pass


def _fail(step: str, obj: str, exc: BaseException, hint: str = "") -> NetworkError:
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    if isinstance(code, int) and code > 0:
        import errno as errno_mod

        reason = f"{os.strerror(code)} [{errno_mod.errorcode.get(code, code)}]"
    else:
        reason = str(exc)
    return NetworkError(f"network: {step} {obj}: {reason}" + (f" -- {hint}" if hint else ""))


def _iproute():
    from pyroute2 import IPRoute

    return IPRoute()


def _index(ipr, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetworkError(f"network: interface {ifname} not found in this network namespace")
    return found[0]


def loopback_up(log: Callable[..., None] | None = None) -> None:
    """Bring ``lo`` up in the current network namespace."""
    try:
        with _iproute() as ipr:
            ipr.link("set", index=_index(ipr, "lo"), state="up")
    except NetworkError:
        raise
    except Exception as exc:
        raise _fail("bring up", "lo", exc) from None
    if log:
        log("network: loopback is up")


def create_veth(veth: VethPlan, jail_pid: int, log: Callable[..., None]) -> None:
    """Host side: create the pair, move the jail end into ``jail_pid``'s network namespace,
    give the host end its address and bring it up."""
    try:
        fd = os.open(f"/proc/{jail_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _fail("open the jail's network namespace", f"/proc/{jail_pid}/ns/net", exc) from None
    try:
        with _iproute() as ipr:
            try:
                ipr.link("add", ifname=veth.host_ifname, kind="veth",
                         peer={"ifname": veth.jail_ifname, "net_ns_fd": fd})
            except Exception as exc:
                hint = (f"an interface {veth.host_ifname} already exists on the host: remove it "
                        f"(ip link del {veth.host_ifname}) or pick another name"
                        if getattr(exc, "code", None) == 17 else "nsattach must run as root")
                raise _fail("create veth", f"{veth.host_ifname}:{veth.jail_ifname}", exc, hint) from None
            index = _index(ipr, veth.host_ifname)
            if veth.host_address:
                iface = ipaddress.ip_interface(veth.host_address)
                try:
                    ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                except Exception as exc:
                    raise _fail("add address", f"{veth.host_address} on {veth.host_ifname}", exc) from None
            ipr.link("set", index=index, state="up")
    except NetworkError:
        raise
    except Exception as exc:
        raise _fail("set up", veth.host_ifname, exc) from None
    finally:
        os.close(fd)
    log(f"network: veth {veth.host_ifname} (host{', ' + veth.host_address if veth.host_address else ''}) <-> "
        f"{veth.jail_ifname} (jail)")


def configure_jail_end(veth: VethPlan, log: Callable[..., None]) -> None:
    """Jail side (inside the jail's network namespace): address, up, default route."""
    try:
        with _iproute() as ipr:
            index = _index(ipr, veth.jail_ifname)
            if veth.jail_address:
                iface = ipaddress.ip_interface(veth.jail_address)
                try:
                    ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                except Exception as exc:
                    raise _fail("add address", f"{veth.jail_address} on {veth.jail_ifname}", exc) from None
            ipr.link("set", index=index, state="up")
            if veth.gateway:
                try:
                    ipr.route("add", dst="default", gateway=veth.gateway)
                except Exception as exc:
                    raise _fail("add default route", f"via {veth.gateway}", exc,
                                "the gateway must be reachable through the jail end's address") from None
    except NetworkError:
        raise
    except Exception as exc:
        raise _fail("configure", veth.jail_ifname, exc) from None
    log(f"network: {veth.jail_ifname} is up{' with ' + veth.jail_address if veth.jail_address else ''}"
        f"{', default route via ' + veth.gateway if veth.gateway else ''}")


def delete_link(ifname: str) -> bool:
    """Remove an interface if it is (still) there; True when one was removed."""
    try:
        with _iproute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return False
            ipr.link("del", index=found[0])
            return True
    except Exception as exc:
        if getattr(exc, "code", None) == 19:      # ENODEV: gone meanwhile (with the jail's netns)
            return False
        raise _fail("delete", ifname, exc) from None


def preload() -> None:
    """Import what pyroute2 loads lazily for the calls above (before a pivot_root)."""
    from pyroute2 import IPRoute  # noqa: F401
    try:
        with _iproute() as ipr:
            ipr.link_lookup(ifname="lo")
    except Exception:
        pass
