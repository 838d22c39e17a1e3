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
    Bundle,
    Claim,
    DeltaObject,
    GitObject,
    Message,
    Presence,
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
from .records import (
    ExpRecord,
    decode_record,
    encode_record,
    make_claim_record,
    make_result_record,
    record_key,
    select_record,
)

__all__ = [
    "MAX_INLINE_OBJECT",
    "MAX_INLINE_OBJECTS",
    "MAX_INLINE_TOTAL",
    "MAX_MESSAGE_BYTES",
    "WIRE_VERSION",
    "BoardPost",
    "Bundle",
    "ExpRecord",
    "Claim",
    "DeltaObject",
    "GitObject",
    "Message",
    "Presence",
    "Receipt",
    "Result",
    "Verification",
    "WireError",
    "check_result",
    "decode",
    "decode_receipt",
    "decode_record",
    "encode_record",
    "git_object_id",
    "make_claim_record",
    "make_result_record",
    "message_type",
    "peer_id_of",
    "record_key",
    "select_record",
    "sign_receipt",
    "verify_receipt",
]
