"""The node's evaluator: measures a handed-over model with the pinned harness (standalone, sandboxed).

Started as `python p2p_evaluate.py --serve` (a warm server the node keeps: `serve`, harness/warm.py)
in a sandbox whose working directory holds this file and the node's pinned prepare.py (from the swarm's genesis, never the run's copy), and
nothing of the run but the hand-over copies, read-only. No code of train.py runs here:

- the weights are read with `torch.load(weights_only=True)` (tensors only; a pickle of objects is
  refused); `torch.export.load` is never used (it falls back to unpickling);
- the graph (program.json: the hand-over's recording of the forward, or torch.export's program, in
  one schema) is read as data and run by `Program`, an interpreter of allowed, non-mutating ATen
  operations; torch's deserializer never sees it (it evaluates symbolic shapes with sympy, executes
  guard code and generates Python from names in the document). The graph is a pure function of the
  token tensor: no state between calls, no writes to its input (a copy);
- logits come from the graph, the log-softmax from here: a model cannot hand back unnormalised scores
  that look like probabilities;
- a perturbation probe while scoring: on the first harness call and a random share of the others,
  the tokens after a random position t are replaced by another window's tail, and the logits at
  positions <= t must not move; a model that looks ahead is refused;
- the value is the pinned harness's own `evaluate_bpb`, called with an adapter around the graph;
- with P2P_PRIVATE_SEED (the node's secret), also the value on windows of a corpus the same harness
  generates from that seed: a split the run could not have seen (see harness/verdict.py).

Each evaluation prints one line `P2P-MEASURE {json}` (with its request's id); a refusal is
`{"error": "..."}` (the node refutes on it); a child that dies without a line is a refusal too.
Standard library and torch only; it must not import p2p_research (the sandbox does not see it).
"""

import inspect
import json
import math
import os
import re
import sys
import time

MAX_DIM = 1 << 16
MAX_NODES = 100_000
PROBE_FIRST = True          # every evaluation probes its first call, and each later one with PROBE_CHANCE
PROBE_CHANCE = 0.2
PROBE_TOLERANCE = 1e-4      # relative to the logits' scale; float reordering stays far below it
PRIVATE_CORPUS_BYTES = 700_000  # its val split holds about EVAL_WINDOWS windows without overlap
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")
TARGET = re.compile(r"torch\.ops\.aten\.([a-z0-9_]+)\.([A-Za-z0-9_]+)")
# Pure operations a language model is made of. Anything else is refused by name: reading files,
# printing, randomness, uninitialised memory, raw strides, in-place writes, custom and higher-order ops.
ALLOWED_OPS = frozenset("""
    __and__ __or__ __xor__ __invert__ _assert_tensor_metadata _log_softmax _softmax _to_copy _unsafe_view abs add addmm alias all amax amin
    any arange argmax argmin baddbmm bitwise_and bitwise_not bitwise_or bitwise_xor bmm cat ceil chunk clamp
    clamp_max clamp_min clone constant_pad_nd contiguous copy cos cosh cumsum detach div dropout einsum
    elu embedding eq erf exp expand expand_as expm1 flatten flip floor floor_divide fmod full full_like gather
    ge gelu glu gt hardtanh index index_select isfinite isinf isnan layer_norm le leaky_relu lerp lift_fresh_copy
    linalg_vector_norm linear log log1p log2 log_softmax logical_and logical_not logical_or logsumexp lt
    masked_fill matmul max maximum mean min minimum mm mul narrow native_layer_norm ne neg new_full new_ones
    new_zeros norm ones ones_like outer pad permute pow prod reciprocal relu remainder repeat repeat_interleave
    reshape rms_norm roll rsqrt rsub scalar_tensor scaled_dot_product_attention
    _scaled_dot_product_flash_attention_for_cpu select sigmoid sign silu sin sinh slice softmax softplus split
    split_with_sizes sqrt square squeeze stack std sub sum t tanh to topk transpose tril triu type_as unbind
    unflatten unsqueeze var view where zeros zeros_like
""".split())


class Refused(Exception):
    """The hand-over cannot be measured: the reason goes to the node, which refutes the result."""


def _emit(doc):
    print("P2P-MEASURE " + json.dumps(doc), flush=True)


