"""Decisions about reachability behind NAT, as pure functions (the I/O is in :mod:`.nat`).

A node learns whether others can dial it by asking peers to dial it back (AutoNAT): any peer that
reached it makes it *public*; peers that all failed make it *private*. A private node reserves a slot on
up to :data:`WANTED_RELAYS` relays and announces ``<relay>/p2p-circuit/p2p/<self>`` addresses, so
peers reach it through a relay and then try a direct connection (DCUtR hole punching).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping

from .addresses import AddressSlots

WANTED_RELAYS = 2
#: a relay's reservations per address and per subnet (/24 for IPv4, /48 for IPv6): identities are free,
#: addresses are not, so a few hosts cannot hold every slot (128 in all, nat.RELAY_LIMITS)
RESERVATIONS_PER_IP = 4
RESERVATIONS_PER_SUBNET = 8
#: a verdict is forgotten after this long (a laptop moves between networks)
VERDICT_TTL_S = 30 * 60.0


def judge(verdicts: Mapping[str, tuple[bool, float]], now: float, ttl: float = VERDICT_TTL_S) -> str:
    """public / private / unknown from the peers' recent dial-back verdicts (server -> (reached, when)).

    Public needs two servers that reached us (one, when only one ever answered): a single lying
    server cannot make a node behind NAT skip its relay. Private needs every recent verdict to be a
    failure: a server lying "unreachable" cannot hide a public node behind a relay either. Mixed
    verdicts with one success stay unknown until another server answers."""
    recent = [ok for ok, t in verdicts.values() if now - t <= ttl]
    if not recent:
        return "unknown"
    reached = sum(recent)
    if reached >= min(2, len(recent)):
        return "public"
    return "private" if reached == 0 else "unknown"


def _ip_of(addr: str) -> str | None:
    parts = addr.split("/")
    for i, p in enumerate(parts[:-1]):
        if p in ("ip4", "ip6"):
            return parts[i + 1]
    return None


def _tcp_port(addr: str) -> int | None:
    parts = addr.split("/")
    for i, p in enumerate(parts[:-1]):
        if p == "tcp":
            try:
                return int(parts[i + 1])
            except ValueError:
                return None
    return None


def is_loopback_only(addrs: Iterable[str]) -> bool:
    """Whether a node listens only on loopback (nothing outside this machine could dial it)."""
    ips = [_ip_of(a) for a in addrs if "/p2p-circuit" not in a]
    ips = [ip for ip in ips if ip]
    try:
        return bool(ips) and all(ipaddress.ip_address(ip).is_loopback for ip in ips)
    except ValueError:
        return False


def dial_back_claims(listen: Iterable[str], observed: Iterable[str]) -> list[str]:
    """Addresses to ask a peer to dial back: each listen address, and each IP peers observed us at
    with each listen port (behind a port-preserving NAT or a forwarded port, that is where we are)."""
    listen = [a for a in listen if "/p2p-circuit" not in a]
    ports = sorted({p for a in listen if (p := _tcp_port(a))})
    out: list[str] = []
    for a in listen:
        ip = _ip_of(a)
        if ip and ":" not in ip and not ipaddress.ip_address(ip).is_unspecified:
            out.append(f"/ip4/{ip}/tcp/{_tcp_port(a)}")
    for o in observed:
        ip = _ip_of(o)
        if not ip or ":" in ip:
            continue
        for port in ports:
            out.append(f"/ip4/{ip}/tcp/{port}")
    return list(dict.fromkeys(out))[:8]


def relay_dial_addr(addrs: Iterable[str], connected_ip: str | None = None) -> str | None:
    """The address of a relay to build circuit addresses on: one on the IP this node reached it at (what
    the relay advertises may be a LAN or container address, or someone else's), else a non-loopback
    one (a circuit through 127.0.0.1 only works on the relay's own machine)."""
    direct = [a.split("/p2p/")[0] for a in addrs if "/p2p-circuit" not in a and _ip_of(a)]
    if not direct:
        return None
    if connected_ip:
        same = [a for a in direct if _ip_of(a) == connected_ip]
        if same:
            return same[0]
        # it advertises another address (e.g. a LAN one behind a forwarded port): the IP we reached, its port
        ip_kind = "ip6" if ":" in connected_ip else "ip4"
        return f"/{ip_kind}/{connected_ip}/tcp/{_tcp_port(direct[0])}"
    outside = [a for a in direct if not ipaddress.ip_address(_ip_of(a) or "0.0.0.0").is_loopback]
    return (outside or direct)[0]


def circuit_addr(relay_addr: str, relay_id: str, me: str) -> str:
    return f"{relay_addr}/p2p/{relay_id}/p2p-circuit/p2p/{me}"


def relays_to_reserve(status: str, offering: Iterable[str], reserved: Iterable[str],
                      failed: Mapping[str, float], now: float, want: int = WANTED_RELAYS,
                      retry_s: float = 120.0, seed: str = "") -> list[str]:
    """Which connected relay-offering peers to reserve a slot on now: only when private, up to `want`
    in all, skipping peers that refused us less than `retry_s` ago."""
    if status != "private":
        return []
    have = set(reserved)
    free = want - len(have)
    if free <= 0:
        return []
    # in a seeded-random order, not by peer id: an attacker grinding a low id must not become everyone's relay
    rng = random.Random(f"{seed}:{now // retry_s}")
    pool = [p for p in sorted(offering) if p not in have and now - failed.get(p, -1e18) >= retry_s]
    rng.shuffle(pool)
    return pool[:free]


def reservation_refusal(ip: str | None, held: Iterable[str | None], per_ip: int = RESERVATIONS_PER_IP,
                        per_subnet: int = RESERVATIONS_PER_SUBNET) -> str | None:
    """Why a relay refuses a new reservation from `ip`, given the addresses its reservations were made
    from (`held`), or None. An unknown address (a relayed connection) counts as one address of its own.
    No address is exempt here (127.0.0.1 included): a relay serves other machines."""
    return AddressSlots.holding(held, per_ip, per_subnet, exempt=frozenset()).refusal(ip)
