"""Run train.py and hand its model over at the harness's evaluation (standalone: runs in the sandbox).

Started as `python p2p_handover.py train.py` inside the training sandbox. Before train.py runs, the
pinned harness's `prepare.evaluate_bpb` is wrapped: at the first forward call the harness makes, the
model's forward is recorded as the ATen operations it runs (`_record`, a dispatch mode; `torch.export`
where the recording cannot take the model) and written to $P2P_HANDOVER as a graph of ATen operations
and its tensors (no Python of the run's survives). The evaluation in this process stops there: the node
measures the handed-over model in a process of its own and writes the value back
($P2P_HANDOVER/measured.json), which the wrapper returns, so train.py prints its summary as before
(autoresearch's train.py runs unchanged) and the run does not evaluate twice.

Where the node withholds the validation data from the run ($P2P_TRAIN_SPLIT: the training bytes
alone, for this project's harness; $P2P_WITHHOLD_VAL: autoresearch's validation shard is unreadable
in the sandbox), the harness's validation split is replaced here by zeros of the same shape: the
hand-over only needs the shapes of the harness's calls, never the data. If the model
cannot be handed over, or the node's evaluator refuses it, the harness's own evaluation runs here as
before (and fails where the validation data is withheld: the node says why).

Nothing here is trusted by the node: train.py runs in this process and may undo the wrapper or write
any files it likes to the hand-over folder. The node's evaluator treats whatever it finds there as
hostile input. The wrapper only makes the honest path automatic.

Standard library and torch only; it must not import p2p_research (the sandbox does not see it).
"""

import contextlib
import json
import os
import runpy
import sys
import time

_STARTED = time.monotonic()
OUT = os.environ.get("P2P_HANDOVER", "")
TRAIN_SPLIT = os.environ.get("P2P_TRAIN_SPLIT", "")
WITHHELD = bool(TRAIN_SPLIT or os.environ.get("P2P_WITHHOLD_VAL"))  # the run has no validation data
MAX_ARG_CHARS = 200
MEASURED = "measured.json"
POLL_S = 0.005  # the run waits only from the hand-over to the value: a fifth of a second on a short run


class _HandedOver(BaseException):
    """Stops the harness's in-process evaluation once the model is handed over (a BaseException, so
    an `except Exception` in the evaluation's path does not swallow it)."""


def _plain(value):
    """The evaluation call's arguments as JSON the evaluator can rebuild from (objects by type name)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value[:MAX_ARG_CHARS]
    return {"__object__": type(value).__name__[:MAX_ARG_CHARS]}


def _write(name, data):
    tmp = os.path.join(OUT, name + ".part")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(OUT, name))


def _first_line(e, limit):
    text = str(e)
    return text.splitlines()[0][:limit] if text else ""


def _fail(reason):
    try:
        _write("refused.txt", reason[:500].encode("utf-8", "replace"))
    except OSError:
        pass


class _Unrecordable(Exception):
    """The forward did something the recording cannot write as a graph of pure ATen calls on tensors
    (a mutation, a value read back into Python, an operation outside ATen): torch.export takes over."""


# torch._export.serde.schema's numbering, as the evaluator reads it (importing serde costs most of a second)
_DTYPES = {"uint8": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "float16": 6, "float32": 7, "float64": 8,
           "bool": 12, "bfloat16": 13}
_FORMATS = {"contiguous_format": 1, "channels_last": 2, "channels_last_3d": 3, "preserve_format": 4}


class _Ref:
    """A recorded tensor argument, by its name in the graph (for the replay check)."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