def _first_line(e):
    text = str(e)
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _load_tensors(path, torch):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise Refused(f"{os.path.basename(path)} is not a plain file of tensors: {_first_line(e)}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise Refused(f"{os.path.basename(path)} holds something other than named tensors")
    return obj


# how a node's argument or output is held once read (Program._arg, Program._outputs)
_VALUE, _LIST, _TENSOR, _TENSORS, _OPTIONAL_TENSORS = "value", "list", "tensor", "tensors", "optional tensors"


class Program:
    """The handed-over graph, read as data and run by this interpreter: torch's own deserializer is
    never given the run's JSON (it evaluates symbolic shapes with sympy, executes guard code and
    generates Python from names). Each node calls one allowed, non-mutating ATen overload on values
    of the kinds below; the inputs are the weights (by name) and one token tensor; the output is one
    tensor. The graph is a pure function: it cannot keep state between calls or write to its input."""

    def __init__(self, doc, state, constants, torch, device="cpu"):
        self.torch = torch
        self.device = torch.device(device)
        # torch._export.serde.schema's numbering (importing serde itself costs most of a second)
        self.dtypes = {1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64,
                       6: torch.float16, 7: torch.float32, 8: torch.float64, 12: torch.bool, 13: torch.bfloat16}
        self.layouts = {7: torch.strided}
        self.formats = {1: torch.contiguous_format, 2: torch.channels_last, 3: torch.channels_last_3d,
                        4: torch.preserve_format}
        if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
            raise Refused("program.json is not an exported program")
        if doc.get("range_constraints") or doc.get("guards_code"):
            raise Refused("the exported program has symbolic shapes or guards; only static shapes are measured")
        gm = doc["graph_module"]
        graph, signature = gm.get("graph") or {}, gm.get("signature") or {}
        for key in ("sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values"):
            if graph.get(key):
                raise Refused(f"the graph holds {key}: only tensors and constants are measured")
        self.inputs = []  # (name, tensor or None for the tokens)
        user = 0
        for spec in signature.get("input_specs") or []:
            (kind, body), = spec.items() if isinstance(spec, dict) and len(spec) == 1 else (("?", None),)
            if kind == "user_input":
                self.inputs.append((self._name(body["arg"]["as_tensor"]["name"]), None))
                user += 1
            elif kind == "parameter":
                self.inputs.append((self._name(body["arg"]["name"]), self._weight(state, body["parameter_name"])))
            elif kind == "buffer":
                source = state if body.get("persistent") else constants
                self.inputs.append((self._name(body["arg"]["name"]), self._weight(source, body["buffer_name"])))
            elif kind == "tensor_constant":
                self.inputs.append((self._name(body["arg"]["name"]), self._weight(constants, body["tensor_constant_name"])))
            else:
                raise Refused(f"the graph takes a {kind[:40]} input: only weights and one token tensor are measured")
        if user != 1:
            raise Refused(f"the graph takes {user} token inputs, not one")
        outputs = signature.get("output_specs") or []
        if len(outputs) != 1 or "user_output" not in outputs[0]:
            kinds = [next(iter(o), "?") for o in outputs if isinstance(o, dict)]
            raise Refused(f"the graph's outputs are {kinds[:4]}: it must return logits and change nothing "
                          "(no mutated buffers or inputs)")
        self.output = self._name(outputs[0]["user_output"]["arg"]["as_tensor"]["name"])
        nodes = graph.get("nodes") or []
        if len(nodes) > MAX_NODES:
            raise Refused(f"the graph has {len(nodes)} nodes (at most {MAX_NODES})")
        self.nodes = []
        for node in nodes:
            m = TARGET.fullmatch(str(node.get("target", ""))[:300])
            if m is None:
                raise Refused(f"the graph calls {str(node.get('target'))[:80]}, not an ATen operation")
            name, overload = m.groups()
            if name not in ALLOWED_OPS:
                raise Refused(f"the graph calls aten::{name}, which the evaluator does not run")
            packet = getattr(torch.ops.aten, name, None)
            if packet is None or overload not in packet.overloads():
                raise Refused(f"aten::{name}.{overload} does not exist here")
            op = getattr(packet, overload)
            if op._schema.is_mutable:
                raise Refused(f"the graph calls aten::{name}.{overload}, which writes to its inputs")
            if name == "dropout" and any(i.get("name") == "train" and i.get("arg") != {"as_bool": False}
                                         for i in node.get("inputs") or []):
                raise Refused("the graph runs dropout in training mode: a measurement must be repeatable")
            self.nodes.append((op, *self._inputs(node.get("inputs") or []), self._outputs(node.get("outputs") or [])))
        self.release = self._last_uses()

    def _last_uses(self):
        """For each node, the values no later node reads: freed as soon as it ran, as eager mode frees
        a temporary. Keeping every intermediate to the end of a forward made each allocation fresh
        memory (page faults, a cold cache): the interpreter took half again the model's own time."""
        last = {}
        for i, (_, args, kwargs, _) in enumerate(self.nodes):
            for kind, v in [*args, *(a for _, a in kwargs)]:
                if kind is _TENSOR:
                    last[v] = i
                elif kind in (_TENSORS, _OPTIONAL_TENSORS):
                    for name in v:
                        if name is not None:
                            last[name] = i
        release = [[] for _ in self.nodes]
        for name, i in last.items():
            if name != self.output:
                release[i].append(name)
        return [tuple(names) for names in release]

    def _name(self, value):
        if not isinstance(value, str) or NAME.fullmatch(value) is None:
            raise Refused(f"the graph names a value {str(value)[:40]!r}")
        return value

    def _weight(self, source, key):
        if key not in source:
            raise Refused(f"the hand-over lacks the weight {str(key)[:80]}")
        return source[key].to(self.device)

    def _inputs(self, inputs):
        """A node's arguments, read and checked once at load, not at every batch (decoding them per call
        made the interpreter half again as slow as the model itself): each is (how it is held, what)."""
        args, kwargs = [], []
        if not isinstance(inputs, list):
            raise Refused("a node's inputs are not a list")
        for i in inputs:
            arg = self._arg(i.get("arg"))
            if i.get("kind") == 2:
                kwargs.append((str(i.get("name")), arg))
            else:
                args.append(arg)
        return args, kwargs

    def _arg(self, arg):
        (kind, v), = arg.items() if isinstance(arg, dict) and len(arg) == 1 else (("?", None),)
        if kind == "as_none":
            return _VALUE, None
        if kind == "as_tensor":
            return _TENSOR, self._name(v["name"])
        if kind == "as_tensors":
            return _TENSORS, [self._name(t["name"]) for t in v]
        if kind == "as_optional_tensors":
            return _OPTIONAL_TENSORS, [None if "as_none" in t else self._name(t["as_tensor"]["name"]) for t in v]
        if kind in ("as_int", "as_float", "as_bool", "as_string"):
            want = {"as_int": int, "as_float": (int, float), "as_bool": bool, "as_string": str}[kind]
            if not isinstance(v, want):
                raise Refused(f"a {kind} argument holds {type(v).__name__}")
            return _VALUE, v
        if kind in ("as_ints", "as_floats", "as_bools"):
            if not isinstance(v, list) or len(v) > 64:
                raise Refused(f"a {kind} argument is not a short list")
            return _LIST, list(v)
        if kind in ("as_scalar_type", "as_layout", "as_memory_format"):
            table = {"as_scalar_type": self.dtypes, "as_layout": self.layouts, "as_memory_format": self.formats}[kind]
            if v not in table:
                raise Refused(f"the graph uses {kind[3:]} {str(v)[:20]}, which the evaluator does not run")
            return _VALUE, table[v]
        if kind == "as_device":
            return _VALUE, self.device  # the evaluator's device, whatever the run was on
        raise Refused(f"the graph passes an argument of kind {kind[:40]}")

    def _outputs(self, outputs):
        """Where a node's results go, by name, read once at load."""
        if not isinstance(outputs, list):
            raise Refused("a node's outputs are not a list")
        if len(outputs) == 1 and "as_tensor" in outputs[0]:
            return _TENSOR, self._name(outputs[0]["as_tensor"]["name"])
        if len(outputs) == 1 and "as_tensors" in outputs[0]:
            return _TENSORS, [self._name(t["name"]) for t in outputs[0]["as_tensors"]]
        if outputs and not all("as_none" in o for o in outputs):
            return _OPTIONAL_TENSORS, [self._name(o["as_tensor"]["name"]) if "as_tensor" in o else None for o in outputs]
        return _VALUE, None

    def __call__(self, x):
        env = {}
        for name, tensor in self.inputs:
            env[name] = x.clone() if tensor is None else tensor  # a copy: the harness's targets share x's memory

        def value(arg):
            kind, v = arg
            if kind is _TENSOR:
                return env[v]
            if kind is _VALUE:
                return v
            if kind is _LIST:
                return list(v)
            return [None if n is None else env[n] for n in v]

        for (op, args, kwargs, (kind, names)), done in zip(self.nodes, self.release, strict=True):
            result = op(*[value(a) for a in args], **{k: value(a) for k, a in kwargs})
            for name in done:
                env.pop(name, None)
            if kind is _TENSOR:
                env[names] = result
            elif kind is _TENSORS:
                for name, r in zip(names, result, strict=True):
                    env[name] = r
            elif kind is _OPTIONAL_TENSORS:
                if len(names) != len(result):
                    raise Refused("a node's outputs do not match its operation")
                for name, r in zip(names, result, strict=True):
                    if name is not None:
                        env[name] = r
        return env[self.output]


def _load_program(folder, torch, device="cpu"):
    with open(os.path.join(folder, "meta.json"), "rb") as f:
        meta = json.loads(f.read(64 * 1024))
    shape = meta.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) and 0 < d <= MAX_DIM for d in shape)):
        raise Refused(f"the model's input shape {str(shape)[:60]} is not (batch, time)")
    state = _load_tensors(os.path.join(folder, "state_dict.pt"), torch)
    constants = _load_tensors(os.path.join(folder, "constants.pt"), torch)
    try:
        with open(os.path.join(folder, "program.json"), "rb") as f:
            doc = json.loads(f.read())
        program = Program(doc, state, constants, torch, device)
    except Refused:
        raise
    except Exception as e:  # a malformed document: KeyError, TypeError, ValueError, ...
        raise Refused(f"the exported program does not load: {_first_line(e)}") from None
    return program, meta, shape


