"""The beseda wire protocol: schema, codec and error codes (sans-I/O)."""

from . import errors, schema
from .codec import LineBuffer, decode_request, decode_server_message, encode
from .errors import BesedaError, ProtocolError

__all__ = [
    "BesedaError",
    "LineBuffer",
    "ProtocolError",
    "decode_request",
    "decode_server_message",
    "encode",
    "errors",
    "schema",
]
