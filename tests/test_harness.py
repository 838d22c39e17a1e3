"""The harness owns the number: hostile train.py variants through the real hand-over and evaluator.

Each variant is a train.py a peer could publish. It runs exactly as a node runs it (HarnessTrainer
around the real runner, in the sandbox the engine builds, with the node's pinned prepare.py), and the
node must refuse it with a reason: a fabricated summary, a patched evaluation, a patched print or torch
function, a model that looks ahead, hand-overs that are pickles, malformed, oversized, late or slow to
evaluate, and a model that memorises the validation windows (regenerated from the public corpus's code:
the run has no validation data of its own). An honest tiny model is measured, and the harness's value
is what it printed; patching the evaluation inside the run changes nothing (it no longer evaluates).
"""

from __future__ import annotations

import dataclasses
import hashlib
import textwrap
from pathlib import Path

import pytest
from conftest import init_small

from p2p_research.harness import verdict
from p2p_research.harness.measure import ANCESTOR_CPU, PRIVATE_BELOW, HarnessTrainer, script_argv
from p2p_research.research.io.context import open_context
from p2p_research.research.io.engine import ResearchEngine
from p2p_research.research.io.home_init import init_home
from p2p_research.research.io.proposers import BuiltinProposer
from p2p_research.research.io.runner import RunLimits
from p2p_research.research.io.warmstart import WarmRun

pytestmark = pytest.mark.xdist_group("harness")  # its module fixture (prepared data) is built once, on one worker

LIMITS = RunLimits(180, 4096, True)

# A tiny causal model (a bigram: embedding -> head) trained for a few steps on the train split; the
# variants below change one thing each.
TINY = '''
import os, sys, math
import torch
import torch.nn as nn
import torch.nn.functional as F
import prepare
from prepare import evaluate_bpb, load_data, print_summary, setup

class Tiny(nn.Module):
    def __init__(self, lookahead=False):
        super().__init__()
        self.emb = nn.Embedding(256, 32)
        self.head = nn.Linear(32, 256)
        self.lookahead = lookahead
        self.max_seq_len = 64

    def forward(self, idx):
        x = self.emb(idx)
        if self.lookahead:  # every position sees the mean of the tokens after it
            x = x + x.flip(1).cumsum(1).flip(1) / idx.size(1)
        return self.head(x)

def train(model, data, steps=30):
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - 65, (16,), generator=gen)
        batch = data[starts[:, None] + torch.arange(65)].long()
        loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, 256), batch[:, 1:].reshape(-1))
        loss.backward(); opt.step(); opt.zero_grad()
    return model

def report(value):
    print_summary(val_bpb=value, training_seconds=1.0, num_params=1, num_steps=30, tokens=30 * 16 * 64, device="cpu")

device, seed = setup()
train_data, _ = load_data("cpu")
'''

# A k-gram lookup model built from a byte string: causal (position t sees tokens <= t), and it
# memorises whatever text it is built from. Built from the train split it generalises; built from
# the validation split it is a near-perfect copy of the validation windows and nothing more.
KGRAM = '''
class KGram(nn.Module):
    def __init__(self, text, k=6, buckets=1 << 16):
        super().__init__()
        self.k, self.buckets, self.max_seq_len = k, buckets, 256
        data = torch.tensor(list(text), dtype=torch.long)
        counts = torch.full((buckets, 256), 0.05)
        h = self.hashes(data[None, :-1])[0]
        counts.index_put_((h, data[1:]), torch.ones(h.numel()), accumulate=True)
        self.register_buffer("table", (counts / counts.sum(1, keepdim=True)).log())

    def hashes(self, idx):
        h = torch.zeros_like(idx)
        for j in range(self.k):
            shifted = F.pad(idx, (j, 0))[:, : idx.size(1)]
            h = (h * 257 + shifted + 1) % 1000003
        return h % self.buckets

    def forward(self, idx):
        return F.embedding(self.hashes(idx), self.table)
'''