class _Logits:
    """Calls the graph and checks what comes back: finite logits of shape (batch, time, vocab). It
    also probes causality while scoring: on the first call and on a random share of the others it runs
    the same windows again with every token after a random position t replaced by another window's
    tail, and the logits up to t must not move. The graph is a pure function of its input, so it
    cannot tell a probe from a scored call, nor count calls."""

    def __init__(self, module, torch, seed):
        self.module = module
        self.torch = torch
        self.vocab = None
        self.calls = 0
        self.probes = 0
        self.gen = torch.Generator().manual_seed(seed)

    def _run(self, x):
        torch = self.torch
        try:
            out = self.module(x)
        except Refused:
            raise
        except Exception as e:  # the graph's own failure (a shape it was not exported for, ...)
            raise Refused(f"the model fails on an input of {tuple(x.shape)}: {_first_line(e)}") from None
        if isinstance(out, (tuple, list)):
            out = out[0] if out else None
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

    def __call__(self, x):
        torch = self.torch
        out = self._run(x)
        self.calls += 1
        seq = x.size(1)
        probe = seq >= 2 and ((PROBE_FIRST and self.calls == 1)
                              or float(torch.rand((), generator=self.gen)) < PROBE_CHANCE)
        if probe:
            self.probes += 1
            t = int(torch.randint(0, seq - 1, (), generator=self.gen))
            other = x.roll(1, dims=0) if x.size(0) > 1 else torch.randint(0, int(x.max()) + 1, x.shape, generator=self.gen)
            spliced = x.clone()
            spliced[:, t + 1:] = other[:, t + 1:]
            if x.size(0) == 1 or bool((spliced[:, t + 1:] != x[:, t + 1:]).any()):
                after = self._run(spliced)
                scale = float(out[:, : t + 1].abs().max()) + 1.0
                diff = float((after[:, : t + 1] - out[:, : t + 1]).abs().max())
                if diff > PROBE_TOLERANCE * scale:
                    raise Refused(f"the model looks ahead: its prediction at position {t} changed by {diff:.3g} "
                                  f"when only later tokens changed")
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
    """The same harness on windows no run can have read: autoresearch's on the node's private shard
    ($P2P_PRIVATE_DATA holds it under the validation shard's name: the harness's own loader reads it
    as its "val" split), this project's on the private corpus. A user's own data has neither."""
    shards = os.environ.get("P2P_PRIVATE_DATA", "").strip()
    if shards and hasattr(prepare, "DATA_DIR") and hasattr(prepare, "VAL_FILENAME"):
        if not os.path.isfile(os.path.join(shards, prepare.VAL_FILENAME)):
            return None
        public_dir = prepare.DATA_DIR
        prepare.DATA_DIR = shards
        try:
            return _harness_call(prepare, adapter, meta, device)
        finally:
            prepare.DATA_DIR = public_dir
    if seed is None:
        return None
    corpus = _private_corpus(prepare, seed)
    if corpus is None:
        return None
    public = prepare.load_text
    prepare.load_text = lambda: corpus
    try:
        return _harness_call(prepare, adapter, meta, device)
    finally:
        prepare.load_text = public


