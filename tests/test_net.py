"""Net layer with real libp2p hosts on loopback (in-process, pytest-trio)."""

from __future__ import annotations

import socket

import multiaddr
import pytest
import trio
import trio.lowlevel
from libp2p import generate_new_ed25519_identity, new_host
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from net_helpers import blob, cfg, claim, new_peer_id, pid_of, post, recv, result, wait_mesh, wait_until

from p2p_research.net import TransferError, open_network
from p2p_research.wire import Claim, Result, WireError


def NO_OBJECTS(oid):
    """An object source that has nothing."""
    return None


async def assert_no_more(net, wait: float = 1.5) -> None:
    with trio.move_on_after(wait):
        extra = await net.incoming.receive()
        pytest.fail(f"unexpected extra message: {extra}")


async def test_publish_each_type_received_exactly_once():
    async with open_network(cfg(), NO_OBJECTS) as a, open_network(cfg(bootstrap=a.addrs()), NO_OBJECTS) as b:
        await wait_mesh(a, b)
        objs = [blob(b"print('hello')\n"), blob(b"x = 1\n")]
        sent = [claim(a.peer_id), result(_kp(a), objects=objs), post(a.peer_id, "## findings\n- lr 0.02 is better")]
        for m in sent:
            await a.publish(m)
        got = [await recv(b) for _ in sent]
        assert sorted(g.message.TYPE for g in got) == sorted(m.TYPE for m in sent)
        for g in got:
            assert g.from_peer == a.peer_id
            assert g.message in sent
        res = next(g.message for g in got if isinstance(g.message, Result))
        for o in res.objects:
            o.verify()
        # the same bytes published again (new gossip seqno) are deduplicated, not redelivered
        await a.publish(sent[0])
        await assert_no_more(b)
        await assert_no_more(a, 0.2)  # own messages never come back
        assert a.stats["published"] == 4
        assert b.stats["received"] == 3
        assert b.stats["duplicate"] == 1
        assert not b.stats["rejected"]


def _kp(net):
    from libp2p.crypto.keys import KeyPair

    return KeyPair(net.host.get_private_key(), net.host.get_public_key())


async def test_publish_refuses_what_peers_would_reject():
    async with open_network(cfg(), NO_OBJECTS) as a:
        other = pid_of(generate_new_ed25519_identity())
        with pytest.raises(WireError, match="not this node"):
            await a.publish(claim(other))
        forged = result(generate_new_ed25519_identity())
        bad = Result(forged.receipt, forged.signature[:-1] + bytes([forged.signature[-1] ^ 1]), forged.public_key)
        with pytest.raises(WireError, match="signature"):
            await a.publish(bad)
        with pytest.raises(WireError):
            await a.publish(Claim("zz", "b" * 16, "c" * 40, a.peer_id, 1.0, "", 1.0))
        assert a.stats["published"] == 0


async def test_fetch_objects_verified_and_liar_rejected():
    objs = {o.oid: o for o in (blob(b"a" * 10), blob(b"b" * 300_000), blob(b""))}
    store = {oid: (o.kind, o.data) for oid, o in objs.items()}
    missing = "f" * 40
    async with open_network(cfg(), store.get) as a, open_network(cfg(bootstrap=a.addrs()), NO_OBJECTS) as b:
        await wait_until(lambda: ID.from_base58(a.peer_id) in b.host.get_connected_peers())
        got = await b.fetch_objects(a.peer_id, [*objs, missing])
        assert [g.oid for g in got] == list(objs)
        for g in got:
            g.verify()
            assert g == objs[g.oid]
        assert await b.fetch_objects(a.peer_id, []) == []
        with pytest.raises(ValueError):
            await b.fetch_objects(a.peer_id, ["nothex"])

    # a lying source: right id, wrong bytes
    first = next(iter(objs))

    def liar(oid):
        return (3, b"not what you asked for") if oid == first else None

    async with open_network(cfg(), liar) as a, open_network(cfg(bootstrap=a.addrs()), NO_OBJECTS) as b:
        await wait_until(lambda: ID.from_base58(a.peer_id) in b.host.get_connected_peers())
        with pytest.raises(TransferError, match="wrong content"):
            await b.fetch_objects(a.peer_id, [first])


