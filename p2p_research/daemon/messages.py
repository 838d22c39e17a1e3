"""Turning local runs into wire messages: claims, results with signed receipts and their git objects
(changed blobs as deltas against the parent's, see :func:`commit_objects`)."""

from __future__ import annotations

import time

from libp2p.crypto.keys import KeyPair

from p2p_research import __version__
from p2p_research.research.io.context import METRIC, ResearchContext
from p2p_research.research.io.workspace import Workspace
from p2p_research.research.turns import claim_lease_s
from p2p_research.store.ledger import Run
from p2p_research.wire import BoardPost, Claim, DeltaObject, GitObject, Receipt, Result
from p2p_research.wire.receipts import sign_receipt

INLINE_TOTAL = 300 * 1024     # far below the 1 MiB RPC cap and the wire's 384 KiB inline cap
INLINE_OBJECT = 256 * 1024
DELTA_OVERHEAD = 64           # wire bytes a delta adds over a whole object (base id, prefix, suffix, keys)
RECEIPT_STATUS = {"kept": "kept", "discarded": "discarded", "crash": "crash", "baseline": "baseline"}


def make_claim(ctx: ResearchContext, peer: str, exp_id: str, commit: str, description: str,
               expected_seconds: float | None, semantic_id: str = "") -> Claim:
    """A lease of about three runs (research/turns.claim_lease_s)."""
    lease = claim_lease_s(expected_seconds, ctx.budget.seconds)
    parent = ctx.workspace.parent_of(commit) or ""
    return Claim(exp_id=exp_id, protocol_id=ctx.protocol_id, parent=parent, peer=peer,
                 lease_until=time.time() + lease, description=description[:500], ts=time.time(),
                 semantic_id=semantic_id)


def make_receipt(ctx: ResearchContext, run: Run, peer: str, status: str | None = None, *,
                 target_peer: str = "", claimed_value: float | None = None) -> Receipt:
    """The signed record of a run; its description (and, for a verification, whose claim of what value
    was re-run) is inside, so no relay can rewrite what the measurer said."""
    return Receipt(
        protocol_id=ctx.protocol_id, exp_id=run.exp_id, parent=run.parent or (ctx.workspace.parent_of(run.commit_id) or run.commit_id),
        commit=run.commit_id, tree=ctx.workspace.tree_of(run.commit_id), metric=METRIC,
        value=run.val_bpb, status=status or RECEIPT_STATUS[run.status], budget_tokens=ctx.budget.tokens,
        budget_seconds=ctx.budget.seconds, seed=run.seed or 0, hardware=ctx.hardware[:200],
        software=f"p2p-research {__version__}", peer=peer, ts=run.finished_at or time.time(),
        training_seconds=float(run.training_seconds or 0.0), memory_gb=float(run.memory_gb or 0.0),
        description=(run.description or "")[:500], target_peer=target_peer, claimed_value=claimed_value)


def commit_objects(ws: Workspace, commit: str, *, deltas: bool = True
                   ) -> tuple[list[GitObject], list[DeltaObject], int]:
    """The commit's new objects for its Result: (whole objects, delta-encoded blobs, count of all of them).

    A changed blob goes as a delta against the blob it replaces in the parent commit when that is
    smaller (one changed constant: a few bytes instead of the whole file); commits, trees and added
    files go whole. All of it inline when small, otherwise nothing inline and the receiver fetches.
    """
    pairs = ws.new_objects_with_bases(commit)
    total = len(pairs)
    if any(len(o.data) > INLINE_OBJECT for o, _ in pairs):
        return [], [], total
    objs: list[GitObject] = []
    encoded: list[DeltaObject] = []
    for o, base_oid in pairs:
        if deltas and o.kind == 3 and base_oid is not None:
            base = ws.read_object(base_oid)
            if base is not None and base.kind == 3:
                d = DeltaObject.from_blobs(base_oid, base.data, o.data)
                if len(d.data) + DELTA_OVERHEAD < len(o.data):
                    encoded.append(d)
                    continue
        objs.append(GitObject(o.oid, o.kind, o.data))
    if sum(len(o.data) for o in objs) + sum(len(d.data) for d in encoded) > INLINE_TOTAL:
        return [], [], total
    return objs, encoded, total


def make_result(ctx: ResearchContext, run: Run, key_pair: KeyPair, peer: str) -> Result:
    receipt = make_receipt(ctx, run, peer)
    objects, deltas, total = commit_objects(ctx.workspace, run.commit_id)
    return Result(receipt=receipt, signature=sign_receipt(receipt, key_pair.private_key),
                  public_key=key_pair.public_key.serialize(), objects=objects, objects_total=total, deltas=deltas)


def make_post(peer: str, name: str, text: str) -> BoardPost:
    return BoardPost(author=peer, name=name, text=text, ts=time.time())
