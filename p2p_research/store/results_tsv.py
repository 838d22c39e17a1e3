"""results.tsv in karpathy's autoresearch columns, so existing tooling reads a node's history.

Columns: commit (short), val_bpb, memory_gb, status (keep | discard | crash), description.
A row per local experiment, per baseline measurement (`keep`, the first row) and per adopted peer result
(`keep`, naming the peer); runs that never finished (stopped, yielded to a peer) are not results and
have no row, and a peer's result this node only re-ran is in the ledger, not here.
"""

from __future__ import annotations

from pathlib import Path

HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
STATUS = {"kept": "keep", "baseline": "keep", "adopted": "keep", "discarded": "discard", "crash": "crash"}


def _clean(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def append_result(path: Path, commit: str, val_bpb: float | None, memory_gb: float | None, status: str,
                  description: str) -> None:
    if status not in STATUS:
        raise ValueError(f"not a results.tsv status: {status!r}")
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", encoding="utf-8") as f:
        if new:
            f.write(HEADER)
        f.write(f"{commit[:7]}\t{0.0 if val_bpb is None else val_bpb:.6f}\t"
                f"{0.0 if memory_gb is None else memory_gb:.1f}\t{STATUS.get(status, status)}\t{_clean(description)}\n")


def has_rows(path: Path) -> bool:
    """Whether results.tsv holds any row beyond its header."""
    try:
        with path.open("rb") as f:
            return len(f.read(len(HEADER) + 2).splitlines()) > 1
    except OSError:
        return False
