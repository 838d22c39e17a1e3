"""The embedded default research target: a byte-level GPT on a generated corpus (autoresearch shape).

A node copies TARGET_FILES into its git workspace and runs `python train.py` there as a child process.
`prepare.py` is the pinned harness (data, tokenizer, budget, val_bpb, summary), `train.py` is the only
file experiments change, `program.md` directs the agent and holds the machine-readable search space.
This module only locates the files: it imports neither torch nor the target's code.
"""

from __future__ import annotations

from pathlib import Path

TARGET_DIR: Path = Path(__file__).resolve().parent
HARNESS_FILES: tuple[str, ...] = ("prepare.py",)
EDITABLE_FILE: str = "train.py"
PROGRAM_FILE: str = "program.md"
TARGET_FILES: tuple[str, ...] = ("prepare.py", "train.py", "program.md")

__all__ = [
    "EDITABLE_FILE",
    "HARNESS_FILES",
    "PROGRAM_FILE",
    "TARGET_DIR",
    "TARGET_FILES",
    "read_target_files",
]


def read_target_files() -> dict[str, bytes]:
    """The target's files as {name: bytes}, in TARGET_FILES order."""
    return {name: (TARGET_DIR / name).read_bytes() for name in TARGET_FILES}