def _import_torch():
    """torch, imported at the server's own priority. It once ran in a thread at nice 19 so that the
    import took only what the run's training left idle; on a kernel without autogroups (CI's) a nice-19
    thread beside three nice-0 trainings on two cores got about 1 % of a core, the import took minutes,
    and the first evaluation ran out of its time limit. The server imports torch once per node (it
    stays warm across runs), so the import's cost beside one training is paid once."""
    import torch

    return torch


def _private_wanted(value):
    """The private split decides only a gain beyond the margin over a measured ancestor: the node
    names the value below which that is (P2P_PRIVATE_BELOW; absent: always, as for a baseline)."""
    below = os.environ.get("P2P_PRIVATE_BELOW", "").strip()
    try:
        return not below or value < float(below)
    except ValueError:
        return True


def _setup():
    """torch and the pinned harness. The device is chosen where the
    model is measured (`_device`): a server that asked CUDA anything would fork children that cannot use it."""
    torch = _import_torch()
    sys.path.insert(0, os.getcwd())
    import prepare

    return torch, prepare


def _device(torch):
    device = os.environ.get("P2P_DEVICE", "").strip()
    if device in ("", "auto"):  # as the harnesses choose: a GPU where one is visible
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _measure(folder, torch, prepare, device):
    """The harness's value of the model handed over in `folder` (and the private split's, when it can
    decide anything): the result document, or a refusal's reason."""
    threads = os.environ.get("P2P_THREADS", "").strip()
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    marks = {}
    started = time.monotonic()  # the marks count from the hand-over
    try:
        module, meta, shape = _load_program(folder, torch, device)
        marks["loaded"] = time.monotonic() - started
        logits = _Logits(module, torch, int.from_bytes(os.urandom(8), "little"))
        with torch.no_grad():
            seq = shape[1]
            adapter = _adapter(logits, seq, torch)
            value = float(_harness_call(prepare, adapter, meta, device))
            marks["public"] = time.monotonic() - started
            if not math.isfinite(value):
                raise Refused(f"the harness measured a val_bpb that is not finite ({value})")
            seed = os.environ.get("P2P_PRIVATE_SEED", "").strip()
            wanted = (seed.isdigit() or os.environ.get("P2P_PRIVATE_DATA")) and _private_wanted(value)
            private = _private_bpb(prepare, adapter, meta, device, int(seed) if seed.isdigit() else None) if wanted else None
            marks["private"] = time.monotonic() - started
    except Refused as e:
        return {"error": str(e)}
    return {"val_bpb": value, "private_bpb": private, "input_shape": shape, "probes": logits.probes, "marks": marks,
            "handed_over_after_s": meta.get("handed_over_after_s"),
            "export_s": [meta.get("export_import_s"), meta.get("export_s")], "handover": str(meta.get("method", ""))[:200],
            "seconds": time.monotonic() - started}