async def test_async_and_failing_object_sources():
    o = blob(b"async")

    async def source(oid):
        await trio.lowlevel.checkpoint()
        if oid == o.oid:
            return (o.kind, o.data)
        raise RuntimeError("disk on fire")

    async with open_network(cfg(), source) as a, open_network(cfg(bootstrap=a.addrs()), NO_OBJECTS) as b:
        await wait_until(lambda: ID.from_base58(a.peer_id) in b.host.get_connected_peers())
        got = await b.fetch_objects(a.peer_id, ["e" * 40, o.oid])
        assert got == [o]


async def test_plaintext_dialer_refused():
    async with open_network(cfg(), NO_OBJECTS) as a:
        kp = generate_new_ed25519_identity()
        plain = new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)})
        async with plain.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                with pytest.raises(Exception):  # noqa: B017 - any refusal will do
                    with trio.fail_after(10):
                        await plain.connect(info_from_p2p_addr(multiaddr.Multiaddr(a.addrs()[0])))
                assert ID.from_base58(a.peer_id) not in plain.get_connected_peers()
            finally:
                await plain.close()


@pytest.mark.parametrize(
    "addr",
    [
        "not-a-multiaddr",
        "/ip4/127.0.0.1/tcp/4001",  # no /p2p/
        "/ip4/127.0.0.1/tcp/4001/p2p/notapeerid",
        "/ip4/999.0.0.1/tcp/4001/p2p/12D3KooWMvbCU5NdwVJEJzKQXAjYSBSGpk92faV4Pf6XzEKhkSqR",
        "/p2p/12D3KooWMvbCU5NdwVJEJzKQXAjYSBSGpk92faV4Pf6XzEKhkSqR",
        "",
    ],
)
async def test_malformed_bootstrap_raises_value_error(addr):
    started = False
    with pytest.raises(ValueError, match="bootstrap address"):
        async with open_network(cfg(bootstrap=[addr]), NO_OBJECTS):
            started = True
    assert not started


async def test_bad_config_raises_value_error():
    with pytest.raises(ValueError, match="swarm id"):
        async with open_network(cfg().__class__(**{**cfg().__dict__, "swarm_id": "Not hex!"}), NO_OBJECTS):
            pass
    with pytest.raises(ValueError, match="listen"):
        async with open_network(cfg().__class__(**{**cfg().__dict__, "listen": ["/ip4/127.0.0.1/udp/1"]}), NO_OBJECTS):
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_bootstrap_keeps_running_and_retries():
    ghost = pid_of(generate_new_ed25519_identity())
    port = _free_port()
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{ghost}"
    async with open_network(cfg(bootstrap=[addr]), NO_OBJECTS) as a:
        await trio.sleep(1.5)
        assert a.peers() == []
        # it still serves others
        async with open_network(cfg(bootstrap=a.addrs()), NO_OBJECTS) as b:
            await wait_mesh(a, b)
            await b.publish(claim(b.peer_id))
            assert (await recv(a)).from_peer == b.peer_id


async def test_peer_exchange_grows_beyond_a_star():
    async with open_network(cfg(), NO_OBJECTS) as a:
        async with open_network(cfg(bootstrap=a.addrs()), NO_OBJECTS) as b:
            async with open_network(cfg(bootstrap=a.addrs()), NO_OBJECTS) as c:
                b_id = ID.from_base58(b.peer_id)
                await wait_until(lambda: b_id in c.host.get_connected_peers(), timeout=20)
                await wait_until(lambda: len(c.peers()) == 2, timeout=5)
                # addresses of an inbound peer arrive with identify / its exchange announcement
                await wait_until(lambda: all(p.addrs for p in c.peers()), timeout=5)
                states = {p.peer_id: p for p in c.peers()}
                assert states[a.peer_id].bootstrap and states[a.peer_id].direction == "outbound"
                assert not states[b.peer_id].bootstrap
                assert all(s.addrs and s.addrs[0].endswith("/p2p/" + s.peer_id) for s in states.values())
                assert states[a.peer_id].name.count("-") == 2
                await wait_until(lambda: all(p.latency_ms is not None for p in c.peers()), timeout=5)
                assert all(0 < p.latency_ms < 1000 for p in c.peers())


