"""Wire layer: msgpack message schemas with validation and size limits (pure, no I/O).

``receipts`` (signing/verification) imports libp2p's crypto lazily, so importing this package
stays cheap.
"""

from .messages import (
    MAX_INLINE_OBJECT,
    MAX_INLINE_OBJECTS,
    MAX_INLINE_TOTAL,
    MAX_MESSAGE_BYTES,
    WIRE_VERSION,
    BoardPost,
    Claim,
    GitObject,
    Message,
    Receipt,
    Result,
    Verification,
    WireError,
    decode,
    decode_receipt,
    git_object_id,
    message_type,
)
from .receipts import check_result, peer_id_of, sign_receipt, verify_receipt

__all__ = [
    "MAX_INLINE_OBJECT",
    "MAX_INLINE_OBJECTS",
    "MAX_INLINE_TOTAL",
    "MAX_MESSAGE_BYTES",
    "WIRE_VERSION",
    "BoardPost",
    "Claim",
    "GitObject",
    "Message",
    "Receipt",
    "Result",
    "Verification",
    "WireError",
    "check_result",
    "decode",
    "decode_receipt",
    "git_object_id",
    "message_type",
    "peer_id_of",
    "sign_receipt",
    "verify_receipt",
]