SERVE_IDLE_S = 300.0   # a server nobody asked for this long exits (the node starts another when needed)
PER_REQUEST_ENV = ("P2P_SEED", "P2P_PRIVATE_BELOW", "P2P_PRIVATE_SEED")  # what may differ between two evaluations of one server


_UNREAD = bytearray()  # what the server read from stdin past the line it returned


def _next_request(deadline):
    """The node's next line on stdin, or None at its end or once the idle deadline passed. The node
    does not wait for an answer to a hold, so a hold and the next request can come in one read."""
    import select

    while b"\n" not in _UNREAD:
        wait = deadline - time.monotonic()
        if wait <= 0:
            return None
        ready, _, _ = select.select([0], [], [], wait)
        if not ready:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            return None
        _UNREAD.extend(chunk)
    end = _UNREAD.index(b"\n")
    line = bytes(_UNREAD[:end])
    del _UNREAD[:end + 1]
    return json.loads(line)


def _child(request, torch, prepare):
    """A fresh process per evaluation: what a hand-over does to it ends with it, the server never reads one."""
    try:
        for key in PER_REQUEST_ENV:
            os.environ.pop(key, None)
        for key, value in request.get("env", {}).items():
            if key in PER_REQUEST_ENV:
                os.environ[key] = str(value)
        doc = _measure(request["folder"], torch, prepare, _device(torch))
    except BaseException as e:  # noqa: BLE001 - any failure of the evaluation is its answer
        doc = {"error": f"the evaluator failed: {_first_line(e)}"}
    doc["id"] = request["id"]
    _emit(doc)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _warm_up(torch):
    """What every evaluation's first forward paid for (the compute threads, the kernels' first calls,
    the pages this child shares with the server and writes): about 20-40 ms, spent here while the
    next run trains instead of after its hand-over. No hand-over is read yet. On the CPU only: a CUDA
    context made here would hold GPU memory through the next run's training."""
    device = "cpu"
    import torch.nn.functional as F

    with torch.no_grad():
        x = torch.randint(0, 256, (4, 64), device=device)
        h = F.gelu(torch.nn.functional.embedding(x, torch.randn(256, 64, device=device)) @ torch.randn(64, 64, device=device))
        logp = F.log_softmax(h @ torch.randn(64, 256, device=device), dim=-1)
        F.nll_loss(logp.view(-1, 256), x.reshape(-1), reduction="sum").item()