async def test_bootstrap_reconnects_after_drop():
    async with open_network(cfg(), NO_OBJECTS) as a, open_network(cfg(bootstrap=a.addrs()), NO_OBJECTS) as b:
        a_id = ID.from_base58(a.peer_id)
        await wait_until(lambda: a_id in b.host.get_connected_peers())
        await b.host.disconnect(a_id)
        await wait_until(lambda: a_id not in b.host.get_connected_peers(), timeout=5)
        await wait_until(lambda: a_id in b.host.get_connected_peers(), timeout=15)


async def test_results_wait_for_the_next_claim_and_travel_in_one_bundle():
    """A result is held (up to batch_wait_s) and leaves with the sender's next claim: one gossip message."""
    async with open_network(cfg(batch_wait_s=30.0), lambda oid: None) as a, \
            open_network(cfg(bootstrap=a.addrs()), lambda oid: None) as b:  # fmt: skip
        await wait_mesh(a, b)
        before = a.stats["published"]
        await a.publish(result(generate_new_ed25519_identity()))
        await trio.sleep(0.3)
        assert b.stats["received"] == 0 and a.stats["published"] == before  # still in the outbox
        await a.publish(claim(a.peer_id, exp="c" * 40))
        got = [await recv(b), await recv(b)]
        assert [type(g.message).__name__ for g in got] == ["Result", "Claim"]
        assert a.stats["published"] == before + 1 and a.stats["bundled"] == 2


async def test_a_lone_result_leaves_after_batch_wait():
    async with open_network(cfg(batch_wait_s=0.5), lambda oid: None) as a, \
            open_network(cfg(bootstrap=a.addrs()), lambda oid: None) as b:  # fmt: skip
        await wait_mesh(a, b)
        await a.publish(result(generate_new_ed25519_identity()))
        got = await recv(b, timeout=10)
        assert type(got.message).__name__ == "Result"
        assert "bundled" not in a.stats


def bare_peer_manager():
    """A PeerManager whose host only says who it is: enough for its candidate book (no network)."""
    from libp2p.peer.id import ID

    from p2p_research.net.peers import PeerManager

    class Host:
        me = ID.from_base58(new_peer_id())

        def get_id(self):
            return self.me

    return PeerManager(host=Host(), bootstrap=[])


def test_candidates_behind_one_relay_or_under_one_domain_count_as_one_subnet():
    """Peer exchange's candidates (net/peers.py): a hundred made-up identities behind one relay, or a
    hundred names under one wildcard domain, keep CANDIDATES_PER_SUBNET places each and push no honest
    address out; a relay on 127.0.0.1 (a local simulation) stays exempt."""
    from p2p_research.net.peers import CANDIDATES_PER_SUBNET

    pm = bare_peer_manager()
    relay = new_peer_id()
    honest = [f"/ip4/10.9.{i}.1/tcp/4001/p2p/{new_peer_id()}" for i in range(5)]
    for a in honest[:2]:
        pm._add_candidate(a)
    for i in range(100):
        pm._add_candidate(f"/ip4/10.1.2.3/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{new_peer_id()}")
        pm._add_candidate(f"/dns4/n{i}.evil.example/tcp/4001/p2p/{new_peer_id()}")
    for a in honest[2:]:
        pm._add_candidate(a)
    groups = [c.subnet for c in pm._candidates.values()]
    assert groups.count("relay:10.1.2.0/24") == CANDIDATES_PER_SUBNET
    assert groups.count("dns:evil.example") == CANDIDATES_PER_SUBNET
    assert all(any(str(c.info.addrs[0]) in a for c in pm._candidates.values()) for a in honest)
    assert pm.subnet_refusals == 2 * (100 - CANDIDATES_PER_SUBNET)
    for _ in range(20):
        pm._add_candidate(f"/ip4/127.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{new_peer_id()}")
    assert sum(c.subnet is None for c in pm._candidates.values()) == 20


