"""Results whose changed blobs travel as deltas: sender size, receiver rebuild, forgeries and fallbacks.

Real git repos: the sender is a bare workspace of the embedded target, the receiver a node home with
its research context, and the network a fake that serves the sender's objects and counts fetches.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from libp2p import generate_new_ed25519_identity
from libp2p.peer.id import ID

from p2p_research.daemon.intake import FETCH_RETRY_S, Intake
from p2p_research.daemon.messages import commit_objects
from p2p_research.net.network import Incoming
from p2p_research.research.ids import experiment_id
from p2p_research.research.io.context import open_context
from p2p_research.research.io.home_init import init_home
from p2p_research.research.io.workspace import Workspace
from p2p_research.target import read_target_files
from p2p_research.wire import DeltaObject, GitObject, Receipt, Result, decode, sign_receipt

KP = generate_new_ed25519_identity()
PEER = ID.from_pubkey(KP.public_key).to_base58()
OLD, NEW = b"LEARNING_RATE = 0.002", b"LEARNING_RATE = 0.003"


def one_constant(src: bytes, old: bytes = OLD, new: bytes = NEW) -> bytes:
    assert src.count(old) == 1
    return src.replace(old, new)


class FakeNet:
    """Serves the sender's objects (or none) and records what was asked."""

    def __init__(self, source: Workspace | None, connected: dict[str, Workspace | None] | None = None) -> None:
        self.source = source                  # what the announcer (any peer not in `connected`) serves
        self.connected = connected or {}      # other connected peers and what each serves
        self.requests: list[list[str]] = []
        self.asked: list[str] = []

    def peers(self) -> list:
        return [SimpleNamespace(peer_id=p) for p in self.connected]

    async def fetch_objects(self, peer_id: str, oids: list[str], *, timeout: float = 60.0) -> list[GitObject]:
        self.requests.append(list(oids))
        self.asked.append(peer_id)
        source = self.connected[peer_id] if peer_id in self.connected else self.source
        if source is None:
            return []
        found = [source.read_object(o) for o in oids]
        return [GitObject(o.oid, o.kind, o.data) for o in found if o is not None]


@pytest.fixture
def sender(tmp_path) -> Workspace:
    return Workspace.create(tmp_path / "sender", read_target_files())


@pytest.fixture
def ctx(tmp_path):
    c = open_context(init_home(tmp_path / "receiver"))
    yield c
    c.close()


def result_for(ws: Workspace, ctx, commit: str, *, deltas=True, edit=None) -> Result:
    """The Result `make_result` would send for `commit`, passed through the wire like gossip does."""
    objs, ds, total = commit_objects(ws, commit, deltas=deltas)
    if edit is not None:
        ds = [edit(d) for d in ds]
    r = Receipt(protocol_id=ctx.protocol_id, exp_id=experiment_id(ctx.protocol_id, ws.tree_of(commit)),
                parent=ws.parent_of(commit) or commit, commit=commit, tree=ws.tree_of(commit), metric="val_bpb",
                value=1.234, status="kept", budget_tokens=ctx.budget.tokens, budget_seconds=None, seed=7,
                hardware="cpu x2", software="p2p-research test", peer=PEER, ts=time.time(), training_seconds=300.0,
                memory_gb=0.5, description="LEARNING_RATE 0.002 -> 0.003")  # fmt: skip
    msg = Result(r, sign_receipt(r, KP.private_key), KP.public_key.serialize(), objects=objs, objects_total=total,
                 deltas=ds)
    back = decode(msg.to_wire())
    assert back == msg
    return back


async def deliver(ctx, net: FakeNet, msg: Result) -> Intake:
    intake = Intake(ctx, net, self_peer="QmSelf")
    async with trio.open_nursery() as nursery:
        await intake.handle_result(Incoming(msg, PEER, time.time()), msg, nursery)
    return intake  # the nursery waited for complete_commit


def test_one_constant_change_is_five_times_smaller(sender):
    commit = sender.commit_experiment(sender.baseline, {"train.py": one_constant(read_target_files()["train.py"])},
                                      "lr", "e" * 40)
    objs, ds, total = commit_objects(sender, commit)
    assert [o.kind for o in objs] == [1, 2] and len(ds) == 1 and total == 3
    assert ds[0].data == b"3" and ds[0].base == str(sender.commit(sender.baseline).tree["train.py"].id)
    full_objs, no_ds, full_total = commit_objects(sender, commit, deltas=False)
    assert not no_ds and len(full_objs) == full_total == 3
    r = Receipt(protocol_id="ab" * 20, exp_id="e" * 40, parent=sender.baseline, commit=commit,
                tree=sender.tree_of(commit), metric="val_bpb", value=1.2, status="kept", budget_tokens=10**6,
                budget_seconds=None, seed=1, hardware="cpu x2", software="p2p-research test", peer=PEER, ts=1e9,
                training_seconds=300.0, memory_gb=0.5, description="lr")  # fmt: skip
    sig, pk = sign_receipt(r, KP.private_key), KP.public_key.serialize()
    new = Result(r, sig, pk, objects=objs, objects_total=total, deltas=ds).to_wire()
    old = Result(r, sig, pk, objects=full_objs, objects_total=full_total).to_wire()
    assert len(new) * 5 <= len(old), (len(new), len(old))