VARIANTS: dict[str, tuple[str, str]] = {
    # name: (train.py body after TINY, what the refusal must say)
    "prints a fabricated summary without training": (
        "report(0.20)\n", "cannot measure this code's model"),
    "replaces the harness's evaluate_bpb": (
        "prepare.evaluate_bpb = lambda *a, **k: 0.30\n"
        "report(prepare.evaluate_bpb(train(Tiny(), train_data)))\n", "cannot measure this code's model"),
    "patches builtins.print to rewrite the summary": (
        "import builtins\n_print = builtins.print\n"
        "def lying(*a, **k):\n"
        "    if a and isinstance(a[0], str) and a[0].startswith('val_bpb:'): a = ('val_bpb:          0.250000',)\n"
        "    _print(*a, **k)\n"
        "builtins.print = lying\n"
        "report(evaluate_bpb(train(Tiny(), train_data), 'cpu', max_seq_len=64))\n", "a false report"),
    "looks ahead (non-causal)": (
        "report(evaluate_bpb(train(Tiny(lookahead=True), train_data), 'cpu', max_seq_len=64))\n", "looks ahead"),
    "hands over a pickle of objects": (
        "import json, pickle\nout = os.environ['P2P_HANDOVER']\n"
        "class Boom:\n"
        "    def __reduce__(self): return (os.system, ('touch ' + {marker!r},))\n"
        "open(out + '/program.json', 'wb').write(b'{{}}')\n"
        "torch.save({{}}, out + '/constants.pt')\n"
        "open(out + '/state_dict.pt', 'wb').write(pickle.dumps({{'w': Boom()}}))\n"
        "open(out + '/meta.part', 'w').write(json.dumps({{'input_shape': [32, 64], 'args': ['cpu'], 'kwargs': {{'max_seq_len': 64}}}})); os.replace(out + '/meta.part', out + '/meta.json')\n"
        "report(0.20)\n", "not a plain file of tensors"),
    "hands over a malformed program": (
        "import json\nout = os.environ['P2P_HANDOVER']\n"
        "open(out + '/program.json', 'wb').write(b'{{\"not\": \"a program\"')\n"
        "torch.save({{}}, out + '/constants.pt'); torch.save({{}}, out + '/state_dict.pt')\n"
        "open(out + '/meta.part', 'w').write(json.dumps({{'input_shape': [32, 64], 'args': ['cpu'], 'kwargs': {{}}}})); os.replace(out + '/meta.part', out + '/meta.json')\n"
        "report(0.20)\n", "does not load"),
    "exits after writing only a fake meta.json": (
        "import json\nout = os.environ['P2P_HANDOVER']\n"
        "open(out + '/meta.part', 'w').write(json.dumps({{'input_shape': [32, 64]}})); os.replace(out + '/meta.part', out + '/meta.json')\n"
        "report(0.20)\n", "lacks program.json"),
    "hides code in the program's symbolic shapes and guards": (
        # the whole hand-over written, meta.json last, as a complete one is (the node copies it the
        # moment meta.json appears: a program rewritten after that raced with the copy)
        "import json, shutil, tempfile, p2p_handover\nout = os.environ['P2P_HANDOVER']\n"
        "p2p_handover.OUT = made = tempfile.mkdtemp()\n"
        "p2p_handover._export(train(Tiny(), train_data).eval(), torch.zeros(32, 64, dtype=torch.long), ('cpu',), {{'max_seq_len': 64}})\n"
        "doc = json.load(open(made + '/program.json'))\n"
        "doc['range_constraints'] = {{'s0': {{'min_val': 1, 'max_val': \"__import__('os').system('touch {marker}')\"}}}}\n"
        "doc['guards_code'] = [\"__import__('os').system('touch {marker}')\"]\n"
        "json.dump(doc, open(out + '/program.json', 'w'))\n"
        "for name in ('state_dict.pt', 'constants.pt', 'meta.json'):\n"
        "    shutil.copy(made + '/' + name, out + '/' + name)\n"
        "report(0.20)\n", "only static shapes are measured"),
    "zeroes its input in place (the harness's targets share its memory)": (
        "import p2p_handover\np2p_handover.OUT = os.environ['P2P_HANDOVER']\n"
        "class Zero(Tiny):\n"
        "    def forward(self, idx):\n"
        "        idx.zero_()\n"
        "        return super().forward(idx)\n"
        "p2p_handover._export(Zero().eval(), torch.zeros(32, 64, dtype=torch.long), ('cpu',), {{'max_seq_len': 64}})\n"
        "report(0.20)\n", "aten::zero_"),
    "counts its calls in a buffer to pass the probe": (
        "import p2p_handover\np2p_handover.OUT = os.environ['P2P_HANDOVER']\n"
        "class Counter(Tiny):\n"
        "    def __init__(self):\n"
        "        super().__init__(lookahead=True)\n"
        "        self.register_buffer('calls', torch.zeros(()))\n"
        "    def forward(self, idx):\n"
        "        self.calls.add_(1)\n"
        "        return super().forward(idx) * (self.calls > 5)\n"
        "p2p_handover._export(Counter().eval(), torch.zeros(32, 64, dtype=torch.long), ('cpu',), {{'max_seq_len': 64}})\n"
        "report(0.20)\n", "aten::add_, which the evaluator does not run"),
    "hands over an oversized folder": (
        "open(os.environ['P2P_HANDOVER'] + '/ballast.bin', 'wb').write(b'0' * (3 << 20))\n"
        "report(evaluate_bpb(train(Tiny(), train_data), 'cpu', max_seq_len=64))\n", "2 MiB"),
}


