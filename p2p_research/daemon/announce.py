"""Turning local runs into wire messages: claims, results with signed receipts and their git objects."""

from __future__ import annotations

import time

from libp2p.crypto.keys import KeyPair

from p2p_research import __version__
from p2p_research.research.context import METRIC, ResearchContext
from p2p_research.research.workspace import Workspace
from p2p_research.store.ledger import Run
from p2p_research.wire import BoardPost, Claim, GitObject, Receipt, Result
from p2p_research.wire.receipts import sign_receipt

MIN_LEASE_S = 120.0            # gossip can lag by a minute on a saturated machine: a lease must outlive that
INLINE_TOTAL = 300 * 1024     # far below the 1 MiB RPC cap and the wire's 384 KiB inline cap
INLINE_OBJECT = 256 * 1024
RECEIPT_STATUS = {"kept": "kept", "discarded": "discarded", "crash": "crash", "baseline": "baseline"}


def make_claim(ctx: ResearchContext, peer: str, exp_id: str, commit: str, description: str,
               expected_seconds: float | None) -> Claim:
    """A lease of about three budgets: long enough to finish, short enough that a dead claimer frees it."""
    lease = max(MIN_LEASE_S, 3 * (expected_seconds or ctx.budget.seconds or 600.0))
    parent = ctx.workspace.parent_of(commit) or ""
    return Claim(exp_id=exp_id, protocol_id=ctx.protocol_id, parent=parent, peer=peer,
                 lease_until=time.time() + lease, description=description[:500], ts=time.time())


def make_receipt(ctx: ResearchContext, run: Run, peer: str, status: str | None = None) -> Receipt:
    return Receipt(
        protocol_id=ctx.protocol_id, exp_id=run.exp_id, parent=run.parent or (ctx.workspace.parent_of(run.commit_id) or run.commit_id),
        commit=run.commit_id, tree=ctx.workspace.tree_of(run.commit_id), metric=METRIC,
        value=run.val_bpb, status=status or RECEIPT_STATUS[run.status], budget_tokens=ctx.budget.tokens,
        budget_seconds=ctx.budget.seconds, seed=run.seed or 0, hardware=ctx.hardware[:200],
        software=f"p2p-research {__version__}", peer=peer, ts=run.finished_at or time.time(),
        training_seconds=float(run.training_seconds or 0.0), memory_gb=float(run.memory_gb or 0.0))


def commit_objects(ws: Workspace, commit: str) -> tuple[list[GitObject], int]:
    """The commit's new objects, inline when small; otherwise none inline and the count to fetch."""
    raw = ws.new_objects(commit)
    objs = [GitObject(o.oid, o.kind, o.data) for o in raw]
    if sum(len(o.data) for o in objs) <= INLINE_TOTAL and all(len(o.data) <= INLINE_OBJECT for o in objs):
        return objs, len(objs)
    return [], len(objs)


def make_result(ctx: ResearchContext, run: Run, key_pair: KeyPair, peer: str) -> Result:
    receipt = make_receipt(ctx, run, peer)
    objects, total = commit_objects(ctx.workspace, run.commit_id)
    return Result(receipt=receipt, signature=sign_receipt(receipt, key_pair.private_key),
                  public_key=key_pair.public_key.serialize(), objects=objects, objects_total=total,
                  description=run.description[:500])


def make_post(peer: str, name: str, text: str) -> BoardPost:
    return BoardPost(author=peer, name=name, text=text, ts=time.time())