def test_delta_base_is_the_parents_blob_at_the_same_path(sender):
    files = read_target_files()
    commit = sender.commit_experiment(sender.baseline, {"train.py": one_constant(files["train.py"]),
                                                        "notes.txt": b"a new file\n"}, "lr", "e" * 40)
    bases = {o.oid: base for o, base in sender.new_objects_with_bases(commit)}
    parent_blob = sender.repo[sender.commit(sender.baseline).tree["train.py"].id]
    new_blob = sender.commit(commit).tree["train.py"].id
    assert bases[str(new_blob)] == str(parent_blob.id)
    assert bases[str(sender.commit(commit).tree["notes.txt"].id)] is None  # added: no base
    assert bases[commit] is None and bases[sender.tree_of(commit)] is None
    objs, ds, _ = commit_objects(sender, commit)
    assert [d.oid for d in ds] == [str(new_blob)]
    assert b"a new file\n" in [o.data for o in objs]  # too small to gain from a delta anyway


def test_no_delta_when_it_would_not_be_smaller(sender):
    commit = sender.commit_experiment(sender.baseline, {"train.py": b"X = 1\n"}, "rewrite", "f" * 40)
    objs, ds, total = commit_objects(sender, commit)
    assert not ds and len(objs) == total == 3


async def test_receiver_rebuilds_and_completes_without_fetch(sender, ctx):
    new_train = one_constant(read_target_files()["train.py"])
    commit = sender.commit_experiment(sender.baseline, {"train.py": new_train}, "lr", "e" * 40)
    msg = result_for(sender, ctx, commit)
    assert len(msg.deltas) == 1
    net = FakeNet(sender)
    intake = await deliver(ctx, net, msg)
    ws = ctx.workspace
    assert net.requests == []
    assert ws.is_complete(commit) and ws.files_of(commit)["train.py"] == new_train
    assert intake.stats["delta_objects"] == 1 and intake.stats["rejected"] == 0
    assert str(ws.repo.references["refs/p2p/exp/" + msg.receipt.exp_id].target) == commit


async def test_forged_delta_is_rejected_and_fetched_whole(sender, ctx, caplog):
    new_train = one_constant(read_target_files()["train.py"])
    commit = sender.commit_experiment(sender.baseline, {"train.py": new_train}, "lr", "e" * 40)
    msg = result_for(sender, ctx, commit, edit=lambda d: DeltaObject(d.oid, d.base, d.prefix, d.suffix, b"9"))
    net = FakeNet(sender)
    with caplog.at_level(logging.WARNING, logger="p2p_research.intake"):
        intake = await deliver(ctx, net, msg)
    assert intake.stats["rejected"] == 1 and intake.stats["delta_fallbacks"] == 1
    assert "hashes to" in caplog.text
    assert net.requests == [[msg.deltas[0].oid]]  # only the blob: the whole objects were written
    assert ctx.workspace.is_complete(commit) and ctx.workspace.files_of(commit)["train.py"] == new_train


async def test_forged_delta_from_a_peer_without_the_object_leaves_it_incomplete(sender, ctx, caplog, autojump_clock):
    """A kept commit nobody serves is fetched again after 5, 20 and 60 s (a stream that failed to open
    under load must not leave it partial for good), then left partial."""
    commit = sender.commit_experiment(sender.baseline, {"train.py": one_constant(read_target_files()["train.py"])},
                                      "lr", "e" * 40)
    forged = lambda d: DeltaObject(d.oid, d.base, d.prefix + 10**4, d.suffix, d.data)  # noqa: E731
    msg = result_for(sender, ctx, commit, edit=forged)
    with caplog.at_level(logging.WARNING, logger="p2p_research.intake"):
        intake = await deliver(ctx, FakeNet(None), msg)
    assert "base size" in caplog.text and "could not complete commit" in caplog.text and "in 4 tries" in caplog.text
    assert intake.stats["rejected"] == 1 and intake.stats["fetch_failures"] == 1 + len(FETCH_RETRY_S)
    assert not intake._retrying
    assert not ctx.workspace.is_complete(commit)