SLOW_TO_EVALUATE = textwrap.dedent('''
        import p2p_handover
        class Slow(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(256, 2048)
                self.w = nn.Parameter(torch.randn(2048, 2048) / 50)
                self.head = nn.Linear(2048, 256)
            def forward(self, idx):
                x = self.emb(idx)
                for _ in range(400):
                    x = torch.tanh(x @ self.w)
                return self.head(x)
        p2p_handover.OUT = os.environ['P2P_HANDOVER']
        def cheap(*a):  # the export traces without computing; the recording would run it here
            raise p2p_handover._Unrecordable('exported')
        p2p_handover._record = cheap
        p2p_handover._export(Slow().eval(), torch.zeros(32, 256, dtype=torch.long), ('cpu',), {})
        report(0.20)
    ''')


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A node home with the default target; its engine builds the sandbox spec runs get."""
    home = init_home(tmp_path_factory.mktemp("harness") / "node")
    ctx = open_context(home, home.load_config())
    engine = ResearchEngine(ctx, BuiltinProposer(ctx.space, seed=0))
    yield home, ctx, engine
    for trainer in _SHARED.values():
        trainer.close()
    _SHARED.clear()
    ctx.ledger.close()


def _trainer(ctx, engine, **changes) -> HarnessTrainer:
    base = engine.trainer.spec  # with the training split prepare_data wrote
    return HarnessTrainer(dataclasses.replace(base, **changes))


_SHARED: dict[tuple, HarnessTrainer] = {}


def _shared_trainer(ctx, engine, **changes) -> HarnessTrainer:
    """The module's trainer for these settings. Its warm evaluator serves run after run, hostile ones
    included, as a node's serves its own runs (each hand-over is measured in a child forked for it), so
    the tests do not start a server (a torch import) each."""
    key = tuple(sorted(changes.items()))
    if key not in _SHARED:
        _SHARED[key] = _trainer(ctx, engine, **changes)
    return _SHARED[key]


async def _run(node, tmp_path: Path, body: str, env_extra: dict | None = None, trainer: HarnessTrainer | None = None,
               name: str = "run", **changes):
    home, ctx, engine = node
    run_dir = tmp_path / name
    run_dir.mkdir()
    genesis = ctx.workspace.files_of(ctx.workspace.genesis)
    (run_dir / "prepare.py").write_bytes(genesis["prepare.py"])
    (run_dir / "train.py").write_text(TINY + KGRAM + body)
    await engine.prepare_data()
    env = {**engine.run_env(0), **(env_extra or {})}
    trainer = trainer or _shared_trainer(ctx, engine, **changes)
    return await trainer(run_dir, env, LIMITS, run_dir / "run.log", sandbox=engine.sandbox_spec(run_dir))


async def test_an_honest_tiny_model_is_measured_by_the_harness_and_agrees_with_its_report(node, tmp_path):
    o = await _run(node, tmp_path, "report(evaluate_bpb(train(Tiny(), train_data), 'cpu', max_seq_len=64))\n")
    assert o.ok, o.reason
    assert o.measured_by == "harness" and o.summary.metrics["measured_by"] == "harness"
    assert abs(o.summary.val_bpb - o.reported_val_bpb) < 1e-4
    assert o.private_bpb is not None and abs(o.private_bpb - o.summary.val_bpb) < 0.5
    # recorded by the hand-over's dispatch mode (not torch.export): see the recording's own tests
    assert '"handover": "recorded"' in (tmp_path / "run" / "evaluate.log").read_text()


def test_the_private_split_is_measured_only_where_it_can_decide(node, monkeypatch):
    """A baseline is the reference (always); a noise run judges nothing (never); an experiment or a
    verification only below its nearest measured ancestor's value less half a margin."""
    home, ctx, engine = node
    assert PRIVATE_BELOW not in engine._measure_env(0, "baseline", "")
    assert engine._measure_env(0, "noise", "")[PRIVATE_BELOW] == "-inf"
    monkeypatch.setattr(engine, "_measured_ancestor", lambda parent: (1.5, 1.6) if parent == "p" else None)
    monkeypatch.setattr(engine, "_ancestor_cpu", lambda parent: None)  # "p" and "q" are no commits
    below = float(engine._measure_env(0, "experiment", "p")[PRIVATE_BELOW])
    assert below == pytest.approx(1.5 - 0.5 * engine.margin)
    assert engine._measure_env(0, "verification", "q")[PRIVATE_BELOW] == "-inf"


async def test_an_experiment_that_decides_no_gain_skips_the_private_split(node, tmp_path):
    o = await _run(node, tmp_path, "print('below seen:', os.environ.get('P2P_PRIVATE_BELOW'))\n"
                   "report(evaluate_bpb(train(Tiny(), train_data), 'cpu', max_seq_len=64))\n",
                   env_extra={PRIVATE_BELOW: "-inf"})
    assert o.ok and o.measured_by == "harness" and o.private_bpb is None, o.reason
    assert "below seen: None" in o.log_path.read_text()  # the run never sees it


@pytest.mark.parametrize("name", list(VARIANTS))
async def test_a_hostile_train_py_is_refused_with_the_reason(node, tmp_path, name):
    marker = tmp_path / "unpickled"
    body, expected = VARIANTS[name]
    o = await _run(node, tmp_path, body.format(marker=str(marker)), max_handover_mb=2)
    assert not o.ok and o.summary is None, f"{name}: accepted at {o.summary and o.summary.val_bpb}"
    assert expected in o.reason, f"{name}: {o.reason}"
    assert not marker.exists()  # nothing of the run's was unpickled by the node


async def test_patching_the_evaluation_inside_the_run_changes_nothing(node, tmp_path):
    """The run no longer evaluates: it hands over and prints the node's value, whatever it patched."""
    o = await _run(node, tmp_path, "model = train(Tiny(), train_data)\n"
                   "F.cross_entropy = lambda *a, **k: torch.tensor(0.01)\n"
                   "report(evaluate_bpb(model, 'cpu', max_seq_len=64))\n")
    assert o.ok and o.measured_by == "harness", o.reason
    assert o.summary.val_bpb > 3.0 and abs(o.reported_val_bpb - o.summary.val_bpb) < 1e-5