def test_relayed_connections_count_in_their_relay_s_subnet():
    """A relayed connection counts against CONNECTIONS_PER_SUBNET in its relay's subnet, as its candidate
    did (before, relayed connections were not counted, so identities behind one relay could take every
    connection the node makes over a few dialing rounds); a relay on 127.0.0.1 stays exempt."""
    import multiaddr
    import trio

    from p2p_research.net.peers import CONNECTIONS_PER_SUBNET, conn_subnet

    relay = new_peer_id()

    class Conn:
        def __init__(self, addr: str) -> None:
            self.addr = multiaddr.Multiaddr(addr)

        def get_transport_addresses(self):
            return [self.addr]

    behind = [Conn(f"/ip4/10.1.2.3/tcp/4001/p2p/{relay}/p2p-circuit") for _ in range(3)]
    assert {conn_subnet(c) for c in behind} == {"relay:10.1.2.0/24"}
    assert conn_subnet(Conn(f"/ip4/127.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit")) is None

    pm = bare_peer_manager()
    live = {new_peer_id(): [c] for c in behind[:CONNECTIONS_PER_SUBNET]}

    class Network:
        connections = live

    pm.host.get_network = lambda: Network()  # type: ignore[method-assign]
    assert pm._connections_by_subnet()["relay:10.1.2.0/24"] == CONNECTIONS_PER_SUBNET
    dialed = []

    async def dial(info):
        dialed.append(str(info.addrs[0]))

    pm._dial = dial  # type: ignore[method-assign]
    pm.target_peers = 50
    for _ in range(5):
        pm._add_candidate(f"/ip4/10.1.2.3/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{new_peer_id()}")
    honest = f"/ip4/10.9.9.1/tcp/4001/p2p/{new_peer_id()}"
    pm._add_candidate(honest)

    async def dial_round() -> None:
        async with trio.open_nursery() as nursery:
            pm._dial_candidates(nursery)
    trio.run(dial_round)
    assert dialed == ["/ip4/10.9.9.1/tcp/4001"], dialed  # the relay's subnet is full: only the honest candidate is dialed


def test_a_subnet_full_of_dead_candidates_makes_room_for_a_live_one():
    """Made-up addresses in an honest peer's /24 hold that subnet's candidate places only until they fail
    to answer: a full subnet then drops the one that failed most for a new candidate."""
    from p2p_research.net.peers import CANDIDATES_PER_SUBNET

    pm = bare_peer_manager()
    for i in range(CANDIDATES_PER_SUBNET):
        pm._add_candidate(f"/ip4/10.7.7.{i + 1}/tcp/4001/p2p/{new_peer_id()}")
    honest = new_peer_id()
    pm._add_candidate(f"/ip4/10.7.7.200/tcp/4001/p2p/{honest}")
    assert honest not in pm._candidates and pm.subnet_refusals == 1   # none has failed yet: no room
    dead = next(iter(pm._candidates))
    pm._candidates[dead].failures = 3
    pm._add_candidate(f"/ip4/10.7.7.200/tcp/4001/p2p/{honest}")
    assert honest in pm._candidates and dead not in pm._candidates
    assert sum(c.subnet == "10.7.7.0/24" for c in pm._candidates.values()) == CANDIDATES_PER_SUBNET


