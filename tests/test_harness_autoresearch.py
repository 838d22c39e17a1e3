"""The harness owns the number on autoresearch's data: no validation shard in a peer's run, and a
private shard the publisher cannot have had.

The fixture (`tests/fixtures/autoresearch/`) keeps its data as autoresearch does: numbered shards in
`~/.cache/autoresearch-fixture/data`, the last index pinned as the validation shard, each shard
"downloaded" by the pinned prepare.py's `download_single_shard` (generated here, no network). A node
holds out one shard drawn from its private seed (harness/shards.py). Runs go through the real
hand-over, evaluator and sandbox the engine builds, under the fixture's own interpreter.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from autoresearch_helpers import autoresearch_folder

from p2p_research.harness import shards, verdict
from p2p_research.harness.measure import PRIVATE_BELOW, HarnessTrainer
from p2p_research.research.io.context import open_context
from p2p_research.research.io.engine import ResearchEngine
from p2p_research.research.io.home_init import init_home
from p2p_research.research.io.proposers import BuiltinProposer
from p2p_research.research.io.runner import RunLimits
from p2p_research.research.io.sandbox import detect

pytestmark = [pytest.mark.skipif(not detect().available, reason=f"no sandbox here: {detect().reason}"),
              pytest.mark.xdist_group("harness-autoresearch")]  # its module fixture is built once, on one worker

LIMITS = RunLimits(180, 4096, False)

# A k-gram lookup model with autoresearch's interface (`model(x, y, reduction=...)`, logits without
# targets) over the fixture's 257 tokens: causal, and it memorises whatever documents it is built from.
KGRAM = '''
import os, sys, math
import torch
import torch.nn as nn
import torch.nn.functional as F
import prepare
from prepare import MAX_SEQ_LEN, Tokenizer, evaluate_bpb

class KGram(nn.Module):
    def __init__(self, docs, k=6, alpha=0.05, window=None, buckets=1 << 16):
        super().__init__()
        self.k, self.buckets = k, buckets
        tok = Tokenizer()
        ids = [i for d in tok.encode(docs, prepend=tok.get_bos_token_id()) for i in d]
        data = torch.tensor(ids, dtype=torch.long)
        # one long sequence, or the rows the evaluation's loader cuts (a memoriser of its windows)
        rows = data[None] if window is None else data[: data.numel() // window * window].view(-1, window)
        counts = torch.full((buckets, 257), alpha)
        h = self.hashes(rows[:, :-1]).reshape(-1)
        counts.index_put_((h, rows[:, 1:].reshape(-1)), torch.ones(h.numel()), accumulate=True)
        self.register_buffer("table", (counts / counts.sum(1, keepdim=True)).log())

    def hashes(self, idx):
        h = torch.zeros_like(idx)
        for j in range(self.k):
            shifted = F.pad(idx, (j, 0))[:, : idx.size(1)]
            h = (h * 263 + shifted + 1) % 1000003
        return h % self.buckets

    def forward(self, idx, targets=None, reduction="mean"):
        logits = F.embedding(self.hashes(idx), self.table)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, 257), targets.view(-1), ignore_index=-1, reduction=reduction)

def report(value):
    print("---")
    print(f"val_bpb:          {value:.6f}")
    print("training_seconds: 1.0")
    print("num_steps:        1")

train_docs = prepare._split_documents("train")
'''


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A node home on the fixture, run under the fixture's interpreter, with its shards prepared."""
    root = tmp_path_factory.mktemp("harness-ar")
    folder = autoresearch_folder()
    home = init_home(root / "node", target=folder)
    cfg = home.load_config()
    cfg.research.train_command = f"{folder / '.venv' / 'bin' / 'python'} train.py"
    cfg.research.threads = 1
    cfg.research.noise_runs = 0
    home.write_config(cfg.validate())
    ctx = open_context(home, home.load_config())
    engine = ResearchEngine(ctx, BuiltinProposer(ctx.space, seed=0))
    yield home, ctx, engine, folder
    ctx.ledger.close()


async def _run(node, run_dir: Path, train_py: str, env_extra: dict | None = None):
    home, ctx, engine, folder = node
    run_dir.mkdir(parents=True)
    genesis = ctx.workspace.files_of(ctx.workspace.genesis)
    (run_dir / "prepare.py").write_bytes(genesis["prepare.py"])
    (run_dir / "train.py").write_text(train_py)
    await engine.prepare_data()
    assert isinstance(engine.trainer, HarnessTrainer)
    env = {**engine.run_env(0), **(env_extra or {})}
    return await engine.trainer(run_dir, env, LIMITS, run_dir / "run.log", sandbox=engine.sandbox_spec(run_dir))


async def test_the_node_holds_out_a_private_shard_and_trusts_peers_code_with_it(node):
    from p2p_research.doctor import private_shard_check

    home, ctx, engine, folder = node
    assert not ctx.has_private_split  # nothing held out yet: peers' code would stay constants-only
    before = private_shard_check(home.path, ctx.genesis_prepare, True)
    assert before is not None and before.status == "warn" and "network" in before.hint
    await engine.prepare_data()
    after = private_shard_check(home.path, ctx.genesis_prepare, True)
    assert after is not None and after.status == "ok" and "shard_04096.jsonl" in after.detail
    split = shards.load(home.path)
    assert split is not None and split.private_dir is not None and split.index is not None
    assert split.val_shard == Path.home() / ".cache" / "autoresearch-fixture" / "data" / "shard_04096.jsonl"
    # one of the shards the user did not download, drawn from the node's private seed
    assert split.index not in (0, 1, 4096)
    held = (split.private_dir / "shard_04096.jsonl").read_text()
    assert held != split.val_shard.read_text()
    assert ctx.has_private_split and ctx.trust().trusts_code_from("any peer")
    spec = engine.trainer.spec
    assert spec.withheld_files == (split.val_shard,) and spec.private_data == split.private_dir


