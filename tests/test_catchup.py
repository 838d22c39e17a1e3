"""Catch-up between two real hosts: the full transfer for late joiners and the `since` sync that
repairs what gossip lost; a malformed sync request costs its sender only the stream."""

from __future__ import annotations

import time

import trio
from libp2p import generate_new_ed25519_identity
from libp2p.peer.id import ID
from net_helpers import cfg, result, wait_mesh

from p2p_research.daemon.catchup import CATCHUP_PROTOCOL, PROTOCOL_SINCE, SINCE_PROTOCOL, CatchUp
from p2p_research.net import open_network
from p2p_research.net.framing import frame, write_all
from p2p_research.store.ledger import Ledger, Run

PROTOCOL = "ab" * 16


def _store(ledger: Ledger, msg) -> None:
    r = msg.receipt
    run = Run(exp_id=r.exp_id, commit_id=r.commit, protocol_id=r.protocol_id, kind="experiment", status=r.status,
              peer=r.peer, parent=r.parent, val_bpb=r.value, finished_at=r.ts, received_at=r.ts)
    assert ledger.add_peer_run(run, r.canonical_bytes(), msg.signature, msg.public_key)


async def test_full_catch_up_and_since_sync(tmp_path):
    kp = generate_new_ed25519_identity()
    now = time.time()
    old = [result(kp, exp_id=f"{i:040x}", ts=now - 1000 - i) for i in range(3)]
    new = [result(kp, exp_id=f"{i + 10:040x}", ts=now - i) for i in range(2)]
    server_ledger = Ledger(tmp_path / "a.sqlite")
    for m in old + new:
        _store(server_ledger, m)
    got: list = []

    async def deliver(inc) -> bool:
        got.append(inc.message.receipt.exp_id)
        return True

    async with open_network(cfg(), lambda oid: None) as a, \
            open_network(cfg(bootstrap=a.addrs()), lambda oid: None) as b:  # fmt: skip
        await wait_mesh(a, b)
        server = CatchUp(a.host, server_ledger, PROTOCOL, deliver)
        a.host.set_stream_handler(CATCHUP_PROTOCOL, server.handle)
        a.host.set_stream_handler(SINCE_PROTOCOL, server.handle_since)
        client = CatchUp(b.host, Ledger(tmp_path / "b.sqlite"), PROTOCOL, deliver)
        assert await client.fetch_from(a.peer_id, since=now - 100) == 2
        assert set(got) == {m.receipt.exp_id for m in new}
        assert client.syncs == 1 and client.repaired == 2 and client.completed == 0
        got.clear()
        assert await client.fetch_from(a.peer_id) == 5 and len(got) == 5 and client.completed == 1

        # garbage instead of {"since": t}: the server resets that stream and keeps serving
        stream = await b.host.new_stream(ID.from_base58(a.peer_id), [SINCE_PROTOCOL])
        await write_all(stream, frame(b"\xc1 not msgpack"))
        with trio.fail_after(5):
            try:
                assert await stream.read(10) in (b"", None)
            except Exception:  # noqa: BLE001 - a reset stream raises on read: that is the expected outcome
                pass
        assert await client.fetch_from(a.peer_id, since=now - 100) == 2

        # what the requester already holds is not sent again
        _store(client.ledger, new[0])
        got.clear()
        assert await client.fetch_from(a.peer_id, since=now - 100) == 1
        assert got == [new[1].receipt.exp_id]