async def test_a_run_of_peers_code_does_not_see_the_validation_data(node, tmp_path):
    """The corpus and the user's data are not in its sandbox; the harness's validation split there is
    zeros, and the training bytes are exactly the node's."""
    body = textwrap.dedent('''
        import hashlib
        _, val = prepare.split_bytes()
        if set(val) != {0} or os.path.exists(prepare.corpus_cache_path()):
            raise SystemExit("saw the validation data")
        print("train sha", hashlib.sha256(bytes(train_data.tolist())).hexdigest())
        report(evaluate_bpb(train(Tiny(), train_data), 'cpu', max_seq_len=64))
    ''')
    o = await _run(node, tmp_path, body)
    assert o.ok and o.measured_by == "harness", o.reason
    home, ctx, engine = node
    (corpus,) = engine.cache_dir().glob("corpus-*.txt")
    data = corpus.read_bytes()
    here = hashlib.sha256(data[:-max(int(len(data) * 0.05), 4 * 257)]).hexdigest()
    assert f"train sha {here}" in o.log_path.read_text()


async def test_a_pickle_hand_over_is_never_unpickled_even_without_a_sandbox(node, tmp_path):
    """The sandbox would contain a pickle's payload; the evaluator must not need it to."""
    home, ctx, engine = node
    marker = tmp_path / "unpickled"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "prepare.py").write_bytes(ctx.workspace.files_of(ctx.workspace.genesis)["prepare.py"])
    body, _ = VARIANTS["hands over a pickle of objects"]
    (run_dir / "train.py").write_text(TINY + body.format(marker=str(marker)))
    await engine.prepare_data()
    o = await _trainer(ctx, engine)(run_dir, engine.run_env(0), LIMITS, run_dir / "run.log", sandbox=None)
    assert not o.ok and "not a plain file of tensors" in o.reason, o.reason
    assert not marker.exists()


async def test_a_model_handed_over_after_the_budget_is_refused(node, tmp_path):
    o = await _run(node, tmp_path, "import time\ntime.sleep(2.5)\n"
                   "report(evaluate_bpb(train(Tiny(), train_data), 'cpu', max_seq_len=64))\n",
                   budget_seconds=0.5, handover_slack_s=1.0)
    assert not o.ok and "past the budget" in o.reason, o.reason


