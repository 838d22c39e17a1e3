"""Everything this project patches in, or reaches into, py-libp2p: one package, one version gate, one
registry of what is changed and why, and counters per host.

py-libp2p 0.8.1 is the only release PyPI serves; measured faults and costs of it (docs/libp2p.md) are
fixed here rather than around the code that meets them:

- `pin.py`: the version every patch and guard was written against (equal to pyproject.toml's pin, a
  test holds them equal); on any other version nothing is patched and a warning says so;
- `rpc_cost.py`: four patches that cut the fixed CPU cost of a pubsub RPC;
- `guards.py`: guards for faults a peer can trigger (unbounded multistream-select reads, a teardown race,
  IHAVE/IWANT lengths, inbound connections per address, a connection wedged by a peer that reads nothing,
  a stream's messages interleaved by two writers);
- `counters.py`: what they counted, per host.

`PATCHES` lists each change: what it replaces, why, and where it is tested. `apply()` installs them all
(once per process, before the first host; idempotent, never raises) and says which are active.
Other modules that read libp2p's internals without changing them (net/nat.py reads dcutr's attempts,
net/peers.py clears the swarm's negative dial cache) name `pin.EXPECTED_LIBP2P` where they do.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import guards, rpc_cost
from .counters import HostCounters, for_host, serving
from .pin import EXPECTED_LIBP2P, is_expected_libp2p, libp2p_version


@dataclass(frozen=True)
class Patch:
    """One change to py-libp2p: its name (as `applied()` reports it), what it replaces, why, its test."""

    name: str
    replaces: str
    why: str
    test: str


PATCHES: tuple[Patch, ...] = (
    Patch("record_cache", "libp2p.pubsub.utils.maybe_consume_signed_record",
          "every RPC carries the sender's signed record, re-verified each time (6 % of a daemon's CPU)",
          "tests/test_net_rpc_cost.py"),
    Patch("local_record_cache", "libp2p.peer.peerstore.env_to_send_in_RPC",
          "our own record rebuilt and re-serialised for every outgoing RPC (5 %)", "tests/test_net_rpc_cost.py"),
    Patch("idontwant_threshold", "GossipSub._emit_idontwant_for_message",
          "an IDONTWANT to every mesh peer for every message, whatever its size (4 %)", "tests/test_net_rpc_cost.py"),
    Patch("outbound_queue", "RpcQueue.__init__ defaults, RpcQueue.push, libp2p.pubsub.rpc_queue.drop_rpc",
          "a peer's outbound queue of 32 RPCs dropped messages silently on a busy node; 256, and counted",
          "tests/test_net_rpc_cost.py"),
    Patch("multistream", "MultiselectCommunicator.read",
          "a stranger with no key could make the node buffer gigabytes (a length prefix of 2^33)",
          "tests/test_upstream_and_repair.py"),
    Patch("gossip_control", "GossipSub.handle_ihave, GossipSub.handle_iwant",
          "an IHAVE or IWANT may carry any number of ids (about 25,000 in 1 MiB), each parsed and looked up; "
          "5,000 at most, as go-libp2p", "tests/test_hostile_peers.py"),
    Patch("inbound_per_address", "Swarm.upgrade_inbound_raw_conn, Swarm._init_connection_management",
          "one cap on inbound connections for the whole node, whoever makes them: identities are free, so one "
          "host could take every connection; 8 per address and 16 per /24 (/48). And that cap counted every "
          "inbound connection ever accepted (its token is kept until the swarm stops): after 300 a node "
          "refused all; now held over live ones", "tests/test_hostile_peers.py, tests/test_upstream_and_repair.py"),
    Patch("bad_signature", "Pubsub.push_msg, libp2p.pubsub.pubsub.signature_validator",
          "a message whose signature fails is dropped before any validator, so its forwarder was never scored "
          "and could send them without end; now it is scored like any rejected message, and banned",
          "tests/test_hostile_peers.py"),
    Patch("publish_per_rpc", "libp2p.pubsub.pubsub.maybe_consume_signed_record (the read loop's hook on each RPC)",
          "a task and a signature check for every message of an RPC, however many (about 4,800 fit in 1 MiB; "
          "two such RPCs of made-up signatures cost a daemon 16 CPU-s, with no score or ban); 256 per RPC",
          "tests/test_hostile_peers.py"),
    Patch("yamux_write_timeout", "Yamux._write_frame (and Yamux.__init__, to count a wedge for the host that made it)",
          "a frame waited as long as the peer left its socket unread, the read loop's replies included: two nodes "
          "writing at once, or one peer that reads nothing, wedged the connection, and a stream reset libp2p "
          "shields held a daemon's research for 70 s; no frame written for 30 s while one waits (go-yamux's "
          "ConnectionWriteTimeout, at 10 s), or 60 s on one frame, and the connection is closed",
          "tests/test_upstream_and_repair.py"),
    Patch("yamux_whole_writes", "YamuxStream.write",
          "a message went out as 64 KiB frames with the stream unlocked between them, so another writer's frames "
          "could land in the middle: pubsub writes a peer's RPCs from several tasks, and an RPC over 64 KiB "
          "(an IWANT of 5,000 ids) reached the peer undecodable; one write at a time per stream, as go-yamux",
          "tests/test_boundaries.py"),
    Patch("pubsub_teardown", "Pubsub._teardown_if_connected",
          "a banned peer that disconnected at the right moment raised KeyError in pubsub and stopped the node",
          "tests/test_upstream_and_repair.py"),
)


def apply() -> dict[str, bool]:
    """Install every patch and guard (see PATCHES); which are active."""
    return {**rpc_cost.apply(), **guards.apply()}


def applied() -> dict[str, bool]:
    return {**rpc_cost.applied(), **guards.applied()}


__all__ = ["EXPECTED_LIBP2P", "PATCHES", "HostCounters", "Patch", "applied", "apply", "for_host", "is_expected_libp2p",
           "libp2p_version", "serving"]
