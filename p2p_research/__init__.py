"""p2p-research: autonomous ML research on a peer-to-peer swarm."""

__version__ = "0.1.0"