@pytest.mark.slow
async def test_a_model_trained_past_a_token_budget_is_refused_by_its_compute(node, tmp_path):
    """The run owns its data loader, so the tokens it trains on are not countable from outside; the
    CPU its processes spend is (the kernel counts it). Held to its ancestor's CPU under a token
    budget, a run that trains several budgets long is stopped at the bound and refused, and an honest
    one is not."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    honest = "report(evaluate_bpb(train(Tiny(), train_data), 'cpu', max_seq_len=64))\n"
    parent = await _run(node, tmp_path / "a", honest)
    assert parent.ok and parent.cpu_seconds and parent.cpu_seconds > 0.5, (parent.reason, parent.cpu_seconds)
    assert float(parent.summary.metrics["cpu_s"]) == pytest.approx(parent.cpu_seconds, abs=0.01)
    limit = {ANCESTOR_CPU: repr(parent.cpu_seconds)}
    longer = await _run(node, tmp_path / "b", textwrap.dedent(f'''
        import time
        print("ancestor cpu seen:", os.environ.get({ANCESTOR_CPU!r}))
        model, until = Tiny(), time.process_time() + 100 * {parent.cpu_seconds!r}
        while time.process_time() < until:  # trains on, whatever the budget says
            train(model, train_data, steps=20)
        report(evaluate_bpb(model, 'cpu', max_seq_len=64))
    '''), env_extra=limit)
    assert not longer.ok and "trained past the budget" in longer.reason, longer.reason
    # stopped at the bound (4x beyond the start-up, sampled every half second), not after a hundred budgets
    assert longer.cpu_seconds < 4 * parent.cpu_seconds + 2.0, (longer.cpu_seconds, parent.cpu_seconds)
    assert "ancestor cpu seen: None" in longer.log_path.read_text()  # the run never sees its limit
    again = await _run(node, tmp_path / "c", honest, env_extra=limit)
    assert again.ok and again.measured_by == "harness", (again.reason, again.cpu_seconds, parent.cpu_seconds)


def test_the_compute_reference_is_the_nearest_ancestor_run_here_under_a_token_budget(node, monkeypatch):
    home, ctx, engine = node
    assert ctx.budget.tokens is not None
    monkeypatch.setattr(engine, "_measured_ancestor", lambda parent: None)
    monkeypatch.setattr(engine, "_ancestor_cpu", lambda parent: 12.5 if parent == "p" else None)
    assert engine._measure_env(0, "experiment", "p")[ANCESTOR_CPU] == "12.5"
    assert engine._measure_env(0, "verification", "p")[ANCESTOR_CPU] == "12.5"
    assert ANCESTOR_CPU not in engine._measure_env(0, "experiment", "q")  # nothing measured: no limit
    assert ANCESTOR_CPU not in engine._measure_env(0, "noise", "p")
    assert ANCESTOR_CPU not in engine._measure_env(0, "baseline", "p")
    monkeypatch.setattr(ctx, "budget", dataclasses.replace(ctx.budget, tokens=None, seconds=60.0))
    assert ANCESTOR_CPU not in engine._measure_env(0, "experiment", "p")  # a wall-clock budget bounds it


@pytest.mark.slow
async def test_the_evaluator_stays_warm_across_runs_and_a_refused_model_takes_it_down_alone(node, tmp_path):
    """One trainer measures run after run with one evaluator process (torch imported once); a model
    whose evaluation runs out of time ends that process with its child, and the next run is measured
    by a fresh one, with the same value as before. The slow model is cheap to export but far too slow
    to evaluate, then claims (exported: the recording would run the model's forward in the run, for as
    long as it takes): it is refused within the evaluator's limit."""
    home, ctx, engine = node
    trainer = _trainer(ctx, engine)  # the evaluator's own time limit: a cold server's import fits in it
    honest = "report(evaluate_bpb(train(Tiny(), train_data), 'cpu', max_seq_len=64))\n"
    try:
        first = await _run(node, tmp_path, honest, trainer=trainer, name="first")
        second = await _run(node, tmp_path, honest, trainer=trainer, name="second")
        assert first.ok and second.ok, (first.reason, second.reason)
        assert second.measured_by == "harness" and trainer.warm.starts == 1
        assert second.summary.val_bpb == pytest.approx(first.summary.val_bpb, abs=1e-6)
        server = trainer.warm._proc.pid
        # forked from the evaluators' warm interpreter (the node's sandbox spec allows it), not started cold
        assert isinstance(trainer.warm._proc, WarmRun), trainer.warm._proc
        limit = trainer.spec
        trainer.spec = dataclasses.replace(limit, eval_time_limit_s=3)  # warm: an honest model takes under a second
        slow = await _run(node, tmp_path, SLOW_TO_EVALUATE, trainer=trainer, name="slow")
        trainer.spec = limit
        assert not slow.ok and "did not finish" in slow.reason and "time limit" in slow.reason, slow.reason
        assert not trainer.warm.running and not Path(f"/proc/{server}").exists()
        after = await _run(node, tmp_path, honest, trainer=trainer, name="after")
        assert after.ok and after.measured_by == "harness", after.reason
        assert after.summary.val_bpb == pytest.approx(first.summary.val_bpb, abs=1e-6)
        assert trainer.warm.starts == 2
    finally:
        trainer.close()
    assert not trainer.warm.running and trainer.warm.root is None


async def test_a_model_that_memorises_the_validation_windows_does_not_generalise(node, tmp_path):
    """Both k-gram models are causal, honest about their numbers and call the harness's own evaluation;
    the one built from the validation split scores far better there, and not on the private split."""
    home, ctx, engine = node
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    honest = await _run(node, tmp_path / "a", "train_bytes, _ = prepare.split_bytes()\n"
                        "report(evaluate_bpb(KGram(train_bytes[-300_000:]), 'cpu', max_seq_len=256))\n")
    # the run has no validation data; it regenerates the public corpus with the harness's own code
    cheat = await _run(node, tmp_path / "b", "data = prepare.generate_corpus()\n"
                       "val_bytes = data[-max(int(len(data) * prepare.VAL_FRACTION), 4 * (prepare.EVAL_CONTEXT + 1)):]\n"
                       "report(evaluate_bpb(KGram(val_bytes), 'cpu', max_seq_len=256))\n")
    assert honest.ok and cheat.ok, (honest.reason, cheat.reason)
    assert cheat.summary.val_bpb < honest.summary.val_bpb - 0.3  # the lie works on the public windows
    why = verdict.does_not_generalise(honest.summary.val_bpb, honest.private_bpb, cheat.summary.val_bpb,
                                      cheat.private_bpb, margin=0.01)
    assert why is not None and "does not carry over" in why
    # an honest gain carries over: the same model built from more training text
    assert verdict.does_not_generalise(honest.summary.val_bpb + 0.2, honest.private_bpb + 0.2,
                                       honest.summary.val_bpb, honest.private_bpb, 0.01) is None


