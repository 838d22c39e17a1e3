"""Network layer: libp2p host, gossip topics, object transfer, peer management.

Knows libp2p, not research. The daemon uses :func:`open_network` and :class:`Network` only.
"""

from .gossip import Incoming, topic_names
from .network import NetConfig, Network, open_network
from .peers import PeerState
from .transfer import TransferError

__all__ = ["Incoming", "NetConfig", "Network", "PeerState", "TransferError", "open_network", "topic_names"]
