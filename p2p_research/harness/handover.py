"""Run train.py and hand its model over at the harness's evaluation (standalone: runs in the sandbox).

Started as `python p2p_handover.py train.py` inside the training sandbox. Before train.py runs, the
pinned harness's `prepare.evaluate_bpb` is wrapped: at the first forward call the harness makes, the
model is exported with `torch.export` (a graph of ATen operations and its tensors: no Python of the
run's survives) and written to $P2P_HANDOVER. The evaluation in this process stops there: the node
measures the handed-over model in a process of its own and writes the value back
($P2P_HANDOVER/measured.json), which the wrapper returns, so train.py prints its summary as before
(autoresearch's train.py runs unchanged) and the run does not evaluate twice.

Where the node withholds the validation data from the run ($P2P_TRAIN_SPLIT: the training bytes
alone, for this project's harness), the harness's validation split is replaced here by zeros of the
same shape: the export only needs the shapes of the harness's calls, never the data. If the model
cannot be handed over, or the node's evaluator refuses it, the harness's own evaluation runs here as
before (and fails where the validation data is withheld: the node says why).

Nothing here is trusted by the node: train.py runs in this process and may undo the wrapper or write
any files it likes to the hand-over folder. The node's evaluator treats whatever it finds there as
hostile input. The wrapper only makes the honest path automatic.

Standard library and torch only; it must not import p2p_research (the sandbox does not see it).
"""

import json
import os
import runpy
import sys
import time

_STARTED = time.monotonic()
OUT = os.environ.get("P2P_HANDOVER", "")
TRAIN_SPLIT = os.environ.get("P2P_TRAIN_SPLIT", "")
MAX_ARG_CHARS = 200
MEASURED = "measured.json"
POLL_S = 0.05


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


def _fail(reason):
    try:
        _write("refused.txt", reason[:500].encode("utf-8", "replace"))
    except OSError:
        pass


def _export(model, idx, call_args, call_kwargs):
    import io

    t0 = time.monotonic()
    import torch
    from torch._export.serde.serialize import serialize

    t1 = time.monotonic()

    # static shapes: the evaluator runs the harness's own shapes, and refuses symbolic ones
    ep = torch.export.export(model, (idx,), strict=False)
    art = serialize(ep)
    # state_dict and constants are torch.save'd dicts of tensors: the evaluator reads them with
    # weights_only=True and hands the dicts to deserialize (never torch.export.load, which unpickles)
    _write("program.json", art.exported_program)
    _write("state_dict.pt", art.state_dict)
    _write("constants.pt", art.constants)
    meta = {
        "input_shape": list(idx.shape),
        "input_dtype": str(idx.dtype),
        "args": [_plain(a) for a in call_args][:8],
        "kwargs": {str(k)[:40]: _plain(v) for k, v in list(call_kwargs.items())[:8]},
        "handed_over_after_s": time.monotonic() - _STARTED,
        "export_import_s": round(t1 - t0, 3),
        "export_s": round(time.monotonic() - t1, 3),
        "torch": torch.__version__,
    }
    buf = io.BytesIO(json.dumps(meta).encode())
    _write("meta.json", buf.getvalue())  # last: its presence means the hand-over is complete


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
    except Exception:
        pass


def _withhold_validation(prepare):
    """This project's harness, with the training bytes alone ($P2P_TRAIN_SPLIT): the validation split
    becomes zeros of the harness's own minimum size, so its evaluation still calls the model with the
    shapes the evaluator will use."""
    with open(TRAIN_SPLIT, "rb") as f:
        train = f.read()
    stand_in = bytes(4 * (prepare.EVAL_CONTEXT + 1))
    prepare.load_text = lambda: train + stand_in
    prepare.split_bytes = lambda: (train, stand_in)


def _wrap_harness():
    import prepare

    original = prepare.evaluate_bpb
    calls = []
    if TRAIN_SPLIT:
        _withhold_validation(prepare)

    def evaluate_bpb(model, *args, **kwargs):
        calls.append(True)
        if len(calls) > 1:
            if TRAIN_SPLIT:
                raise RuntimeError("the harness evaluates once: the model was handed over at the first "
                                   "evaluate_bpb call, and this run has no validation data")
            return original(model, *args, **kwargs)
        register = getattr(model, "register_forward_pre_hook", None)
        if register is None:
            _fail(f"the model is a {type(model).__name__}, not a torch.nn.Module: it cannot be exported")
            if TRAIN_SPLIT:
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
            except Exception as e:  # any export failure is a reason, never the run's crash
                _fail(f"torch.export failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
                return None
            raise _HandedOver

        handle = register(hook, with_kwargs=True)
        try:
            if TRAIN_SPLIT:
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
        if TRAIN_SPLIT:
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
            if TRAIN_SPLIT:  # without the wrapper the harness would look for data this run does not have
                print(f"p2p_handover: cannot withhold the validation data: {e}", file=sys.stderr)
                raise SystemExit(1) from None
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
