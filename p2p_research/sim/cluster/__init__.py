"""Real daemons on the machines of a Ray cluster: `simulate --cluster ADDRESS`.

One machine runs 35 daemons at most before CPU contention, not the protocol, sets the latencies, so the
discrete-event model (sim/des) had never been checked against more real daemons than that. Here the
launcher's `Simulation` runs unchanged on the driver (start plan, churn, drain and settle, stop, the
report's figures); only where its processes live changes. Each machine of the cluster gets one host
agent (a Ray actor pinned to that machine, taking no CPU of Ray's accounting), which keeps its nodes as
the launcher keeps local ones: the same `NodeProc` starting `p2p-research node start`, the same /proc and
`ss` sampling, the same control socket. The driver

- prepares every home here (identities first, so every peer id and address is known before anything
  starts), with each node listening on its machine's address and the cluster's machines exempt from the
  limits per address and /24 (`network.exempt_addresses`: 25 daemons share each address);
- ships each home to its machine, starts, signals and asks its processes through the agent, one
  batched snapshot per host and tick rather than a round trip per process;
- after the stop, copies every node's ledger (a consistent SQLite backup) and logs back into the
  report folder, so `sim/figures.collect` reads exactly what it reads after a local run.

Why Ray: it is what a Python user of a lab cluster already has running (`ray start --head` on one
machine, `ray start --address` on the others), it places an actor on each machine by node id and moves
bytes between them, and a one-machine cluster (`--cluster local`) starts in seconds for the tests. The
package is an optional extra (`pip install 'p2p-research[cluster]'`); a node's own install does not need it.

The pieces: `agent.py` runs on each machine (the agent, the clean-up of runs a dead driver left);
`remote.py` is the driver's view of a machine and of a process on it (`HostLink`, `RemoteProc`,
`RemoteNode`); `driver.py` joins Ray, starts the agents and answers the launcher's hooks
(`ClusterSimulation`).

Clocks: the figures compare timestamps across ledgers. On one machine they share a clock; on a cluster
each machine's own (NTP) clock writes its ledgers, so the report gives every machine's offset from the
driver's clock, measured over Ray at the start (a round trip's half is its error bound).
"""

from p2p_research.sim.cluster.agent import AGENT_FILE, PIDS_FILE, ClusterError, HostAgent, clean_stale_runs
from p2p_research.sim.cluster.driver import ClusterSimulation, connect
from p2p_research.sim.cluster.remote import HostLink, RemoteNode, RemoteProc

__all__ = ["AGENT_FILE", "PIDS_FILE", "ClusterError", "ClusterSimulation", "HostAgent", "HostLink", "RemoteNode",
           "RemoteProc", "clean_stale_runs", "connect"]
