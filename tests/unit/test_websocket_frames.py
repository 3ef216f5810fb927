"""The text frames the WebSocket transport writes are what websockets' own parser reads."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from websockets.frames import Frame, Opcode

from beseda.server.transports.websocket import text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_a_text_frame_parses_back_to_its_payload(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    data = text_frame(payload)
    position = 0

    def read_exact(n: int) -> Generator[None, None, bytes]:
        nonlocal position
        chunk = data[position : position + n]
        position += n
        assert len(chunk) == n, "the frame is shorter than its header says"
        return chunk
        yield  # a generator, as websockets' parser wants

    parser = Frame.parse(read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame = done.value.value
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data == payload
    assert position == len(data), "nothing after the frame"