async def test_missing_base_falls_back_to_fetch(sender, ctx, caplog):
    files = read_target_files()
    c1 = sender.commit_experiment(sender.baseline, {"train.py": one_constant(files["train.py"])}, "lr", "1" * 40)
    train2 = one_constant(one_constant(files["train.py"]), b"N_LAYER = 4", b"N_LAYER = 6")
    c2 = sender.commit_experiment(c1, {"train.py": train2}, "layers", "2" * 40)
    msg = result_for(sender, ctx, c2)  # the receiver never saw c1: the delta's base is not there
    assert len(msg.deltas) == 1 and not ctx.workspace.has_object(msg.deltas[0].base)
    net = FakeNet(sender)
    with caplog.at_level(logging.INFO, logger="p2p_research.intake"):
        intake = await deliver(ctx, net, msg)
    assert intake.stats["delta_fallbacks"] == 1 and intake.stats["rejected"] == 0
    assert "not here" in caplog.text
    assert msg.deltas[0].oid in net.requests[0]
    assert ctx.workspace.is_complete(c2) and ctx.workspace.files_of(c2)["train.py"] == train2
    assert ctx.workspace.files_of(c1)["train.py"] == one_constant(files["train.py"])


async def test_delta_against_a_non_blob_is_rejected(sender, ctx, caplog):
    commit = sender.commit_experiment(sender.baseline, {"train.py": one_constant(read_target_files()["train.py"])},
                                      "lr", "e" * 40)
    genesis_tree = sender.tree_of(sender.baseline)  # present on the receiver, but a tree
    msg = result_for(sender, ctx, commit, edit=lambda d: DeltaObject(d.oid, genesis_tree, 0, 0, b""))
    with caplog.at_level(logging.WARNING, logger="p2p_research.intake"):
        intake = await deliver(ctx, FakeNet(sender), msg)
    assert "not a blob" in caplog.text and intake.stats["rejected"] == 1
    assert ctx.workspace.is_complete(commit)


def test_receiver_home_shares_the_senders_genesis(sender, ctx):
    assert Path(ctx.workspace.path).exists() and ctx.workspace.genesis == sender.genesis


async def test_a_commit_the_announcer_cannot_serve_is_fetched_from_a_connected_peer(sender, ctx):
    """The announcer may be gone or slow; connected peers that processed the result hold the commit."""
    files = read_target_files()
    c1 = sender.commit_experiment(sender.baseline, {"train.py": one_constant(files["train.py"])}, "lr", "1" * 40)
    msg = result_for(sender, ctx, c1, deltas=False)
    msg = Result(msg.receipt, msg.signature, msg.public_key, objects=[],
                 objects_total=msg.objects_total)  # nothing inline: everything must be fetched
    net = FakeNet(None, connected={"QmEmpty": None, "QmHasIt": sender})
    await deliver(ctx, net, msg)
    assert net.asked[0] == PEER and "QmHasIt" in net.asked
    assert ctx.workspace.is_complete(c1)


async def test_a_kept_result_replayed_after_a_restart_is_offered_again(sender, ctx):
    """Candidates live in memory: after a restart, a kept result already in the ledger must reach the
    coordinator again when catch-up replays it (once), or the node never adopts it."""
    c1 = sender.commit_experiment(sender.baseline, {"train.py": one_constant(read_target_files()["train.py"])},
                                  "lr", "1" * 40)
    msg = result_for(sender, ctx, c1)
    await deliver(ctx, FakeNet(sender), msg)               # before the restart: recorded
    offered = []

    async def on_result(m, run):
        offered.append(m.receipt.exp_id)

    intake = Intake(ctx, FakeNet(sender), self_peer="QmSelf")  # the restarted process
    intake.on_result, intake.wants = on_result, lambda exp_id: True
    async with trio.open_nursery() as nursery:
        for _ in range(3):                                  # replayed by several peers
            await intake.handle_result(Incoming(msg, PEER, time.time()), msg, nursery)
    assert offered == [msg.receipt.exp_id]
    assert intake.stats["duplicates"] == 3


class FailsOnce(FakeNet):
    """A stream that fails to open once (as under load), then serves."""

    async def fetch_objects(self, peer_id: str, oids: list[str], *, timeout: float = 60.0) -> list[GitObject]:
        if not self.requests:
            self.requests.append(list(oids))
            raise OSError("failed to open a stream to peer")
        return await super().fetch_objects(peer_id, oids, timeout=timeout)


async def test_a_kept_commit_whose_first_fetch_failed_is_completed_later(sender, ctx, autojump_clock):
    commit = sender.commit_experiment(sender.baseline, {"train.py": one_constant(read_target_files()["train.py"])},
                                      "lr", "e" * 40)
    msg = result_for(sender, ctx, commit, deltas=False)
    msg = Result(msg.receipt, msg.signature, msg.public_key, objects=[], objects_total=msg.objects_total)
    net = FailsOnce(sender)
    intake = await deliver(ctx, net, msg)
    assert len(net.requests) >= 2 and intake.stats["fetch_failures"] == 1
    assert ctx.workspace.is_complete(commit) and not intake._retrying
