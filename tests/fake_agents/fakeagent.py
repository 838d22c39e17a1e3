"""What the scripted stand-ins for Claude Code, Codex CLI and aider do once their flags are parsed.

Each stand-in parses exactly the flags its adapter in examples/proposers/ passes (argparse: an unknown
or misspelt flag exits 2, as the real CLIs do), checks it received the node's one-shot prompt, then
behaves like a careless agent: it runs git in its folder (a branch and a commit), writes results.tsv,
a log and a cache, edits prepare.py, and makes its change of train.py. Only that change may reach
the node. FAKE_EDIT picks the change:
  lr10      code: scales the matrix learning rate by 10 in the optimizer setup (a large improvement)
  matrix    constant: MATRIX_LR 0.001 -> 0.01 (the same improvement, as a constant edit)
  note      code: appends a harmless statement (trains the same)
  lr10fmt   the same program as lr10, spelt differently
  boom      code: fails after training (boomfmt: the same program, spelt differently)
  slow      code: sleeps 20 s after training (slowfmt: the same program, spelt differently)
  none      no change
FAKE_LAST_LINE overrides the final line (empty: print none).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EDITS = {
    "lr10": ("matrix_lr=MATRIX_LR,", "matrix_lr=MATRIX_LR * 10,", "scale the matrix learning rate by 10 in setup_optimizer"),
    # the same program as lr10, written differently (spacing, parentheses, a comment)
    "lr10fmt": ("matrix_lr=MATRIX_LR,", "matrix_lr = (MATRIX_LR*10) ,  # ten times larger",
                "multiply the matrix LR by ten"),
    "matrix": ("MATRIX_LR = 0.001", "MATRIX_LR = 0.01", "MATRIX_LR 0.001 -> 0.01"),
}


def act(agent: str, prompt: str) -> str:
    """Do the agent's work in the cwd; returns its final message."""
    if "exactly ONE change" not in prompt or "do not use git" not in prompt:
        print(f"{agent}: not the node's one-shot prompt", file=sys.stderr)
        sys.exit(3)
    if not Path("program.md").is_file() or not Path("SWARM.md").is_file():
        print(f"{agent}: program.md or SWARM.md missing", file=sys.stderr)
        sys.exit(3)
    # careless: git in its folder, files left behind, the harness touched
    subprocess.run(["git", "checkout", "-q", "-b", "autoresearch/fake"], capture_output=True)
    Path("results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n")
    Path(f".{agent}.history.md").write_text("# history\n")
    Path("__pycache__").mkdir(exist_ok=True)
    Path("__pycache__/train.cpython-311.pyc").write_bytes(b"\0" * 16)
    with open("prepare.py", "a") as f:
        f.write("\n# an agent touched the harness\n")
    mode = os.environ.get("FAKE_EDIT", "lr10")
    src = Path("train.py").read_text()
    if mode in EDITS:
        old, new, line = EDITS[mode]
        if old not in src:
            print(f"{agent}: cannot apply {mode}: {old!r} not in train.py", file=sys.stderr)
            sys.exit(4)
        src = src.replace(old, new, 1)
    elif mode in ("boom", "boomfmt"):  # one program, two spellings: a run that fails at the end
        src += ("\nraise SystemExit('deliberate failure')\n" if mode == "boom"
                else "\n# fail on purpose\nraise SystemExit(  'deliberate failure'  )\n")
        line = "fail at the end"
    elif mode in ("slow", "slowfmt"):  # one program, two spellings: a run that takes 20 s more
        src += ("\nimport time as _t\n_t.sleep(20)\n" if mode == "slow"
                else "\n# wait a little\nimport time as _t\n_t.sleep( 20 )\n")
        line = "wait 20 s after training"
    elif mode == "note":
        n = len(re.findall(r"^_agent_note_", src, re.M))
        src += f"\n_agent_note_{n} = {agent!r}\n"
        line = f"record that {agent} was here"
    else:
        line = "nothing worth changing"
    Path("train.py").write_text(src)
    subprocess.run(["git", "commit", "-qam", line], capture_output=True)
    line = os.environ.get("FAKE_LAST_LINE", line)
    return f"I read program.md and SWARM.md and changed train.py.\n\n{line}" if line else ""