def test_a_node_sends_its_relayed_addresses_first_in_an_exchange():
    """A host listening on every interface can have more direct addresses than an exchange carries;
    behind NAT only the relayed ones reach it, so they go first."""
    from p2p_research.net.peers import OWN_ADDRS_SENT, own_exchange_addrs

    me = new_peer_id()
    direct = [f"/ip4/172.17.0.{i}/tcp/4001/p2p/{me}" for i in range(12)]
    relayed = [f"/ip4/10.0.0.1/tcp/4001/p2p/{new_peer_id()}/p2p-circuit/p2p/{me}"]
    sent = own_exchange_addrs(direct + relayed)
    assert sent[0] == relayed[0] and len(sent) == OWN_ADDRS_SENT and sent[1:] == direct[:OWN_ADDRS_SENT - 1]


async def test_a_candidate_that_does_not_answer_holds_no_other_and_is_dialed_again_when_it_gains_an_address(
        autojump_clock):
    """Exchanged peers are dialed DIALS_AT_ONCE at a time, beside the discovery rounds: a home's direct
    address behind NAT, which answers nothing for the dial's whole timeout, held every other candidate
    and the next exchanges that long. A dial in flight counts for its subnet. A candidate whose dial
    tries direct addresses only and that learns a relayed address meanwhile is dialed again at once
    with it: its first dial stops (a home heard of before it held a relay slot)."""
    import trio

    from p2p_research.net.peers import CONNECTIONS_PER_SUBNET, DIALS_AT_ONCE

    pm = bare_peer_manager()

    class Network:
        connections: dict = {}

    pm.host.get_network = lambda: Network()  # type: ignore[method-assign]
    pm.target_peers = 50
    started: list[tuple[float, str, list[str]]] = []
    home = new_peer_id()

    async def dial(info):
        started.append((trio.current_time(), info.peer_id.to_base58(), [str(a) for a in info.addrs]))
        if "192.168." in str(info.addrs[0]) and len(info.addrs) == 1:
            await trio.sleep(10)  # answers nothing, until the dial's timeout
            raise trio.TooSlowError
        await trio.sleep(10 if "10.5.5." in str(info.addrs[0]) else 0.1)
        Network.connections[info.peer_id] = []

    pm._dial = dial  # type: ignore[method-assign]
    pm._add_candidate(f"/ip4/192.168.1.2/tcp/4001/p2p/{home}")
    same_subnet = [f"/ip4/10.5.5.{i}/tcp/4001/p2p/{new_peer_id()}" for i in range(1, 4)]
    others = [f"/ip4/10.{i}.0.1/tcp/4001/p2p/{new_peer_id()}" for i in range(20, 20 + DIALS_AT_ONCE)]
    for a in same_subnet + others:
        pm._add_candidate(a)
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        pm._dial_candidates(nursery)
        assert len(pm._dialing) == DIALS_AT_ONCE  # at most that many at once
        while trio.current_time() - t0 < 25:
            pm._dial_candidates(nursery)  # the rounds go on beside the dials
            if trio.current_time() - t0 > 1 and any(p == home for p in pm._dialing):
                pm._add_candidate(f"/ip4/10.77.0.1/tcp/4001/p2p/{new_peer_id()}/p2p-circuit/p2p/{home}")
            await trio.sleep(0.5)
    first = {peer: t - t0 for t, peer, _ in reversed(started)}
    assert all(first[a.split("/p2p/")[1]] < 10 for a in others), first  # none waited for the silent address
    at_once = [peer for t, peer, addrs in started if "10.5.5." in addrs[0] and t - t0 < 10]
    assert len(at_once) == CONNECTIONS_PER_SUBNET  # the third of that subnet waited: two in flight count
    home_dials = [(t - t0, addrs) for t, peer, addrs in started if peer == home]
    # the relayed address arrived 1.5 s into the dial of the silent direct one: that dial stopped and
    # the next began at once, with what it learnt (it had waited out the 10-s timeout before)
    assert len(home_dials) == 2 and home_dials[1][0] - home_dials[0][0] <= 2.0, home_dials  # the next call after 1.5 s
    assert any("/p2p-circuit" in a for a in home_dials[1][1]), home_dials
    assert pm._candidates[home].failures == 0  # a dial stopped for a better address is no failure