async def test_a_catch_up_names_its_protocol_and_a_relay_asks_for_all(tmp_path):
    """A relay stores several swarms' results: a research node's catch-up gets its own protocol's only;
    a relay (protocol None) gets every protocol."""
    kp = generate_new_ed25519_identity()
    other = "cd" * 16
    mine = [result(kp, exp_id=f"{i:040x}", protocol_id=PROTOCOL) for i in range(3)]
    theirs = [result(kp, exp_id=f"{i + 50:040x}", protocol_id=other) for i in range(2)]
    relay_ledger = Ledger(tmp_path / "relay.sqlite")
    for m in mine + theirs:
        _store(relay_ledger, m)
    got: dict[str, list] = {"research": [], "relay": []}

    def deliver_to(who: str):
        async def deliver(inc) -> bool:
            got[who].append(inc.message.receipt.protocol_id)
            return True
        return deliver

    async with open_network(cfg(), lambda oid: None) as a, \
            open_network(cfg(bootstrap=a.addrs()), lambda oid: None) as b:  # fmt: skip
        await wait_mesh(a, b)
        server = CatchUp(a.host, relay_ledger, None, deliver_to("server"))
        a.host.set_stream_handler(PROTOCOL_SINCE, server.handle_since)
        research = CatchUp(b.host, Ledger(tmp_path / "b.sqlite"), PROTOCOL, deliver_to("research"))
        assert await research.fetch_from(a.peer_id) == 3 and set(got["research"]) == {PROTOCOL}
        late_relay = CatchUp(b.host, Ledger(tmp_path / "c.sqlite"), None, deliver_to("relay"))
        assert await late_relay.fetch_from(a.peer_id) == 5 and set(got["relay"]) == {PROTOCOL, other}
        # a node of the previous version speaks 1.1.0 only (no "protocol" in requests): the client falls
        # back to it and is served what that node lives in
        a.host.remove_stream_handler(PROTOCOL_SINCE)
        old = CatchUp(a.host, relay_ledger, PROTOCOL, deliver_to("server"))
        a.host.set_stream_handler(SINCE_PROTOCOL, old.handle_since)
        got["research"].clear()
        again = CatchUp(b.host, Ledger(tmp_path / "d.sqlite"), PROTOCOL, deliver_to("research"))
        assert await again.fetch_from(a.peer_id) == 3 and set(got["research"]) == {PROTOCOL}


def test_a_sparse_node_serves_only_what_it_floods(tmp_path):
    """network.announce = kept: catch-up serves kept results only, chosen in the query (the newest
    MAX_RESULTS are the newest kept ones, not the newest of everything, filtered afterwards)."""
    from p2p_research.daemon.catchup import results_from_ledger
    from p2p_research.research.flooding import served_statuses
    from p2p_research.wire import decode

    kp = generate_new_ed25519_identity()
    ledger = Ledger(tmp_path / "a.sqlite")
    for i, status in enumerate(["kept", "discarded", "discarded", "kept", "discarded"]):
        _store(ledger, result(kp, exp_id=f"{i:040x}", status=status, ts=time.time() - i))
    served = [decode(d).receipt.status for d in results_from_ledger(ledger, PROTOCOL, None, statuses=served_statuses(True))]
    assert served == ["kept", "kept"]
    assert len(results_from_ledger(ledger, PROTOCOL, None, statuses=served_statuses(False))) == 5


def test_a_full_catch_up_carries_the_server_s_own_live_claims_only(tmp_path):
    """Gossip does not replay: a node that joins after a claim was announced hears of it in its
    catch-up. A server vouches only for its own claims (the stream's peer is authenticated), live
    ones, of the protocol asked for."""
    import time

    from p2p_research.daemon.catchup import own_claims
    from p2p_research.store.ledger import Ledger
    from p2p_research.wire import Claim, decode

    led = Ledger(tmp_path / "l.sqlite")
    now = time.time()
    me, other = "12D3KooWGzh6iHnEqBCTUWy6QGJ1bnHKbo6hzUYZ4n6sYJRZDhC2", "12D3KooWother"
    p, q = "1" * 40, "2" * 40
    led.add_claim("a" * 40, me, p, "0" * 40, now + 100, "mine, live", now, "5" * 40)
    led.add_claim("b" * 40, me, p, "0" * 40, now - 1, "mine, expired", now - 200)
    led.add_claim("c" * 40, other, p, "0" * 40, now + 100, "another peer's", now)
    led.add_claim("d" * 40, me, q, "0" * 40, now + 100, "mine, another protocol", now)
    try:
        claims = [decode(f) for f in own_claims(led, me, p, now)]
    finally:
        led.close()
    assert [(type(c), c.exp_id, c.semantic_id) for c in claims] == [(Claim, "a" * 40, "5" * 40)]
