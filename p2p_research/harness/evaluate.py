"""The node's evaluator: measures a handed-over model with the pinned harness (standalone, sandboxed).

Started as `python p2p_evaluate.py HANDOVER_DIR` in a sandbox whose working directory holds this
file and the node's pinned prepare.py (from the swarm's genesis, never the run's copy), and nothing
of the run but the hand-over folder, read-only. No code of train.py runs here:

- the weights are read with `torch.load(weights_only=True)` (tensors only; a pickle of objects is
  refused) and handed, as dicts, to torch's ExportedProgram deserializer with the graph (JSON);
  `torch.export.load` is never used (it falls back to unpickling);
- the graph may only call ATen operations (and tuple indexing); operations that read files, print,
  draw random numbers or run subgraphs are refused by name;
- logits come from the graph, the log-softmax from here: a model cannot hand back unnormalised scores
  that look like probabilities;
- a perturbation probe: on random positions t, changing every token after t must leave the logits at
  positions <= t unchanged; a model that looks ahead is refused;
- the value is the pinned harness's own `evaluate_bpb`, called with an adapter around the graph;
- with P2P_PRIVATE_SEED (the node's secret), also the value on windows of a corpus the same harness
  generates from that seed: a split the run could not have seen (see harness/verdict.py).

Prints one line `P2P-MEASURE {json}`; a refusal is `{"error": "..."}` with exit code 0 (the node
refutes on it), a crash of this program is the node's bug and exits non-zero.
Standard library and torch only; it must not import p2p_research (the sandbox does not see it).
"""

import inspect
import json
import math
import os
import sys
import time

MAX_DIM = 1 << 16
PROBE_POSITIONS = 4
PROBE_TOLERANCE = 1e-4  # relative to the logits' scale; float reordering stays far below it
PRIVATE_CORPUS_BYTES = 700_000  # its val split holds about EVAL_WINDOWS windows without overlap
ALLOWED_BUILTINS = {"getitem"}  # operator.getitem: indexing a tuple of outputs
REFUSED_OPS = {
    # reading files or printing: the evaluator's data are readable here
    "from_file", "_print", "print", "save", "load", "_nested_from_padded",
    # randomness: a measurement must be repeatable
    "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm", "bernoulli",
    "bernoulli_", "normal", "normal_", "multinomial", "uniform_", "exponential_", "geometric_",
    "cauchy_", "log_normal_", "random_", "poisson", "rrelu", "rrelu_with_noise", "native_dropout",
    "fused_dropout", "_fused_dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
    # data-dependent shapes and host synchronisation the probe cannot bound
    "_local_scalar_dense", "item", "nonzero", "unique", "_unique2",
}


class Refused(Exception):
    """The hand-over cannot be measured: the reason goes to the node, which refutes the result."""


def _emit(doc):
    print("P2P-MEASURE " + json.dumps(doc), flush=True)


