"""Reachability decisions (pure): AutoNAT verdicts, dial-back claims, relay choice, relay addresses; and
the timing of NatTraversal's dials and AutoNAT rounds, in virtual time."""

from __future__ import annotations

import pytest
from net_helpers import new_peer_id

from p2p_research.net.reachability import (
    circuit_addr,
    dial_back_claims,
    is_loopback_only,
    judge,
    relay_dial_addr,
    relays_to_reserve,
)


def test_judge_needs_two_servers_for_public_and_all_failures_for_private():
    now = 1000.0
    assert judge({}, now) == "unknown"
    assert judge({"a": (True, now)}, now) == "public"                      # the only server that answered
    assert judge({"a": (True, now), "b": (False, now)}, now) == "unknown"   # one liar cannot decide
    assert judge({"a": (True, now), "b": (True, now), "c": (False, now)}, now) == "public"
    assert judge({"a": (False, now), "b": (False, now)}, now) == "private"
    assert judge({"a": (True, now - 4000), "b": (False, now)}, now) == "private"  # old verdicts expire


def test_dial_back_claims_pair_observed_ips_with_listen_ports():
    claims = dial_back_claims(["/ip4/192.168.1.2/tcp/4001", "/ip4/0.0.0.0/tcp/4001"],
                              ["/ip4/10.77.0.11/tcp/53312", "/ip6/::1/tcp/1"])
    assert claims == ["/ip4/192.168.1.2/tcp/4001", "/ip4/10.77.0.11/tcp/4001"]
    assert is_loopback_only(["/ip4/127.0.0.1/tcp/1"]) and not is_loopback_only(["/ip4/10.0.0.1/tcp/1"])


def test_relays_are_chosen_only_when_private_in_a_random_order_without_recent_refusals():
    offering = [f"12D3KooW{c}" for c in "ABCDEFGH"]
    assert relays_to_reserve("public", offering, [], {}, 0.0) == []
    chosen = relays_to_reserve("private", offering, [], {}, 0.0, seed="me")
    assert len(chosen) == 2 and set(chosen) <= set(offering)
    picks = {tuple(relays_to_reserve("private", offering, [], {}, 0.0, seed=f"node{i}")) for i in range(20)}
    assert len(picks) > 3            # not everyone's relay is the peer with the lowest id
    assert relays_to_reserve("private", offering, offering[:2], {}, 0.0) == []
    assert relays_to_reserve("private", offering[:1], [], {offering[0]: 50.0}, 100.0) == []       # refused lately
    assert relays_to_reserve("private", offering[:1], [], {offering[0]: 50.0}, 500.0) == offering[:1]


def test_relay_addresses_follow_the_connection_not_only_what_the_relay_advertises():
    advertised = ["/ip4/127.0.0.1/tcp/4001/p2p/R", "/ip4/172.17.0.2/tcp/4001/p2p/R", "/ip4/10.77.0.1/tcp/4001/p2p/R"]
    assert relay_dial_addr(advertised) == "/ip4/172.17.0.2/tcp/4001"          # first non-loopback
    assert relay_dial_addr(advertised, "10.77.0.1") == "/ip4/10.77.0.1/tcp/4001"
    assert relay_dial_addr(["/ip4/192.168.0.5/tcp/4001"], "203.0.113.9") == "/ip4/203.0.113.9/tcp/4001"
    assert relay_dial_addr(["/ip4/10.77.0.1/tcp/4001/p2p/R/p2p-circuit/p2p/X"]) is None
    assert circuit_addr("/ip4/10.77.0.1/tcp/4001", "R", "X") == "/ip4/10.77.0.1/tcp/4001/p2p/R/p2p-circuit/p2p/X"


def test_a_peer_still_relayed_after_dcutr_spent_its_attempts_gets_new_ones_later():
    from p2p_research.net.nat import DCUTR_RETRY_S, punch_again

    since = {"a": 0.0, "b": 0.0, "c": 50.0, "d": 0.0}
    attempts = {"a": 3, "b": 2, "c": 3}  # d: never tried (DCUtR's own loop will)
    assert punch_again(since, attempts, DCUTR_RETRY_S) == ["a"]          # spent, and relayed for a minute
    assert punch_again(since, attempts, DCUTR_RETRY_S + 50.0) == ["a", "c"]
    assert punch_again({}, attempts, 1e9) == []                          # upgraded or gone: nothing to retry


