"""Network layer: libp2p host, gossip topics, object transfer, peer management.

Knows libp2p, not research. The daemon uses :func:`open_network` and :class:`Network` only.
"""

from .dht import ExperimentDHT
from .gossip import Incoming, topic_names
from .identity import IdentityError, load_or_create_identity, peer_id_of_keypair, short_name
from .logsetup import configure_logging
from .network import NetConfig, Network, open_network
from .peers import PeerState
from .transfer import TransferError

__all__ = [
    "ExperimentDHT",
    "IdentityError",
    "Incoming",
    "NetConfig",
    "Network",
    "PeerState",
    "TransferError",
    "configure_logging",
    "load_or_create_identity",
    "open_network",
    "peer_id_of_keypair",
    "short_name",
    "topic_names",
]
