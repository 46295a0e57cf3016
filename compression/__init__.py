"""SparseLoCo pseudo-gradient codec: chunking, top-k, 2-bit values, Golomb-coded indices, error
feedback, the signed safetensors wire format, deterministic aggregation and the outer step."""

from compression.aggregate import aggregate, outer_step
from compression.chunking import ChunkLayout, chunk_layout, largest_divisor_at_most
from compression.codec import CodecParams, CompressedMessage, decode_blob, decode_message, encode_tensor
from compression.error_feedback import ErrorFeedbackCompressor
from compression.errors import PayloadError, SignatureError
from compression.sparse import SparseTensor, SparseUpdate
from compression.wire import (
    FORMAT_VERSION,
    DecodedPayload,
    PayloadManifest,
    StageClaim,
    content_hash,
    decode_payload,
    encode_payload,
)

__all__ = [
    "FORMAT_VERSION",
    "ChunkLayout",
    "CodecParams",
    "CompressedMessage",
    "DecodedPayload",
    "ErrorFeedbackCompressor",
    "PayloadError",
    "PayloadManifest",
    "StageClaim",
    "SignatureError",
    "SparseTensor",
    "SparseUpdate",
    "aggregate",
    "chunk_layout",
    "content_hash",
    "decode_blob",
    "decode_message",
    "decode_payload",
    "encode_payload",
    "encode_tensor",
    "largest_divisor_at_most",
    "outer_step",
]