def _load_tensors(path, torch):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise Refused(f"{os.path.basename(path)} is not a plain file of tensors: {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise Refused(f"{os.path.basename(path)} holds something other than named tensors")
    return obj


def _check_ops(ep):
    """Only ATen operations outside REFUSED_OPS, and tuple indexing; no subgraphs, no custom ops."""
    import operator

    import torch

    for node in ep.graph_module.graph.nodes:
        if node.op == "get_attr":
            value = getattr(ep.graph_module, str(node.target), None)
            if isinstance(value, torch.fx.GraphModule):
                raise Refused(f"the graph holds a subgraph ({node.target}): control flow is not measured")
        if node.op != "call_function":
            continue
        target = node.target
        if target is operator.getitem:
            continue
        if not isinstance(target, torch._ops.OpOverload):
            raise Refused(f"the graph calls {getattr(target, '__name__', type(target).__name__)[:80]}, not an ATen operation")
        namespace = target.namespace
        name = target._schema.name.split("::")[-1]
        if namespace != "aten":
            raise Refused(f"the graph calls {namespace}::{name}: only ATen operations are measured")
        if name in REFUSED_OPS or name.rstrip("_") in REFUSED_OPS:
            raise Refused(f"the graph calls aten::{name}, which the evaluator does not run")
        if name == "dropout" and len(node.args) > 2 and node.args[2]:
            raise Refused("the graph runs dropout in training mode: a measurement must be repeatable")


def _load_program(folder, torch):
    from torch._export.serde.serialize import SerializedArtifact, deserialize

    with open(os.path.join(folder, "meta.json"), "rb") as f:
        meta = json.loads(f.read(64 * 1024))
    shape = meta.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) and 0 < d <= MAX_DIM for d in shape)):
        raise Refused(f"the model's input shape {str(shape)[:60]} is not (batch, time)")
    state = _load_tensors(os.path.join(folder, "state_dict.pt"), torch)
    constants = _load_tensors(os.path.join(folder, "constants.pt"), torch)
    with open(os.path.join(folder, "program.json"), "rb") as f:
        program = f.read()
    example = torch.zeros(shape, dtype=torch.long)
    try:
        ep = deserialize(SerializedArtifact(program, state, constants, ((example,), {})))
    except Exception as e:
        raise Refused(f"the exported program does not load: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    _check_ops(ep)
    try:
        module = ep.module()
    except Exception as e:
        raise Refused(f"the exported program does not build: {type(e).__name__}: {str(e)[:200]}") from None
    return module, meta, shape


class _Logits:
    """Calls the graph and checks what comes back: finite logits of shape (batch, time, vocab)."""

    def __init__(self, module, torch):
        self.module = module
        self.torch = torch
        self.vocab = None

    def __call__(self, x):
        try:
            out = self.module(x)
        except Refused:
            raise
        except Exception as e:  # the graph's own failure (a shape it was not exported for, ...)
            raise Refused(f"the model fails on an input of {tuple(x.shape)}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
        if isinstance(out, (tuple, list)):
            out = out[0] if out else None
        torch = self.torch
        if not isinstance(out, torch.Tensor) or out.dim() != 3 or tuple(out.shape[:2]) != tuple(x.shape):
            raise Refused(f"the model returns {getattr(out, 'shape', type(out).__name__)} for an input of "
                          f"{tuple(x.shape)}, not logits of (batch, time, vocab)")
        if self.vocab is None:
            self.vocab = out.size(-1)
        if out.size(-1) != self.vocab:
            raise Refused("the model's vocabulary changes between calls")
        out = out.float()
        if not bool(torch.isfinite(out).all()):
            raise Refused("the model returns logits that are not finite")
        return out


def _adapter(logits, seq_len, torch):
    """What the pinned harness calls: `model(x) -> logits` (this project's harness) or
    `model(x, y, reduction=...) -> loss` (autoresearch's); the loss is computed here, from a
    log-softmax of the graph's logits."""
    import torch.nn.functional as F

    class Adapter(torch.nn.Module):
        max_seq_len = seq_len

        def forward(self, x, y=None, reduction="mean"):
            z = logits(x)
            if y is None:
                return z
            logp = F.log_softmax(z, dim=-1)
            return F.nll_loss(logp.view(-1, logp.size(-1)), y.reshape(-1), ignore_index=-1, reduction=reduction)

    return Adapter()


def _probe_causality(logits, shape, torch):
    """The prediction at t must not depend on tokens after t, at PROBE_POSITIONS random positions."""
    seq = shape[1]
    if seq < 2:
        return
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
    batch = min(shape[0], 2)
    x = torch.randint(0, 256, (batch, seq), generator=gen)
    try:
        base = logits(x)
    except Refused:  # exported for one batch size only
        batch = shape[0]
        x = torch.randint(0, 256, (batch, seq), generator=gen)
        base = logits(x)
    vocab = base.size(-1)
    if vocab > 256:  # a larger vocabulary: draw from all of it
        x = torch.randint(0, vocab, (batch, seq), generator=gen)
        base = logits(x)
    scale = float(base.abs().max()) + 1.0
    for _ in range(PROBE_POSITIONS):
        t = int(torch.randint(0, seq - 1, (1,), generator=gen))
        y = x.clone()
        y[:, t + 1:] = torch.randint(0, vocab, (batch, seq - t - 1), generator=gen)
        after = logits(y)
        diff = float((after[:, : t + 1] - base[:, : t + 1]).abs().max())
        if diff > PROBE_TOLERANCE * scale:
            raise Refused(f"the model looks ahead: its prediction at position {t} changed by {diff:.3g} "
                          f"when only later tokens changed")


def _harness_call(prepare, adapter, meta, device):
    """Call the pinned harness's evaluate_bpb the way the run did, with this node's objects: the
    parameters it names (device, max_seq_len, tokenizer, batch_size) are rebuilt here."""
    params = list(inspect.signature(prepare.evaluate_bpb).parameters)[1:]
    given = list(meta.get("args") or [])
    kwargs_in = dict(meta.get("kwargs") or {})
    kwargs = {}
    for i, name in enumerate(params):
        value = given[i] if i < len(given) else kwargs_in.get(name, inspect.Parameter.empty)
        if value is inspect.Parameter.empty:
            continue
        if name == "device":
            value = device
        elif name == "tokenizer":
            value = prepare.Tokenizer.from_directory()
        elif name in ("max_seq_len", "batch_size"):
            if not isinstance(value, int) or not 0 < value <= MAX_DIM:
                raise Refused(f"the harness was called with {name}={str(value)[:40]}")
        elif isinstance(value, dict):
            raise Refused(f"the harness was called with an object for {name}; the evaluator cannot rebuild it")
        kwargs[name] = value
    return prepare.evaluate_bpb(adapter, **kwargs)


def _private_corpus(prepare, seed):
    """Documents of the same world as the public corpus (the facts a model may learn from training)
    drawn from a stream only this node knows: same distribution, windows no run can have seen.
    None where the harness does not generate its corpus this way."""
    needed = ("_Rng", "_World", "_DOC_KINDS", "CORPUS_SEED")
    if not all(hasattr(prepare, n) for n in needed) or os.environ.get("P2P_DATA"):
        return None
    world = prepare._World(prepare._Rng(prepare.CORPUS_SEED))
    rng = prepare._Rng(seed)
    parts, size = [], 0
    while size < PRIVATE_CORPUS_BYTES:
        doc = rng.weighted(prepare._DOC_KINDS)(rng, world) + "\n\n"
        parts.append(doc)
        size += len(doc)
    return "".join(parts).encode("ascii")


def _private_bpb(prepare, adapter, meta, device, seed):
    """The same harness on windows of the private corpus (this project's harness only: a user's own
    data, and autoresearch's, have no part a run cannot read)."""
    corpus = _private_corpus(prepare, seed)
    if corpus is None:
        return None
    public = prepare.load_text
    prepare.load_text = lambda: corpus
    try:
        return _harness_call(prepare, adapter, meta, device)
    finally:
        prepare.load_text = public


def main():
    started = time.monotonic()
    folder = sys.argv[1]
    device = os.environ.get("P2P_DEVICE", "cpu")
    device = "cpu" if device in ("", "auto") else device
    import torch

    sys.path.insert(0, os.getcwd())
    import prepare

    threads = os.environ.get("P2P_THREADS", "").strip()
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    try:
        module, meta, shape = _load_program(folder, torch)
        logits = _Logits(module, torch)
        with torch.no_grad():
            _probe_causality(logits, shape, torch)
            seq = shape[1]
            adapter = _adapter(logits, seq, torch)
            value = float(_harness_call(prepare, adapter, meta, device))
            if not math.isfinite(value):
                raise Refused(f"the harness measured a val_bpb that is not finite ({value})")
            seed = os.environ.get("P2P_PRIVATE_SEED", "").strip()
            private = _private_bpb(prepare, adapter, meta, device, int(seed)) if seed.isdigit() else None
    except Refused as e:
        _emit({"error": str(e)})
        return
    _emit({"val_bpb": value, "private_bpb": private, "input_shape": shape,
           "handed_over_after_s": meta.get("handed_over_after_s"), "seconds": time.monotonic() - started})


if __name__ == "__main__":
    main()