def test_verdicts():
    assert verdict.false_report(None, 3.0) is None
    assert verdict.over_compute(None, 10.0) is None and verdict.over_compute(14.9, 10.0) is None
    assert verdict.over_compute(39.9, 10.0) is None and "trained past the budget" in verdict.over_compute(40.1, 10.0)
    # starting up (2 CPU-s here) is in every run: the slack multiplies the rest, not it
    assert verdict.over_compute(10.0, 3.0) is None and "past the budget" in verdict.over_compute(10.0, 3.0, startup_cpu_s=2.0)
    assert verdict.over_compute(5.9, 3.0, startup_cpu_s=2.0) is None
    assert verdict.over_compute(4.7, 3.0, startup_cpu_s=50.0) is None  # the floor is at most 80 % of the reference
    assert verdict.false_report(3.001, 3.0) is None
    assert "false report" in verdict.false_report(0.3, 3.0)
    assert verdict.late_handover(None, 300) is None and verdict.late_handover(500, None) is None
    assert verdict.late_handover(320, 300) is None and "past the budget" in verdict.late_handover(400, 300)
    assert verdict.does_not_generalise(None, 1.0, 0.5, 0.5, 0.01) is None
    assert verdict.does_not_generalise(1.0, 1.0, 0.995, 1.2, 0.01) is None  # no gain beyond the margin
    assert verdict.does_not_generalise(1.0, 1.1, 0.9, 1.02, 0.01) is None   # 0.1 public, 0.08 private
    assert verdict.does_not_generalise(1.0, 1.1, 0.9, 1.1, 0.01) is not None
    genesis = b"LR = 0.1\nprint(LR)\n"
    assert verdict.self_report_allowed(genesis, genesis)
    assert verdict.self_report_allowed(genesis, b"LR = 0.2\nprint(LR)\n")
    assert not verdict.self_report_allowed(genesis, b"LR = 0.2\nprint('val_bpb: 0.1')\n")
    assert not verdict.self_report_allowed(genesis, b"\xff")


def test_the_hand_over_and_the_evaluator_use_the_target_s_interpreter():
    assert script_argv("", "p2p_evaluate.py", "/h")[1:] == ["p2p_evaluate.py", "/h"]
    assert script_argv("uv run train.py", "p2p_handover.py", "train.py") == ["uv", "run", "p2p_handover.py", "train.py"]
    assert script_argv("/v/bin/python", "p2p_evaluate.py", "/h") == ["/v/bin/python", "p2p_evaluate.py", "/h"]



def test_every_knob_of_the_default_target_exports_to_a_graph_the_evaluator_runs(monkeypatch):
    """The allow-list must not refuse honest models: each value of the default train.py's choice knobs
    is exported as the hand-over exports it, read by the evaluator's interpreter, and gives the same
    logits as the model itself."""
    import importlib
    import io
    import json
    import sys

    import torch
    from torch._export.serde.serialize import serialize

    from p2p_research.harness import evaluate as E
    from p2p_research.target import TARGET_DIR

    monkeypatch.syspath_prepend(str(TARGET_DIR))
    monkeypatch.setattr(sys, "argv", ["train.py"])
    train = importlib.import_module("train")
    choices = [("ACTIVATION", a) for a in ("gelu", "relu", "silu", "relu2")] + [
        ("NORM", "rmsnorm"), ("POS_EMB", "learned"), ("POS_EMB", "none"), ("QK_NORM", True), ("BIAS", True),
        ("TIE_EMBEDDINGS", False), ("DROPOUT", 0.1), ("SCHEDULE", "linear")]
    x = torch.randint(0, 256, (4, 32))
    for name, value in choices:
        monkeypatch.setattr(train, name, value)
        model = train.GPT(1, 32, 2, 32).eval()
        art = serialize(torch.export.export(model, (x,), strict=False))
        state = torch.load(io.BytesIO(art.state_dict), weights_only=True)
        constants = torch.load(io.BytesIO(art.constants), weights_only=True)
        program = E.Program(json.loads(art.exported_program), state, constants, torch)
        with torch.no_grad():
            assert torch.equal(program(x), model(x)), (name, value)
        monkeypatch.undo()
        monkeypatch.syspath_prepend(str(TARGET_DIR))
        train = importlib.reload(train)
    sys.modules.pop("train", None)
    sys.modules.pop("prepare", None)


def _through_the_evaluator(doc, state, constants):
    import io
    import json

    import torch

    from p2p_research.harness import evaluate as E

    b1, b2 = io.BytesIO(), io.BytesIO()
    torch.save(state, b1)
    torch.save(constants, b2)
    b1.seek(0)
    b2.seek(0)
    return E.Program(json.loads(json.dumps(doc)), torch.load(b1, weights_only=True),
                     torch.load(b2, weights_only=True), torch)


def test_every_knob_of_the_default_target_is_recorded_as_the_evaluator_runs_it(monkeypatch):
    """The hand-over records the forward's ATen calls in the evaluator's format (torch.export's
    import and tracing cost most of a second per run): each knob's graph passes the evaluator's
    checks and gives the model's logits, bit for bit (the same kernels)."""
    import importlib
    import sys

    import torch

    from p2p_research.harness import handover
    from p2p_research.target import TARGET_DIR

    monkeypatch.syspath_prepend(str(TARGET_DIR))
    monkeypatch.setattr(sys, "argv", ["train.py"])
    train = importlib.import_module("train")
    choices = [("ACTIVATION", a) for a in ("gelu", "relu", "silu", "relu2")] + [
        ("NORM", "rmsnorm"), ("POS_EMB", "learned"), ("POS_EMB", "none"), ("QK_NORM", True), ("BIAS", True),
        ("TIE_EMBEDDINGS", False), ("DROPOUT", 0.1)]
    x = torch.randint(0, 256, (4, 32))
    for name, value in choices:
        monkeypatch.setattr(train, name, value)
        model = train.GPT(1, 32, 2, 32).eval()
        program = _through_the_evaluator(*handover._record(model, x))
        with torch.no_grad():
            assert torch.equal(program(x), model(x)), (name, value)
        monkeypatch.undo()
        monkeypatch.syspath_prepend(str(TARGET_DIR))
        train = importlib.reload(train)
    sys.modules.pop("train", None)
    sys.modules.pop("prepare", None)


