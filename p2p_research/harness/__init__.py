"""The node's own measurement of a run: the harness, not train.py, owns the number.

A run of train.py is untrusted code, so what it prints is only its claim. The training process hands
its model over at the harness's `evaluate_bpb` call (`handover.py`, copied into the run); a second
process that runs none of the run's code (`evaluate.py`, beside this node's pinned prepare.py) loads
the graph and weights without unpickling anything, refuses what it cannot check, probes causality,
and computes the value with the pinned harness. `measure.py` runs both; `verdict.py` judges a
self-report against the measurement and a gain against the private split (pure).
"""