def _record(model, idx):
    """The model's forward on `idx`, recorded as the ATen operations it runs, in the evaluator's
    format (the part of torch.export's program.json schema the evaluator reads). Why not torch.export:
    its import and tracing cost most of a second at every hand-over (a fifth of a short run), where a
    dispatch mode is part of torch's import already. The recording runs the forward once, for real,
    at the harness's own shapes (static, as the evaluator requires); the graph is the kernels the
    model ran.

    An in-place operation on a tensor the forward made itself and nothing else shares (torch's own
    decompositions do this, e.g. rms_norm's `add_`) is written as its out-of-place twin, the name then
    meaning the new value, so the graph stays a pure function. Any other write, a value read back into
    Python (`.item()`: the graph would hold this one input's answer), an operation outside ATen or
    anything else the format cannot say raises _Unrecordable before it runs. Work the dispatcher does
    not see (a hand-written kernel writing into a tensor, a value computed outside torch's operations)
    is caught by replaying the graph on other tokens: it must give the forward's logits for them. On
    any of these the caller exports as before, so such a model is handed over, or refused, exactly as
    without the recording. Returns (program document, weights by name, constants by name)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.weak import WeakIdKeyDictionary

    # tensor -> its name in the graph (weak: the forward frees its intermediates as it goes): node
    # outputs t<n>, parameters p<n>, buffers b<n>, constants c<n>, and the tokens
    names = WeakIdKeyDictionary()
    made = WeakIdKeyDictionary()    # the forward's own intermediates: what an in-place call may rewrite
    shared = WeakIdKeyDictionary()  # intermediates a view or alias also reaches: never rewritten in place
    specs, state, constants, nodes, steps = [], {}, {}, [], []
    inputs_by_name = {"tokens": idx}
    for i, (key, p) in enumerate(model.named_parameters()):
        names[p] = f"p{i}"
        specs.append({"parameter": {"arg": {"name": f"p{i}"}, "parameter_name": key}})
        state[key] = inputs_by_name[f"p{i}"] = p.detach()
    for i, (key, b) in enumerate(model.named_buffers()):
        names[b] = f"b{i}"
        specs.append({"buffer": {"arg": {"name": f"b{i}"}, "buffer_name": key, "persistent": True}})
        state[key] = inputs_by_name[f"b{i}"] = b.detach()
    names[idx] = "tokens"
    specs.append({"user_input": {"arg": {"as_tensor": {"name": "tokens"}}}})

    def tensor(t):
        name = names.get(t)
        if name is None:  # made without an ATen call (a plain attribute, `.data`): a constant, as it is now
            name = f"c{len(constants)}"
            constants[name] = inputs_by_name[name] = t.detach().clone()
            names[t] = name
            specs.append({"tensor_constant": {"arg": {"name": name}, "tensor_constant_name": name}})
        return {"name": name}

    def value(v, schema_type):
        """(the argument as the evaluator reads it, the same for the replay)"""
        if v is None:
            return {"as_none": True}, None
        if isinstance(v, torch.Tensor):
            t = tensor(v)
            return {"as_tensor": t}, _Ref(t["name"])
        for kind, types in (("as_bool", bool), ("as_int", int), ("as_float", float), ("as_string", str)):
            if isinstance(v, types):
                return {kind: v}, v
        if isinstance(v, torch.dtype) and str(v)[6:] in _DTYPES:
            return {"as_scalar_type": _DTYPES[str(v)[6:]]}, v
        if v is torch.strided:
            return {"as_layout": 7}, v
        if isinstance(v, torch.memory_format) and str(v)[6:] in _FORMATS:
            return {"as_memory_format": _FORMATS[str(v)[6:]]}, v
        if isinstance(v, torch.device):
            return {"as_device": {"type": v.type, "index": v.index}}, v
        if isinstance(v, (list, tuple)):
            items = list(v)
            if any(isinstance(x, torch.Tensor) for x in items) or (not items and "Tensor" in schema_type):
                refs = [None if x is None else tensor(x) for x in items if x is None or isinstance(x, torch.Tensor)]
                replay = [None if r is None else _Ref(r["name"]) for r in refs]
                if len(refs) == len(items) and None not in refs:
                    return {"as_tensors": refs}, replay
                if len(refs) == len(items):
                    return {"as_optional_tensors": [{"as_none": True} if r is None else {"as_tensor": r}
                                                    for r in refs]}, replay
            elif items and all(isinstance(x, bool) for x in items):
                return {"as_bools": items}, items
            elif all(type(x) is int for x in items) and "float" not in schema_type:
                return {"as_ints": items}, items
            elif all(type(x) in (int, float) for x in items):
                return {"as_floats": [float(x) for x in items]}, [float(x) for x in items]
        raise _Unrecordable(f"an argument of type {type(v).__name__}")

    def output(t, name):
        if not isinstance(t, torch.Tensor):
            raise _Unrecordable(f"an operation returns a {type(t).__name__} (a value read back into Python)")
        names[t] = name
        made[t] = True
        return {"name": name}

    def outputs(func, out):
        returns, n = func._schema.returns, len(nodes)
        if not returns:
            return []
        if len(returns) == 1 and isinstance(out, (list, tuple)):  # Tensor[]
            return [{"as_tensors": [output(t, f"t{n}_{j}") for j, t in enumerate(out)]}]
        if len(returns) == 1:
            return [{"as_tensor": output(out, f"t{n}")}]
        if not isinstance(out, tuple) or len(out) != len(returns):
            raise _Unrecordable(f"{func} returns {type(out).__name__}")
        return [{"as_none": True} if t is None else {"as_tensor": output(t, f"t{n}_{j}")} for j, t in enumerate(out)]

    def functional(func, args):
        """The out-of-place twin of an in-place call on an unshared intermediate, else None."""
        schema = func._schema
        written = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        if not (args and written == schema.arguments[:1] and schema.name.endswith("_")):
            return None
        target = args[0]
        if not isinstance(target, torch.Tensor) or target not in made or target in shared:
            return None
        twin = getattr(getattr(torch.ops.aten, schema.name[len("aten::"):-1], None), func._overloadname, None)
        if twin is None or twin._schema.is_mutable or \
                [a.name for a in twin._schema.arguments] != [a.name for a in schema.arguments]:
            return None
        return twin

    broken = []
    schemas = {}  # func -> what the recording reads of its schema (read once: a forward repeats its calls)

    def schema_of(func):
        known = schemas.get(func)
        if known is None:
            schema = func._schema
            arguments = [(a.name, a.kwarg_only, str(a.type)) for a in schema.arguments]
            known = schemas[func] = (schema.is_mutable, arguments, {a[0] for a in arguments},
                                     any(r.alias_info is not None for r in schema.returns))
        return known

    class Recorder(TorchDispatchMode):
        @classmethod
        def _should_skip_dynamo(cls):
            # torch wraps a mode's __torch_dispatch__ to keep torch.compile out of it, and that wrapper
            # imports torch._dynamo at its first call, where a run that never compiles has not
            # imported it (its import alone is most of a second). Compiled code is kept out below
            return False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            try:
                op = func
                if func.namespace != "aten":
                    raise _Unrecordable(f"the forward calls {func}, not an ATen operation")
                if func is torch.ops.aten.lift_fresh.default:  # a tensor literal (`torch.tensor(...)`): a constant
                    tensor(args[0])
                    return func(*args, **kwargs)
                mutable, arguments, argument_names, aliases = schema_of(func)
                if mutable:
                    op = functional(func, args)
                    if op is None:  # not run: the export takes over and shows the write as it is
                        raise _Unrecordable(f"the forward calls {func}, which writes to a weight, an input or a "
                                            "tensor something else also reaches")
                if len(args) > len(arguments) or not argument_names.issuperset(kwargs):
                    raise _Unrecordable(f"{func} is called with arguments its schema does not name")
                inputs, replay_args, replay_kwargs = [], [], {}
                for j, (name, kwarg_only, schema_type) in enumerate(arguments):
                    if j < len(args):
                        v, kind = args[j], 2 if kwarg_only else 1
                    elif name in kwargs:
                        v, kind = kwargs[name], 2
                    else:
                        continue
                    encoded, replay = value(v, schema_type)
                    inputs.append({"name": name, "arg": encoded, "kind": kind})
                    if kind == 2:
                        replay_kwargs[name] = replay
                    else:
                        replay_args.append(replay)
                out = func(*args, **kwargs)
                written = outputs(op, out)
                nodes.append({"target": f"torch.ops.{op}", "inputs": inputs, "outputs": written})
                steps.append((op, replay_args, replay_kwargs, written))
                if op is func and aliases:  # a view or alias
                    for t in [*args, *kwargs.values(), *(out if isinstance(out, (list, tuple)) else [out])]:
                        if isinstance(t, torch.Tensor):
                            shared[t] = True
                return out
            except _Unrecordable as e:
                broken.append(str(e))  # the forward may catch it
                raise

    # code compiled before the recording runs eagerly in it and in the check (a run that trains with
    # torch.optim has imported torch._dynamo; one that has not cannot have compiled anything)
    with torch.compiler.set_stance("force_eager") if "torch._dynamo" in sys.modules else contextlib.nullcontext():
        with torch.no_grad(), Recorder():
            out = model(idx)
        if broken:
            raise _Unrecordable(broken[0])
        if not isinstance(out, torch.Tensor):
            raise _Unrecordable(f"the forward returns a {type(out).__name__}, not one tensor")
        result = tensor(out)["name"]
        del out  # the check's logits take its memory
        # every token changed, and still a token (0 stays valid, 1 is in any vocabulary)
        other = torch.where(idx > 0, idx - 1, torch.ones_like(idx))
        with torch.no_grad():
            expected = model(other)
        _check_replay(torch, steps, inputs_by_name, other, result, expected)
    doc = {"graph_module": {"graph": {"nodes": nodes},
                            "signature": {"input_specs": specs,
                                          "output_specs": [{"user_output": {"arg": {"as_tensor": {"name": result}}}}]}},
           "range_constraints": {}, "guards_code": [], "recorded_by": "p2p_handover", "torch_version": torch.__version__}
    return doc, state, constants


def _check_replay(torch, steps, inputs, idx, result, expected):
    """Run the recorded operations alone, as the evaluator will (on a copy of the tokens, no autocast,
    each value freed after its last use), on other tokens than the recording's, and compare with the
    forward's own output for them. What the dispatcher did not see shows as a difference: a kernel
    writing into memory directly, a value computed outside torch's operations and held as a constant,
    data read back unseen (`.numpy()`), a branch the tokens decided. The kernels are the forward's own,
    so the tolerance is tight."""
    last = {}
    for i, (_, args, kwargs, _) in enumerate(steps):
        for ref in [*args, *kwargs.values()]:
            for r in ref if isinstance(ref, list) else [ref]:
                if isinstance(r, _Ref):
                    last[r.name] = i
    dies = {}  # step -> the values last used there
    for name, i in last.items():
        if name != result:
            dies.setdefault(i, []).append(name)
    env = dict(inputs)
    env["tokens"] = idx.clone()

    def resolve(v):
        if isinstance(v, _Ref):
            return env[v.name]
        if isinstance(v, list):
            return [resolve(x) for x in v]
        return v

    try:
        with torch.no_grad(), contextlib.ExitStack() as autocast_off:
            for device_type in sorted({"cpu", idx.device.type}):  # one context each (entering one twice
                autocast_off.enter_context(torch.autocast(device_type, enabled=False))  # loses its state)
            for i, (op, args, kwargs, written) in enumerate(steps):
                out = op(*[resolve(a) for a in args], **{k: resolve(v) for k, v in kwargs.items()})
                if len(written) == 1 and "as_tensors" in written[0]:
                    env.update((t["name"], r) for t, r in zip(written[0]["as_tensors"], out, strict=True))
                elif len(written) == 1:
                    env[written[0]["as_tensor"]["name"]] = out
                else:
                    env.update((w["as_tensor"]["name"], r) for w, r in zip(written, out, strict=True) if "as_tensor" in w)
                for name in dies.get(i, ()):
                    env.pop(name, None)
            got = env[result]
    except Exception as e:
        raise _Unrecordable(f"the recorded graph does not run: {type(e).__name__}: {str(e)[:100]}") from None
    if got.shape != expected.shape or got.dtype != expected.dtype:
        raise _Unrecordable("the recorded graph gives another shape or dtype than the forward")
    if not torch.equal(got, expected):
        scale = float(expected.detach().abs().float().max()) + 1.0 if expected.numel() else 1.0
        diff = float((got.float() - expected.float()).abs().max()) if expected.numel() else 0.0
        if not diff <= 1e-4 * scale:  # (a NaN fails too)
            raise _Unrecordable(f"the recorded graph gives other logits than the forward (by {diff:.3g}): "
                                "the forward does work the dispatcher does not see")


def _save(name, tensors):
    import torch

    tmp = os.path.join(OUT, name + ".part")
    torch.save(tensors, tmp)
    os.replace(tmp, os.path.join(OUT, name))


class _ExportFailed(Exception):
    """Neither the recording nor torch.export could write the model: the reason names both."""


def _export(model, idx, call_args, call_kwargs):
    """Write the hand-over: the recording (_record) where it can take the model, torch.export (the
    hand-over's only way before it, most of a second slower: it imports torch._dynamo's tracing and
    its serializer) for anything else. meta.json is written last."""
    import torch

    started, imported = time.monotonic(), 0.0
    method = "recorded"
    try:
        doc, state, constants = _record(model, idx)
        # state_dict and constants are torch.save'd dicts of tensors, read with weights_only=True
        _save("state_dict.pt", state)
        _save("constants.pt", constants)
        _write("program.json", json.dumps(doc).encode())
    except Exception as e:  # _Unrecordable, or the forward's own failure: exported, as before the recording
        method = f"exported ({type(e).__name__}: {_first_line(e, 160)})"
        t = time.monotonic()
        from torch._export.serde.serialize import serialize

        imported = time.monotonic() - t
        try:
            # static shapes: the evaluator runs the harness's own shapes, and refuses symbolic ones
            art = serialize(torch.export.export(model, (idx,), strict=False))
        except Exception as failed:
            raise _ExportFailed(f"{type(failed).__name__}: {_first_line(failed, 300)} (not recorded either: "
                                f"{_first_line(e, 160)})") from None
        # the evaluator hands these dicts to its own loader (never torch.export.load, which unpickles)
        _write("program.json", art.exported_program)
        _write("state_dict.pt", art.state_dict)
        _write("constants.pt", art.constants)
    meta = {
        "input_shape": list(idx.shape),
        "input_dtype": str(idx.dtype),
        "args": [_plain(a) for a in call_args][:8],
        "kwargs": {str(k)[:40]: _plain(v) for k, v in list(call_kwargs.items())[:8]},
        "handed_over_after_s": time.monotonic() - _STARTED,
        "export_import_s": round(imported, 3),  # torch.export's serializer, where the model was exported
        "export_s": round(time.monotonic() - started - imported, 3),
        "method": method,
        "torch": torch.__version__,
    }
    _write("meta.json", json.dumps(meta).encode())  # last: its presence means the hand-over is complete


def _measured(wait_s):
    """The node's value for the handed-over model, or (None, why) when it gives none in `wait_s`."""
    path = os.path.join(OUT, MEASURED)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read(4096).decode("utf-8", "replace"))
        except (OSError, ValueError):
            time.sleep(POLL_S)
            continue
        value = doc.get("val_bpb") if isinstance(doc, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), ""
        return None, str(doc.get("error", "no value") if isinstance(doc, dict) else "no value")[:300]
    return None, f"no value from the node within {wait_s:.0f} s"


