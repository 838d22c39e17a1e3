#!/usr/bin/env python3
"""A plain-script "agent" for `--proposer command`: nudges one constant of train.py.

It runs in the scratch copy of the baseline the node makes for each proposal (cwd), like any coding agent
would, edits train.py in place, and prints a one-line description of its change as its last output line. The tests use it; it also shows the
contract a real agent command must follow. Usage in node.toml:

    [research]
    proposer = "command"
    proposer_command = "python3 /path/to/examples/proposers/nudge_constant.py"

Environment it may read: P2P_PROGRAM (program.md), P2P_SWARM (SWARM.md), P2P_BASELINE (commit id),
P2P_PROMPT / P2P_PROMPT_FILE (the node's one-shot prompt, which a real agent is given).
Set NUDGE_MODE=none to make no change, NUDGE_MODE=other to touch only another file (discarded: only
train.py comes back), NUDGE_MODE=broken to write a train.py that does not parse (the node must skip
each of these cleanly).
"""

import os
import random
import re
import sys
import time

mode = os.environ.get("NUDGE_MODE", "nudge")
if mode == "none":
    print("nothing worth changing")
    sys.exit(0)
if mode == "other":
    with open("prepare.py", "a") as f:
        f.write("\n# tampering with the harness\n")
    print("edited prepare.py")
    sys.exit(0)
src = open("train.py").read()
if mode == "broken":
    open("train.py", "w").write(src + "\ndef broken(:\n")
    print("wrote broken code")
    sys.exit(0)
rng = random.Random(int(os.environ.get("NUDGE_SEED", time.time_ns())))
m = re.search(r"^LEARNING_RATE\s*=\s*([0-9.eE+-]+)", src, re.MULTILINE)
if not m:
    print("no LEARNING_RATE constant found", file=sys.stderr)
    sys.exit(1)
old = float(m.group(1))
new = float(f"{old * rng.choice([0.5, 0.7, 1.4, 2.0]) * (1 + rng.random() / 100):.4g}")
src = src[: m.start(1)] + repr(new) + src[m.end(1):]
open("train.py", "w").write(src)
print(f"LEARNING_RATE {old} -> {new}")