def test_a_relay_refuses_reservations_beyond_its_bounds_per_address_and_subnet():
    from p2p_research.net.addresses import subnet_of
    from p2p_research.net.reachability import reservation_refusal

    assert subnet_of("10.1.2.3") == "10.1.2.0/24" and subnet_of("2001:db8:1:2::5") == "2001:db8:1::/48"
    assert reservation_refusal("10.1.2.3", []) is None
    assert reservation_refusal("10.1.2.3", ["10.1.2.3"] * 3) is None
    assert "per address" in reservation_refusal("10.1.2.3", ["10.1.2.3"] * 4)
    assert "per subnet" in reservation_refusal("10.1.2.9", ["10.1.2.3"] * 4 + ["10.1.2.4"] * 4)
    assert reservation_refusal("10.1.3.9", ["10.1.2.3"] * 4 + ["10.1.2.4"] * 4) is None
    # IPv6: a /48 is one subnet, however many addresses a host has in it
    held = [f"2001:db8:1:{i}::1" for i in range(8)]
    assert "per subnet" in reservation_refusal("2001:db8:1:ff::1", held)
    assert reservation_refusal("2001:db8:2::1", held) is None
    # an unknown address (a relayed connection) is one address of its own
    assert "per address" in reservation_refusal(None, [None] * 4)


def test_address_slots_bound_an_address_and_a_subnet_and_exempt_this_machine():
    from p2p_research.net.addresses import AddressSlots

    slots = AddressSlots(per_address=2, per_subnet=3)
    assert slots.take("10.0.0.1") is None and slots.take("10.0.0.1") is None
    assert "per address" in slots.take("10.0.0.1")
    assert slots.take("10.0.0.2") is None
    assert "per subnet" in slots.take("10.0.0.3")
    assert slots.take("10.0.1.1") is None                       # another /24
    assert all(slots.take(ip) is None for ip in ["127.0.0.1"] * 50 + ["::1"] * 50)   # this machine
    assert slots.take(None) is None and slots.take(None) is None and slots.take(None) is not None  # relayed: "?"
    slots.give_back("10.0.0.1")
    assert slots.take("10.0.0.3") is None and slots.refused == 3
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.1", None, None, "127.0.0.1"):
        slots.give_back(ip)
    assert not slots.by_address and not slots.by_subnet


def test_a_full_protocol_gives_the_slot_of_the_subnet_holding_most_to_one_holding_two_fewer():
    from p2p_research.net.addresses import yielding_subnet

    four = {"10.0.1.0/24": 8, "10.0.2.0/24": 8, "10.0.3.0/24": 8, "10.0.4.0/24": 8}
    assert yielding_subnet(four, "10.0.9.0/24") in four               # a newcomer takes a slot of one of them
    assert yielding_subnet(four, "10.0.1.0/24") is None                # a subnet as big as the biggest takes none
    assert yielding_subnet({**four, "10.0.1.0/24": 7}, "10.0.1.0/24") is None  # one fewer: no swap back and forth
    assert yielding_subnet({**four, "10.0.1.0/24": 6}, "10.0.1.0/24") in set(four) - {"10.0.1.0/24"}
    assert yielding_subnet({"10.0.1.0/24": 1}, "10.0.9.0/24") is None  # a lone slot holder keeps its slot
    assert yielding_subnet({}, "10.0.9.0/24") is None


def _nat(**kw):
    """A NatTraversal on a real libp2p host that is not listening (its dials and queries are stubbed)."""
    from libp2p import generate_new_ed25519_identity, new_host

    from p2p_research.net.boundary import Faults
    from p2p_research.net.nat import NatTraversal
    from p2p_research.net.streams import StreamGuard

    host = new_host(key_pair=generate_new_ed25519_identity())
    return NatTraversal(host, StreamGuard(host, Faults(), {}), relay_service=False, active=True, **kw)