def _release_memory():
    """The run waits while the node evaluates: give back what the allocator caches (a GPU's memory
    is what the evaluator needs; on a CPU nothing is gained, and a collection costs 0.2 s)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            import gc

            gc.collect()
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - giving back a GPU's cache is best effort; the run waits either way
        pass


def _withhold_validation(prepare):
    """The validation data this run has not got, replaced by zeros of the shapes the harness's
    evaluation asks for, so it still calls the model as the evaluator will: this project's split
    ($P2P_TRAIN_SPLIT), or autoresearch's validation shard ($P2P_WITHHOLD_VAL)."""
    if TRAIN_SPLIT:
        _withhold_split(prepare)
    else:
        _withhold_val_shard(prepare)


def _withhold_split(prepare):
    """This project's harness, with the training bytes alone: the validation split becomes zeros of
    the harness's own minimum size."""
    with open(TRAIN_SPLIT, "rb") as f:
        train = f.read()
    stand_in = bytes(4 * (prepare.EVAL_CONTEXT + 1))
    prepare.load_text = lambda: train + stand_in
    prepare.split_bytes = lambda: (train, stand_in)


def _withhold_val_shard(prepare):
    """autoresearch's harness: its loader's "val" split becomes batches of zeros of the shape asked
    for (the shard itself is unreadable here); the other splits load as before."""
    loader = prepare.make_dataloader

    def make_dataloader(tokenizer, B, T, split, *args, **kwargs):
        if split != "val":
            return loader(tokenizer, B, T, split, *args, **kwargs)
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

        def zeros():
            while True:
                x = torch.zeros((B, T), dtype=torch.long, device=device)
                yield x, torch.zeros_like(x), 1

        return zeros()

    make_dataloader.__doc__ = loader.__doc__
    prepare.make_dataloader = make_dataloader


