"""Slots per address and per subnet, as a pure rule: identities are free, addresses are not.

A peer id costs nothing to make, so limits per peer stop one identity, not one attacker: seventeen
identities on one host each holding their two KAD and two object streams took every slot of a node
(an honest newcomer got 2-3 of 40 FIND_NODE answers and 11-13 of 40 object fetches). Counting what
each address and each subnet (/24 for IPv4, /48 for IPv6, as go-libp2p's resource manager and its
routing table do) holds bounds what a few hosts can take, whatever number of identities they use.

Exempt: 127.0.0.1 and ::1, the address every process of this machine connects from. A simulation
runs 35 daemons there, each of which must be able to fetch from the others at once; a process on the
node's own machine is not the remote stranger these limits are for. Other loopback addresses
(127.0.0.2 and up) count like any other address, which is how the tests play hosts on one machine.
The machines of one's own cluster can be exempt the same way (`network.exempt_addresses`, `exempt_set`):
a simulation of 500 daemons on 20 machines puts 25 of them behind each address and every machine in one
/24, and the limits would keep each daemon to a handful of its swarm. (The DHT routing table's subnet
rule is py-libp2p's, which exempts private addresses and not these: docs/simulation.md.)
A connection whose address the transport does not give counts as the address "?", one slot holder of
its own. A relayed connection gives the relay's address, which every peer behind that relay shares:
the callers leave relayed connections out of these counts (per-peer and total limits still apply).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

EXEMPT = frozenset({"127.0.0.1", "::1"})


def exempt_set(extra: Iterable[str] = ()) -> frozenset[str]:
    """EXEMPT and the configured addresses (`network.exempt_addresses`: machines of one's own cluster),
    each as `key_of` compares it; raises ValueError for one that is not an IP address."""
    out = set(EXEMPT)
    for ip in extra:
        try:
            out.add(str(ipaddress.ip_address(_plain(str(ip).strip()))))
        except ValueError:
            raise ValueError(f"not an IP address: {ip!r}") from None
    return frozenset(out)


def _plain(ip: str) -> str:
    """An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, what a dual-stack listener sees) as its IPv4."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    mapped = getattr(a, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else str(a)


def subnet_of(ip: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) an address is in; an unparsable one is its own subnet."""
    try:
        a = ipaddress.ip_address(_plain(ip))
    except ValueError:
        return ip
    return str(ipaddress.ip_network(f"{a}/{24 if a.version == 4 else 48}", strict=False))


def remote_ip(conn: Any) -> str | None:
    """The address a stream's or a raw connection's other end is at (None where the transport does
    not say)."""
    try:
        addr = conn.get_remote_address()
    except Exception:  # noqa: BLE001 - a transport without the method, or a closed one
        return None
    return str(addr[0]) if addr else None


def key_of(ip: str | None, exempt: frozenset[str] = EXEMPT) -> str | None:
    """The address a slot is counted under, or None where it is exempt."""
    if ip is None:
        return "?"
    ip = _plain(ip)
    return None if ip in exempt else ip


@dataclass
class AddressSlots:
    """What each address and subnet holds of one kind of slot (a protocol's streams, inbound
    connections, a relay's reservations). `take` says why a new one is refused, or takes it; `give_back`
    returns it. `holding` counts what is held now, for a caller that knows it (a swarm's live
    connections, a relay's reservations) and asks only `refusal`."""

    per_address: int
    per_subnet: int
    exempt: frozenset[str] = EXEMPT
    by_address: Counter[str] = field(default_factory=Counter)
    by_subnet: Counter[str] = field(default_factory=Counter)
    refused: int = 0

    @classmethod
    def holding(cls, held: Iterable[str | None], per_address: int, per_subnet: int,
                exempt: frozenset[str] = EXEMPT) -> AddressSlots:
        slots = cls(per_address, per_subnet, exempt)
        for ip in held:
            slots._hold(key_of(ip, exempt))
        return slots

    def _hold(self, key: str | None) -> None:
        if key is not None:
            self.by_address[key] += 1
            self.by_subnet[subnet_of(key)] += 1

    def refusal(self, ip: str | None) -> str | None:
        key = key_of(ip, self.exempt)
        if key is None:
            return None
        if self.by_address[key] >= self.per_address:
            return f"{self.by_address[key]} held from {key} already (at most {self.per_address} per address)"
        net = subnet_of(key)
        if self.by_subnet[net] >= self.per_subnet:
            return f"{self.by_subnet[net]} held from {net} already (at most {self.per_subnet} per subnet)"
        return None

    def take(self, ip: str | None) -> str | None:
        """Take a slot for `ip` (None returned), or the reason it is refused (nothing taken)."""
        why = self.refusal(ip)
        if why is not None:
            self.refused += 1
            return why
        self._hold(key_of(ip, self.exempt))
        return None

    def give_back(self, ip: str | None) -> None:
        key = key_of(ip, self.exempt)
        if key is None:
            return
        net = subnet_of(key)
        for counter, k in ((self.by_address, key), (self.by_subnet, net)):
            counter[k] -= 1
            if counter[k] <= 0:
                del counter[k]


def yielding_subnet(held: dict[str, int], subnet: str) -> str | None:
    """The subnet that gives up a slot of a full protocol to a stream from `subnet`, if any: the one
    holding the most, where that is at least two more than `subnet` holds (`held`: slots by subnet).

    The limits per address and per subnet bound what a few hosts take, not what a few subnets take: an
    attacker with addresses in four /24s held every KAD slot and every object slot, and a stream from a
    fifth subnet was refused while the protocol was full. With this rule a stream from a subnet holding
    fewer slots takes the oldest slot of the subnet holding the most, so filling a protocol against a
    newcomer takes as many subnets as the protocol has slots (32 for KAD, 16 for objects). "At least two
    more" keeps the shares from swapping back and forth: after the move the two differ by no more than
    before, in the same direction, and two subnets holding equal shares never take slots from each other."""
    if not held:
        return None
    top = max(held, key=lambda net: (held[net], net))
    return top if top != subnet and held[top] >= held.get(subnet, 0) + 2 else None

