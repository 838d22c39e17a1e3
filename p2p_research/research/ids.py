"""Evaluation protocols and experiment ids.

Results are only comparable under one evaluation protocol: the same pinned harness (data, tokenizer,
metric code), the same budget and the same metric. The protocol id hashes exactly those, so two nodes
agree on it without talking. An experiment id hashes the protocol id and the experiment's git tree id:
the same change proposed by two nodes on the same baseline has one id, whoever committed it and when.
Both are 40 lowercase hex characters, so DHT keys `/exp/<id>` stay short (longer keys break lookups).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

HEX40 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Budget:
    """A training budget: a token count (comparable across hardware) or wall-clock seconds."""

    tokens: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.seconds is None):
            raise ValueError("a budget is either tokens or seconds, exactly one of them")
        if self.tokens is not None and self.tokens <= 0:
            raise ValueError(f"budget tokens must be positive, got {self.tokens}")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"budget seconds must be positive, got {self.seconds}")

    @property
    def is_wall_clock(self) -> bool:
        return self.seconds is not None

    def describe(self) -> str:
        return f"{self.tokens} tokens" if self.tokens is not None else f"{self.seconds:g} s"

    def canonical(self) -> str:
        return f"tokens={self.tokens}" if self.tokens is not None else f"seconds={self.seconds!r}"

    def env(self) -> dict[str, str]:
        """The environment variables the harness reads its budget from."""
        if self.tokens is not None:
            return {"P2P_BUDGET_TOKENS": str(self.tokens)}
        return {"P2P_BUDGET_SECONDS": repr(self.seconds)}


def _h40(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:40]


def protocol_id(
    harness: dict[str, bytes],
    budget: Budget,
    metric: str,
    data_digest: str = "",
    hardware_class: str = "",
) -> str:
    """Hash of everything that makes two results comparable.

    `harness` maps the harness file names to their bytes; `data_digest` identifies user-supplied data
    (empty for the default corpus, which the harness code itself generates); `hardware_class` only
    matters for wall-clock budgets, where the hardware decides how much training fits.
    """
    parts = [b"p2p-research-protocol/1", metric.encode(), budget.canonical().encode(), data_digest.encode()]
    if budget.is_wall_clock:
        parts.append(hardware_class.encode())
    for name in sorted(harness):
        parts += [name.encode(), harness[name]]
    return _h40(*parts)


def experiment_id(protocol: str, tree_id: str) -> str:
    """40-hex id of an experiment: its protocol and the git tree it evaluates."""
    if not HEX40.match(tree_id):
        raise ValueError(f"not a git tree id: {tree_id!r}")
    return _h40(b"p2p-research-experiment/1", protocol.encode(), tree_id.encode())


def swarm_id_of(genesis: str, protocol_id: str) -> str:
    """Topics are scoped to the genesis commit and the protocol: only comparable results share a swarm.
    A peer's claim that its protocol shares this node's genesis is checked by recomputing this."""
    return hashlib.sha256(f"{genesis}:{protocol_id}".encode()).hexdigest()[:16]


def is_hex40(value: str) -> bool:
    return bool(HEX40.match(value))
