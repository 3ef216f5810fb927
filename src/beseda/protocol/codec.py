"""Sans-I/O codec: bytes in, typed messages out; typed messages in, bytes out.

Framing is one JSON object per line, terminated by ``\\n``. Nothing here touches a socket, so
server, client library and tests share it and it is tested without any I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import msgspec

from . import errors
from .schema import (
    MAX_LINE_BYTES,
    REQUEST_TYPES,
    AnyRequest,
    AnyServerMessage,
    RequestId,
)

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_request_decoder: msgspec.json.Decoder[AnyRequest] = msgspec.json.Decoder(AnyRequest)
_server_decoder: msgspec.json.Decoder[AnyServerMessage] = msgspec.json.Decoder(AnyServerMessage)


class _Envelope(msgspec.Struct):
    """What we can still read from a request that failed validation: its id and type."""

    id: RequestId | None = None
    type: str | None = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def encode(message: msgspec.Struct) -> bytes:
    """Encode one message as a line, newline included."""
    return _encoder.encode(message) + b"\n"


class Outgoing:
    """A server message on its way to many connections, encoded once per wire format, when a
    connection of that format first asks (a JSON line today; a WebSocket text frame is the
    same JSON without the newline; another format adds a method here)."""

    __slots__ = ("_line", "message")

    def __init__(self, message: msgspec.Struct) -> None:
        self.message = message
        self._line: bytes | None = None

    def line(self) -> bytes:
        """The message as one JSON line, newline included."""
        line = self._line
        if line is None:
            line = self._line = encode(self.message)
        return line


def encode_data(data: msgspec.Struct) -> msgspec.Raw:
    """Encode reply data once so that it can be embedded in a ``Result`` without re-encoding."""
    return msgspec.Raw(_encoder.encode(data))


class LineBuffer:
    """Splits a byte stream into lines, refusing any line longer than ``max_line``.

    Memory stays bounded: at most ``max_line`` bytes of an unfinished line are kept.
    """

    __slots__ = ("_buffer", "max_line", "overflowed")  # one per connection

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._buffer: bytearray | None = None
        """An unfinished line (None while there is none: an idle connection holds no buffer)."""
        self.overflowed = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield each complete line in ``data`` (without its newline).

        Raises ``ProtocolError(LINE_TOO_LONG)`` once a line exceeds the bound; after that the
        buffer accepts nothing more (the connection is to be closed).
        """
        if self.overflowed:
            return
        start = 0
        buffer = self._buffer
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if buffer:
                buffer += data[start:end]
                line = bytes(buffer)
                buffer = self._buffer = None
            else:
                line = data[start:end]
            start = end + 1
            if len(line) > self.max_line:
                self._overflow()
            yield line
        rest = len(data) - start
        if rest:
            if (len(buffer) if buffer else 0) + rest > self.max_line:
                self._overflow()
            if buffer is None:
                self._buffer = bytearray(data[start:])
            else:
                buffer += data[start:]

    def _overflow(self) -> None:
        self.overflowed = True
        self._buffer = None
        raise errors.ProtocolError(
            errors.LINE_TOO_LONG,
            f"A line may be at most {self.max_line} bytes.",
            fatal=True,
        )

    def clear(self) -> None:
        """Let go of an unfinished line (the connection is closing)."""
        self._buffer = None

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held."""
        return len(self._buffer) if self._buffer else 0


def decode_request(line: bytes) -> AnyRequest:
    """Decode and validate one request line.

    Raises ``ProtocolError`` with ``bad_json``, ``unknown_type`` or ``bad_request``; the
    request id is attached when it could be read, so the error can answer that request.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        if not line.isascii():
            # msgspec checks UTF-8 only in the strings it decodes: a byte that is not UTF-8 in
            # a field it skips would pass, and a message with it would be stored.
            line.decode()
        return _request_decoder.decode(line)
    except msgspec.ValidationError as exc:
        envelope = _read_envelope(line)
        request_id = envelope.id if envelope else None
        if envelope is None:
            raise errors.ProtocolError(
                errors.BAD_REQUEST, f"A request must be a JSON object with an id and a type: {exc}"
            ) from None
        if envelope.type is None:
            raise errors.ProtocolError(
                errors.BAD_REQUEST, "The request has no type.", request_id=request_id
            ) from None
        if envelope.type not in REQUEST_TYPES:
            raise errors.ProtocolError(
                errors.UNKNOWN_TYPE,
                f"Unknown request type {envelope.type!r}.",
                request_id=request_id,
            ) from None
        raise errors.ProtocolError(errors.BAD_REQUEST, str(exc), request_id=request_id) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise errors.ProtocolError(errors.BAD_JSON, f"Malformed JSON: {exc}") from None
    except RecursionError:
        # msgspec decodes nested arrays and objects recursively, even in ignored fields.
        raise errors.ProtocolError(errors.BAD_JSON, "The JSON is nested too deeply.") from None


def _read_envelope(line: bytes) -> _Envelope | None:
    """The id and type of a line that failed validation; None when it is not an object.

    Validation stops at the first wrong field, before the rest of the line is parsed: a line
    can fail validation and also be malformed further on. That is malformed JSON.
    """
    try:
        return _envelope_decoder.decode(line)
    except msgspec.ValidationError:
        return None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise errors.ProtocolError(errors.BAD_JSON, f"Malformed JSON: {exc}") from None
    except RecursionError:
        raise errors.ProtocolError(errors.BAD_JSON, "The JSON is nested too deeply.") from None


def decode_server_message(line: bytes) -> AnyServerMessage:
    """Decode one line sent by a server (used by clients)."""
    try:
        return _server_decoder.decode(line)
    except (
        msgspec.ValidationError,
        msgspec.DecodeError,
        UnicodeDecodeError,
        RecursionError,
    ) as exc:
        raise errors.ProtocolError(errors.BAD_JSON, f"Unreadable server line: {exc}") from None


def decode_data(raw: msgspec.Raw, type_: type[T]) -> T:
    """Decode the ``data`` of a ``Result`` as the type the request expects."""
    return msgspec.json.decode(raw, type=type_)