async def test_a_run_of_peers_code_reads_neither_the_validation_shard_nor_the_private_one(node, tmp_path):
    """Peers' code (the fixture's train.py with a line added) finds the validation shard unreadable
    wherever it looks, cannot reach the node's private shard, and is measured by the harness on
    both, at the value it printed."""
    home, ctx, engine, folder = node
    await engine.prepare_data()
    split = shards.load(home.path)
    probe = textwrap.dedent(f'''
        import os
        for where in ({str(split.val_shard)!r}, os.path.expanduser("~/.cache/autoresearch-fixture/data/shard_04096.jsonl"),
                      {str(split.private_dir / "shard_04096.jsonl")!r}):
            try:
                print("READ", where, len(open(where).read()))
            except OSError as e:
                print("refused", where, type(e).__name__)
        print("train shards", sorted(os.listdir(os.path.expanduser("~/.cache/autoresearch-fixture/data"))))
    ''')
    genesis_train = (folder / "train.py").read_text()
    o = await _run(node, tmp_path / "run", probe + genesis_train)
    assert o.ok and o.measured_by == "harness", o.reason
    log = o.log_path.read_text()
    assert "READ" not in log and log.count("refused") == 3, log[:2000]
    assert "shard_00000.jsonl" in log  # the training shards are there, through `~` as autoresearch finds them
    assert abs(o.summary.val_bpb - o.reported_val_bpb) < 1e-4
    assert o.private_bpb is not None and abs(o.private_bpb - o.summary.val_bpb) < 0.3
    marks = json.loads(re.search(r"P2P-MEASURE (.*)", (tmp_path / "run" / "evaluate.log").read_text()).group(1))
    assert marks["private_bpb"] == pytest.approx(o.private_bpb, abs=1e-6)


async def test_the_genesis_code_still_reads_its_validation_shard(node, tmp_path):
    """The genesis's own code (other constants) may go on its own word, so it keeps its data: a model
    the evaluator cannot run still falls back to the harness's own evaluation."""
    home, ctx, engine, folder = node
    await engine.prepare_data()
    split = shards.load(home.path)
    o = await _run(node, tmp_path / "run", (folder / "train.py").read_text(), env_extra={PRIVATE_BELOW: "-inf"})
    assert o.ok and o.measured_by == "harness", o.reason
    assert o.private_bpb is None  # it decides no gain: the private shard is not measured
    assert split.val_shard.is_file()


async def test_a_model_fitted_to_the_validation_shard_does_not_carry_over_to_the_private_one(node, tmp_path):
    """The run cannot read the validation shard, but the fixture's shards are generated by public
    code (as a peer could download autoresearch's): a k-gram memoriser of the validation shard
    scores far better there than an honest one, and not on the node's private shard."""
    honest = await _run(node, tmp_path / "a", KGRAM + "report(evaluate_bpb(KGram(train_docs), Tokenizer(), 32))\n")
    # long contexts over the validation shard's first documents (what the evaluation reads): a copy
    cheat = await _run(node, tmp_path / "b", KGRAM + "report(evaluate_bpb(KGram(prepare.shard_documents("
                       "prepare.VAL_SHARD)[:60], k=12, alpha=1e-3, window=MAX_SEQ_LEN + 1), Tokenizer(), 32))\n")
    assert honest.ok and cheat.ok, (honest.reason, cheat.reason)
    print(f"honest {honest.summary.val_bpb:.3f} / private {honest.private_bpb:.3f}; "
          f"memoriser {cheat.summary.val_bpb:.3f} / private {cheat.private_bpb:.3f}")
    assert cheat.summary.val_bpb < honest.summary.val_bpb - 0.3, (cheat.summary.val_bpb, honest.summary.val_bpb)
    why = verdict.does_not_generalise(honest.summary.val_bpb, honest.private_bpb, cheat.summary.val_bpb,
                                      cheat.private_bpb, margin=0.01)
    assert why is not None and "does not carry over" in why, (honest, cheat)


async def test_a_verifier_that_took_the_genesis_from_peers_measures_it_before_judging_code(node):
    """A node that never measured an ancestor itself (it took the genesis value from peers) has
    nothing to hold a gain against on the private split; before it measures a code change it
    measures the genesis, whose code is the harness's own, and the memoriser is refuted."""
    from p2p_research.research.io.proposers import Proposal

    home, ctx, engine, folder = node
    await engine.prepare_data()
    genesis = ctx.workspace.genesis
    assert engine._measured_ancestor(genesis) is None
    memoriser = KGRAM + ("report(evaluate_bpb(KGram(prepare.shard_documents(prepare.VAL_SHARD)[:60], k=12, alpha=1e-3, "
                         "window=MAX_SEQ_LEN + 1), Tokenizer(), 32))\n")
    exp_id, commit = engine.commit_proposal(genesis, Proposal(train_py=memoriser.encode(), description="a memoriser", constants_only=False))
    er = await engine.execute(commit, "verification", "verification of a peer's result", 0, exp_id)
    runs = ctx.ledger.runs()
    assert [(r.commit_id, r.kind) for r in runs[-2:]] == [(genesis, "baseline"), (commit, "verification")], runs
    assert runs[-2].metrics.get("private_bpb"), runs[-2].metrics
    assert not er.outcome.ok and "does not carry over" in er.outcome.reason, er.outcome