def _wrap_harness():
    import prepare

    original = prepare.evaluate_bpb
    calls = []
    if WITHHELD:
        _withhold_validation(prepare)

    def evaluate_bpb(model, *args, **kwargs):
        calls.append(True)
        if len(calls) > 1:
            if WITHHELD:
                raise RuntimeError("the harness evaluates once: the model was handed over at the first "
                                   "evaluate_bpb call, and this run has no validation data")
            return original(model, *args, **kwargs)
        register = getattr(model, "register_forward_pre_hook", None)
        if register is None:
            _fail(f"the model is a {type(model).__name__}, not a torch.nn.Module: it cannot be exported")
            if WITHHELD:
                raise RuntimeError("the model cannot be handed over (not a torch.nn.Module), and this run "
                                   "has no validation data to evaluate it itself")
            return original(model, *args, **kwargs)
        handle = None

        def hook(module, hook_args, hook_kwargs):
            handle.remove()
            if not hook_args:
                _fail("the harness called the model without a positional input")
                return None
            try:
                _export(module, hook_args[0], args, kwargs)
            except Exception as e:  # noqa: BLE001 - any export failure is a reason, never the run's crash
                _fail(f"torch.export failed: {e}" if isinstance(e, _ExportFailed) else
                      f"the hand-over failed: {type(e).__name__}: {_first_line(e, 300)}")
                return None
            raise _HandedOver

        handle = register(hook, with_kwargs=True)
        try:
            if WITHHELD:
                original(model, *args, **kwargs)  # on zeros: only a hand-over comes out of it
                raise RuntimeError("the model was not handed over (see the hand-over's reason), and this "
                                   "run has no validation data to evaluate it itself")
            return original(model, *args, **kwargs)
        except _HandedOver:
            pass
        finally:
            handle.remove()
        _release_memory()
        value, why = _measured(float(os.environ.get("P2P_HANDOVER_WAIT_S", "600")))
        if value is not None:
            return value
        if WITHHELD:
            raise RuntimeError(f"the node's harness refused the handed-over model ({why}), and this run "
                               "has no validation data to evaluate it itself")
        print(f"p2p_handover: the node did not measure the model ({why}); the harness evaluates it here",
              file=sys.stderr)
        return original(model, *args, **kwargs)

    evaluate_bpb.__doc__ = original.__doc__
    prepare.evaluate_bpb = evaluate_bpb


def main():
    if len(sys.argv) < 2:
        print("usage: p2p_handover.py train.py [args...]", file=sys.stderr)
        raise SystemExit(2)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    if OUT:
        try:
            _wrap_harness()
        except Exception as e:
            _fail(f"the harness's evaluate_bpb cannot be wrapped: {type(e).__name__}: {e}")
            if WITHHELD:  # without the wrapper the harness would look for data this run does not have
                print(f"p2p_handover: cannot withhold the validation data: {e}", file=sys.stderr)
                raise SystemExit(1) from None
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
