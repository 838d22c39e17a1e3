"""The research node's edges: what reads and writes files, git, the ledger, processes and sandboxes.

Everything one folder up (`p2p_research/research/`) decides without I/O: pure functions and sans-IO
state machines in h11's shape (`loop.py`, `swarm.py`, `turns.py`, `claims.py`, ...), which the daemon
and the discrete-event simulator both drive. What is here performs their decisions: the engine that
runs a commit and records it (`engine.py`), the workspace (git), the runner and its sandboxes, the
node's context and home, the proposers, and the read models over the ledger.
"""
