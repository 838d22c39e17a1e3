"""Run train.py and hand its model over at the harness's evaluation (standalone: runs in the sandbox).

Started as `python p2p_handover.py train.py` inside the training sandbox. Before train.py runs, the
pinned harness's `prepare.evaluate_bpb` is wrapped: at the first forward call the harness makes, the
model is exported with `torch.export` (a graph of ATen operations and its tensors: no Python of the
run's survives) and written to $P2P_HANDOVER, then the harness's own evaluation goes on, so train.py
prints its summary as before (autoresearch's train.py runs unchanged).

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
MAX_ARG_CHARS = 200


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

    import torch
    from torch._export.serde.serialize import serialize

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
        "torch": torch.__version__,
    }
    buf = io.BytesIO(json.dumps(meta).encode())
    _write("meta.json", buf.getvalue())  # last: its presence means the hand-over is complete


def _wrap_harness():
    import prepare

    original = prepare.evaluate_bpb
    done = []

    def evaluate_bpb(model, *args, **kwargs):
        if not done:
            done.append(True)
            register = getattr(model, "register_forward_pre_hook", None)
            if register is None:
                _fail(f"the model is a {type(model).__name__}, not a torch.nn.Module: it cannot be exported")
            else:
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

                handle = register(hook, with_kwargs=True)
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
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