def _spare(torch, prepare):
    """A child forked ahead of its request: it warms up, then waits on a pipe of its own for the one
    request it will measure (the server's stdin is not its). Returns its pid and the pipe's write end."""
    read, write = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid:
        os.close(read)
        return pid, write
    try:
        os.close(write)
        os.close(0)  # the node's requests are the server's
        try:
            _warm_up(torch)
        except Exception:  # noqa: BLE001 - a warm-up that fails leaves the evaluation cold, nothing else
            pass
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(read, 65536)
            if not chunk:
                os._exit(0)  # the server is gone, or ended this spare
            line += chunk
        request = json.loads(line)
    except BaseException:  # noqa: BLE001 - never back into the server's loop
        os._exit(1)
    _child(request, torch, prepare)


def serve():
    """A warm evaluator: torch and the pinned harness imported once, one forked child per hand-over.

    The node writes a request per line on stdin (`{"id", "folder", "env"}`, or `{"hold": seconds}`
    while a run trains), the child prints its `P2P-MEASURE` line with the request's id, and the server
    prints `P2P-EXIT {"id", "status"}` once the child is gone (a child that died without a value).
    The server itself never loads a hand-over: each is loaded in a child forked from a process that
    has run no torch operation, so no thread pool is inherited half-used; the child is forked (and
    warmed up) ahead of its request. It exits at the end of its stdin, or after SERVE_IDLE_S without a
    request."""
    import gc

    torch, prepare = _setup()
    gc.freeze()  # the children's collections leave the server's objects alone (fewer pages copied on write)
    print("P2P-SERVE " + json.dumps({"ready": True, "threads": len(os.listdir("/proc/self/task"))}), flush=True)
    deadline = time.monotonic() + SERVE_IDLE_S
    spare, spare_pipe = _spare(torch, prepare)
    while True:
        request = _next_request(deadline)
        if request is None:
            return
        if "hold" in request:
            deadline = max(deadline, time.monotonic() + float(request["hold"]))
            continue
        try:
            os.write(spare_pipe, json.dumps(request).encode() + b"\n")
        except OSError:
            pass  # the spare died: its exit is this request's answer
        os.close(spare_pipe)
        while True:  # as PID 1 of its sandbox the server also reaps whatever the child left
            done, status = os.waitpid(-1, 0)
            if done == spare:
                break
        print("P2P-EXIT " + json.dumps({"id": request["id"], "status": os.waitstatus_to_exitcode(status)}), flush=True)
        spare, spare_pipe = _spare(torch, prepare)
        deadline = time.monotonic() + SERVE_IDLE_S


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        print("usage: p2p_evaluate.py --serve (started by the node: harness/warm.py)", file=sys.stderr)
        raise SystemExit(2)
    serve()
    # the node closed the server's stdin, or it was idle: tearing torch down takes half a second
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