async def test_autonat_servers_are_asked_side_by_side(autojump_clock):
    """Behind NAT each dial-back waits out its timeout: asked one after another, two servers took twice
    that to say "private" (the NAT test's homes learnt it 9 s after their start)."""
    import trio
    from libp2p.host.autonat.pb.autonat_pb2 import Message as AutoNATMessage
    from libp2p.peer.id import ID

    from p2p_research.net.nat import DIAL_BACK_TIMEOUT_S

    nat = _nat()
    servers = [ID.from_base58(new_peer_id()) for _ in range(2)]
    nat._direct_peers_with = lambda protocol: list(servers)
    in_flight, most, asked = [0], [0], []

    async def query_server(pid, claims, timeout):
        asked.append(pid)
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        await trio.sleep(DIAL_BACK_TIMEOUT_S)  # the server's dial-back of an unreachable address
        in_flight[0] -= 1
        return AutoNATMessage.E_DIAL_ERROR, None

    nat.autonat.query_server = query_server
    async with trio.open_nursery() as nursery:
        nursery.start_soon(nat._autonat_loop)
        t0 = trio.current_time()
        while nat._status != "private":
            await trio.sleep(0.1)
        took = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    assert sorted(map(str, asked)) == sorted(map(str, servers)) and most[0] == 2
    assert took < 2 * DIAL_BACK_TIMEOUT_S  # in virtual time: one timeout, not two in a row


async def test_a_peer_whose_direct_addresses_just_failed_is_dialed_through_its_relay_at_once(autojump_clock):
    """A home heard of before it held a relay slot was dialed at its direct address for the whole
    timeout; dialed again with its relayed address, it got DIRECT_FIRST_S on the silent one first. For
    DIRECT_FAILED_S after that failure, its relays go first."""
    import trio
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo
    from multiaddr import Multiaddr

    from p2p_research.net.nat import DIRECT_FAILED_S, DIRECT_FIRST_S

    nat = _nat()
    home = ID.from_base58(new_peer_id())
    direct = Multiaddr("/ip4/192.168.1.2/tcp/4001")
    relayed = Multiaddr(f"/ip4/10.77.0.1/tcp/4001/p2p/{new_peer_id()}/p2p-circuit")
    tried: list[tuple[str, float]] = []

    async def connect(info):
        tried.append(("direct", trio.current_time()))
        await trio.sleep_forever()  # behind NAT: nothing answers

    async def circuit(addr):
        tried.append(("relayed", trio.current_time()))

    nat.host.connect = connect
    nat._dialer.dial = circuit
    with pytest.raises(trio.TooSlowError):
        await nat.dial(PeerInfo(home, [direct]), timeout=10)
    await nat.dial(PeerInfo(home, [direct, relayed]))
    assert [k for k, _ in tried] == ["direct", "relayed"]  # no second wait on the silent address
    # a relayed address that fails (a peer exchange can hand out a made-up one) does not make a peer
    # that answers at its direct address undialable: after the relays, the direct addresses get their try
    tried.clear()

    async def bad_circuit(addr):
        tried.append(("relayed", trio.current_time()))
        raise ConnectionError("no such relay")

    async def slow_connect(info):
        tried.append(("direct", trio.current_time()))
        await trio.sleep(1)  # it answers, slowly

    nat._dialer.dial, nat.host.connect = bad_circuit, slow_connect
    await nat.dial(PeerInfo(home, [direct, relayed]))
    assert [k for k, _ in tried] == ["relayed", "direct"]
    nat._dialer.dial, nat.host.connect = circuit, connect
    with pytest.raises(trio.TooSlowError):
        await nat.dial(PeerInfo(home, [direct]), timeout=10)  # silent again: its relays go first again
    await trio.sleep(DIRECT_FAILED_S)
    tried.clear()
    await nat.dial(PeerInfo(home, [direct, relayed]))  # long after: its direct addresses get their try again
    assert [k for k, _ in tried] == ["direct", "relayed"] and tried[1][1] - tried[0][1] >= DIRECT_FIRST_S
