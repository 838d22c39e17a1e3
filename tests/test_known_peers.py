"""daemon/known_peers.py: the peers a node remembers across restarts (`peers.json`)."""

import trio

from p2p_research.daemon import known_peers


def addr(i: int, peer: str) -> str:
    return f"/ip4/10.0.{i}.1/tcp/4001/p2p/{peer}"


def test_the_connected_come_first_a_peer_once_and_the_list_is_bounded():
    before = [addr(1, "A"), addr(2, "B")]
    now = [addr(9, "B"), addr(3, "C")]
    assert known_peers.merge(now, before) == [addr(9, "B"), addr(3, "C"), addr(1, "A")]  # B at its new address
    many = [addr(i, f"P{i}") for i in range(40)]
    assert len(known_peers.merge(many, before)) == known_peers.REMEMBERED_MAX


def test_a_file_it_cannot_read_is_no_memory_and_never_fatal(tmp_path):
    path = tmp_path / "peers.json"
    assert known_peers.load(path) == []
    for junk in ("{", "[]", '{"peers": 7}', "\x00\xff"):
        path.write_text(junk)
        assert known_peers.load(path) == []
    path.write_text('{"peers": ["/ip4/1.2.3.4/tcp/1/p2p/X", 5, "' + "x" * 400 + '"]}')
    assert known_peers.load(path) == ["/ip4/1.2.3.4/tcp/1/p2p/X"]
    known_peers.save(path, [addr(1, "A")])
    assert known_peers.load(path) == [addr(1, "A")] and not (tmp_path / "peers.tmp").exists()


def test_the_list_is_written_when_the_node_stops_and_kept_while_nobody_is_connected(tmp_path):
    path = tmp_path / "peers.json"
    connected = [[addr(1, "A")]]

    async def run_then_stop():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(known_peers.keep, path, lambda: connected[0], [addr(2, "B")])
            await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(run_then_stop)
    assert known_peers.load(path) == [addr(1, "A"), addr(2, "B")]
    connected[0] = []
    trio.run(run_then_stop)  # nobody connected at the stop: what was remembered stays
    assert known_peers.load(path) == [addr(1, "A"), addr(2, "B")]