def test_what_the_recording_cannot_take_is_exported_as_before(tmp_path, monkeypatch):
    """In-place writes on intermediates become their out-of-place twins; anything else the recording
    cannot say (a write to a weight, a value read back into Python, work the dispatcher does not see,
    more than one output) goes to torch.export, as every hand-over did before, and is measured or
    refused as it was then. A failed recording leaves the model as it was."""
    import json

    import torch
    import torch.nn as nn

    from p2p_research.harness import evaluate as E
    from p2p_research.harness import handover

    class Base(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(256, 16), nn.Linear(16, 256)
            self.register_buffer("calls", torch.zeros(()))
            self.plain = torch.linspace(0, 1, 16)  # not a buffer: a constant of the graph

    class InPlace(Base):
        def forward(self, idx):
            h = self.emb(idx) * 1.0
            h.add_(1)
            h *= self.plain
            return self.head(h) + torch.tensor([0.5])

    class Counter(Base):
        def forward(self, idx):
            self.calls.add_(1)
            return self.head(self.emb(idx))

    class ZeroInput(Base):
        def forward(self, idx):
            idx.zero_()
            return self.head(self.emb(idx))

    class Item(Base):
        def forward(self, idx):
            h = self.emb(idx)
            return self.head(h / h.abs().max().item())

    class Unseen(Base):  # numpy writes into a tensor torch made: no operation the dispatcher sees
        def forward(self, idx):
            h = self.emb(idx)
            out = torch.zeros_like(h)
            out.numpy()[:] = h.detach().numpy() * 2
            return self.head(out)

    class Pair(Base):
        def forward(self, idx):
            return self.head(self.emb(idx)), None

    x = torch.randint(0, 256, (4, 8))
    model = InPlace().eval()
    program = _through_the_evaluator(*handover._record(model, x))
    with torch.no_grad():
        assert torch.equal(program(x), model(x))
    # under the harness's autocast (bf16 on a GPU) the casts are in the graph, and autocast stays on
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        doc, state, constants = handover._record(model, x)
        assert torch.is_autocast_enabled("cpu")
        expected = model(x)
    assert {"as_scalar_type": 13} in [i["arg"] for n in doc["graph_module"]["graph"]["nodes"] for i in n["inputs"]]
    assert torch.equal(_through_the_evaluator(doc, state, constants)(x), expected)
    for cls, why in ((Counter, "aten.add_.Tensor, which writes"), (ZeroInput, "aten.zero_.default, which writes"),
                     (Item, "read back into Python"), (Unseen, "the dispatcher does not see"),
                     (Pair, "returns a tuple")):
        model, tokens = cls().eval(), x.clone()
        with pytest.raises(handover._Unrecordable, match=why):
            handover._record(model, tokens)
        assert float(model.calls) == 0.0 and torch.equal(tokens, x), cls.__name__  # not run
    monkeypatch.setattr(handover, "OUT", str(tmp_path))
    handover._export(Counter().eval(), x, ("cpu",), {})
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["method"].startswith("exported (_Unrecordable: the forward calls aten.add_.Tensor"), meta
    with pytest.raises(E.Refused, match="aten::add_"):
        E._load_program(str(tmp_path), torch)


def test_the_recording_imports_neither_dynamo_nor_the_export(tmp_path):
    """The point of the recording: a run that never compiles pays no torch._dynamo import at the
    hand-over (torch.optim imports it at the first step; this run has no optimizer, so any import
    would show)."""
    import subprocess
    import sys

    from p2p_research.harness import handover

    code = textwrap.dedent(f"""
        import json, sys
        import torch
        sys.path.insert(0, {str(Path(handover.__file__).parent)!r})
        import handover
        handover.OUT = {str(tmp_path)!r}
        model = torch.nn.Sequential(torch.nn.Embedding(256, 8), torch.nn.Linear(8, 256)).eval()
        before = set(sys.modules)
        handover._export(model, torch.zeros(2, 16, dtype=torch.long), ("cpu",), {{}})
        print(json.load(open({str(tmp_path / "meta.json")!r}))["method"], "torch._dynamo" in sys.modules,
              sorted(m for m in set(sys.modules) - before
                     if m.startswith(("torch._dynamo", "torch.export", "torch._export", "torch._functorch", "sympy"))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["recorded", "False", "[]"], out.stdout


@pytest.mark.slow
async def test_a_liar_s_win_reaching_a_node_inside_a_combination_is_refused(tmp_path):
    """A peer's kept win (its train.py skips the harness's evaluation and prints 0.30) branched off the
    genesis; this node's baseline has moved on. The builtin proposer merges the win's code onto the
    baseline, and the node runs the combination as its own experiment: the harness gets no model from
    it, and the code is not the genesis's, so the run is a crash with the reason, never a keep at 0.30."""
    from p2p_research.research.io.combine import Win

    home = init_small(tmp_path / "node")
    cfg = home.load_config()
    cfg.research.budget_tokens = 16_384
    home.write_config(cfg)
    ctx = open_context(home, cfg)
    ws = ctx.workspace
    genesis = ws.genesis
    train = ws.files_of(genesis)["train.py"]
    lie = train.replace(b"val_bpb = evaluate_bpb(model, device, max_seq_len=SEQ_LEN)", b"val_bpb = 0.30", 1)
    liar = ws.commit_experiment(genesis, {"train.py": lie}, "a better evaluation", "0" * 40)
    mine = ws.commit_experiment(genesis, {"train.py": train.replace(b"LEARNING_RATE = 0.002", b"LEARNING_RATE = 0.003")},
                                "LEARNING_RATE 0.002 -> 0.003", "0" * 40)
    win = Win(exp_id="e" * 40, commit=liar, parent=genesis, val_bpb=0.30, description="lie", peer="12D3KooWLiar")
    proposer = BuiltinProposer(ctx.space, seed=0, wins=lambda: [win], code_from=ctx.trust().trusts_code_from)
    engine = ResearchEngine(ctx, proposer)

    async def unknown(data: bytes) -> bool:
        return False

    proposal = await proposer.propose(ws, mine, unknown)
    assert proposal.description.startswith("combine") and b"val_bpb = 0.30" in proposal.train_py
    assert b"LEARNING_RATE = 0.003" in proposal.train_py
    _, commit = engine.commit_proposal(mine, proposal)
    er = await engine.execute(commit, "experiment", proposal.description, seed=0)
    assert er.outcome is not None and not er.outcome.ok, er.outcome
    assert "cannot measure this code's model" in er.outcome.reason
    assert er.run.val_bpb is None
    ctx.ledger.close()


def test_an_evaluator_folder_a_dead_node_left_is_removed_and_a_live_one_kept(tmp_path):
    """A node killed with its evaluator (the watchdog ends the server) leaves its copies' folder in
    runs/; the next trainer there removes it, and never another live node's or worker's."""
    from p2p_research.harness.warm import WarmEvaluator

    dead = tmp_path / ".evaluator-999999-12345-x1"  # no process 999999 started at tick 12345
    (dead / "copies").mkdir(parents=True)
    first, second = WarmEvaluator(b""), WarmEvaluator(b"")
    try:
        mine = first.copy_dir(tmp_path).parents[1]
        assert not dead.exists() and mine.is_dir()
        second.copy_dir(tmp_path)
        assert mine.is_dir() and len(list(tmp_path.iterdir())) == 2
    finally:
        first.close()
        second.close()
    assert list(tmp_path.iterdir()) == []


def test_the_evaluator_server_reads_a_hold_and_a_request_that_come_in_one_read():
    """The node does not wait for an answer to a hold, so a hold and the next request can reach the
    server together; each is read on its own (the server used to exit on the second, and that run's
    model went unmeasured)."""
    import subprocess
    import sys

    harness = Path(__file__).resolve().parents[1] / "p2p_research" / "harness"
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import evaluate as E\n"
            "print([E._next_request(time.monotonic() + 5) for _ in range(3)])")
    out = subprocess.run([sys.executable, "-c", code, str(harness)], input='{"hold": 5}\n{"id": "1", "folder": "/x"}\n',
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[{'hold': 5}, {'id': '1', 'folder': '/x'}, None]"


async def test_the_interpreter_s_start_up_cost_is_measured_once_a_day_per_interpreter(tmp_path):
    """The compute check's floor (what starting the interpreter with torch costs) is remembered between
    node processes in the harness's cache folder: a second trainer, or a second `run`, reads it."""
    import json
    import time

    from p2p_research.harness.measure import HarnessSpec
    from p2p_research.research.io.runner import RunOutcome

    calls = []

    async def runner(folder, env, limits, log_path, command=None):
        calls.append(command)
        return RunOutcome(True, None, "", 0.1, 0, log_path, cpu_seconds=1.25)

    cache = tmp_path / "cache" / "startup-cpu.json"
    spec = HarnessSpec(prepare_py=b"", genesis_train_py=b"", startup_cache=cache)
    assert await HarnessTrainer(spec, runner)._startup_cpu(tmp_path / "a") == 1.25
    assert await HarnessTrainer(spec, runner)._startup_cpu(tmp_path / "b") == 1.25
    assert len(calls) == 1 and cache.exists()
    # a day later, or an unreadable file, it is measured again
    doc = json.loads(cache.read_text())
    (key,) = doc
    doc[key]["at"] = time.time() - 2 * 86_400
    cache.write_text(json.dumps(doc))
    assert await HarnessTrainer(spec, runner)._startup_cpu(tmp_path / "c") == 1.25
    cache.write_text("not json")
    assert await HarnessTrainer(spec, runner)._startup_cpu(tmp_path / "d") == 1.25
    assert len(calls) == 3
    # without a cache folder, every trainer measures
    bare = dataclasses.replace(spec, startup_cache=None)
    await HarnessTrainer(bare, runner)._startup_cpu(tmp_path / "e")
    assert len(calls) == 4
