"""Fault boundaries by construction: every protocol a peer can open is guarded; what a handler raises,
a peer's idle streams, and a stream over its slots cost only that stream."""

from __future__ import annotations

import trio
import trio.lowlevel
from adversary import adversary
from net_helpers import cfg, wait_until

from p2p_research.daemon.catchup import CATCHUP_LIMITS, CATCHUP_PROTOCOL
from p2p_research.net import open_network
from p2p_research.net.boundary import Faults, PeerTasks
from p2p_research.net.streams import StreamLimits, is_guarded

#: libp2p's own protocols (identify, its ping, ...) that py-libp2p serves with its own bounded handlers
LIBP2P_OWN = ("/ipfs/id/", "/ipfs/ping/", "/libp2p/")


async def test_every_protocol_of_ours_pubsub_and_kad_is_served_behind_the_guard():
    async with open_network(cfg(), lambda oid: None) as net:
        async def noop(stream):
            await stream.close()

        net.handle(CATCHUP_PROTOCOL, noop, CATCHUP_LIMITS)
        handlers = net.host.get_mux().handlers
        ours = {p: h for p, h in handlers.items() if not str(p).startswith(LIBP2P_OWN)}
        assert {"/p2p-research/objects/1.0.0", "/p2p-research/peers/1.0.0", "/p2p-research/ping/1.0.0",
                "/ipfs/kad/1.0.0", "/meshsub/1.2.0", CATCHUP_PROTOCOL} <= set(map(str, ours))
        unguarded = [p for p, h in ours.items() if not is_guarded(h)]
        assert not unguarded, f"served without a boundary: {unguarded}"


async def test_a_raising_handler_idle_streams_and_streams_over_the_slots_cost_only_the_stream():
    async def broken(stream):
        await stream.read(1)
        raise RuntimeError("a bug of ours that a peer's byte triggers")

    async def idle(stream):
        await stream.read(1)  # waits for a byte that never comes
        await trio.sleep_forever()

    async with open_network(cfg(), lambda oid: None) as net, adversary() as adv:
        net.handle("/test/broken/1", broken, StreamLimits(per_peer=4, total=8, deadline_s=5))
        net.handle("/test/idle/1", idle, StreamLimits(per_peer=2, total=8, deadline_s=1.0))
        await adv.connect(net.addrs()[0])
        s = await adv.open_stream(net.peer_id, "/test/broken/1")
        await s.write(b"x")
        await wait_until(lambda: net.stats["faults"]["/test/broken/1"] == 1)
        opened = 0
        for _ in range(4):
            try:
                await adv.open_stream(net.peer_id, "/test/idle/1")
                opened += 1
            except Exception:  # noqa: BLE001 - a refused stream is reset during negotiation
                pass
        await wait_until(lambda: net.stats["streams_refused"]["/test/idle/1"] == 2)  # 2 slots per peer
        await wait_until(lambda: net.stats["streams_timed_out"]["/test/idle/1"] == 2, timeout=5)
        # a timed-out stream is counted, then reset (up to 0.5 s), then gives its slot back: under load the
        # count came first by a scheduler turn (a suite run, once)
        await wait_until(lambda: net.streams.busy("/test/idle/1") == 0, timeout=5)
        assert opened >= 2 and net.faults.by_peer[adv.peer_id] == 1
        # and the node goes on serving
        s = await adv.open_stream(net.peer_id, "/test/broken/1")
        await s.write(b"x")
        await wait_until(lambda: net.stats["faults"]["/test/broken/1"] == 2)


async def test_a_stream_over_its_peer_s_slots_waits_for_one_to_end_where_the_protocol_allows_it():
    """KAD's limits let a peer's stream over its two wait (up to 3 s) for one of them to end: an honest
    node's put beside its own lookups to the same peer is served late, not refused. At most as many
    wait as the peer holds; the rest are refused at once, so waiting buys a hostile peer nothing."""
    served: list[bytes] = []

    async def echo(stream):
        data = await stream.read(1)
        await trio.sleep(0.5)
        served.append(data)
        await stream.write(data)
        await stream.close()

    async with open_network(cfg(), lambda oid: None) as net, adversary() as adv:
        net.handle("/test/wait/1", echo, StreamLimits(per_peer=1, total=8, deadline_s=5, wait_s=3.0))
        await adv.connect(net.addrs()[0])
        answers: list[bytes] = []

        async def ask(tag: bytes) -> None:
            try:
                s = await adv.open_stream(net.peer_id, "/test/wait/1")
                await s.write(tag)
                answers.append(await s.read(1))
            except Exception:  # noqa: BLE001 - a refused stream is reset
                pass

        async with trio.open_nursery() as nursery:
            for tag in (b"a", b"b", b"c"):
                nursery.start_soon(ask, tag)
                await trio.sleep(0.1)
        assert sorted(answers) == sorted(served) and len(answers) == 2, answers  # one held, one waited
        assert net.stats["streams_refused"]["/test/wait/1"] == 1  # the third: no more may wait
        await wait_until(lambda: net.streams.busy("/test/wait/1") == 0)  # the handler's end, after the reply


async def test_peer_tasks_contain_what_they_raise_and_still_cancel():
    faults = Faults()
    done = []

    async def bad(x):
        raise ValueError(x)

    async def slow():
        try:
            await trio.sleep_forever()
        finally:
            done.append("cancelled")

    async with trio.open_nursery() as nursery:
        tasks = PeerTasks(nursery, faults)
        tasks.start_soon("QmPeer", "intake.commit", bad, "boom")
        tasks.start_soon("QmPeer", "intake.commit", slow)
        await wait_until(lambda: faults.counts["intake.commit"] == 1)
        nursery.cancel_scope.cancel()
    assert done == ["cancelled"] and faults.by_peer["QmPeer"] == 1


async def test_two_writers_on_one_stream_never_interleave_a_message_longer_than_a_frame():
    """Pubsub writes a peer's RPCs to one stream from several tasks. A message over yamux's 64 KiB frame
    went out frame by frame with the stream unlocked between frames, so another writer's message could
    land inside it and the reader parsed garbage (the node's IWANT of 5,000 ids, in a suite run). Here
    one task writes 300 KB messages and another small ones on the same stream, at once: every message
    arrives whole (libp2p_compat guard `yamux_whole_writes`)."""
    from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

    sizes = [300_000, 17, 300_000, 5, 300_000, 40_000, 9]
    got: list[bytes] = []
    done = trio.Event()

    async def reader(stream):
        try:
            for _ in sizes:  # a garbled length prefix ends the reading here, and the test fails below
                got.append(await read_varint_prefixed_bytes_limited(stream, max(sizes)))
        finally:
            done.set()

    async with open_network(cfg(), lambda oid: None) as net, adversary() as adv:
        net.handle("/test/whole/1", reader, StreamLimits(per_peer=1, total=2, deadline_s=60))
        await adv.connect(net.addrs()[0])
        s = await adv.open_stream(net.peer_id, "/test/whole/1")

        async def write(which: range) -> None:
            for k in which:
                await s.write(encode_varint_prefixed(bytes([k]) * sizes[k]))

        async with trio.open_nursery() as n:
            n.start_soon(write, range(0, len(sizes), 2))
            n.start_soon(write, range(1, len(sizes), 2))
        with trio.fail_after(30):
            await done.wait()
    assert sorted((len(m), m[:1]) for m in got) == sorted((size, bytes([k])) for k, size in enumerate(sizes))
    assert all(len(set(m)) == 1 for m in got), "a message arrived with another's bytes inside it"
