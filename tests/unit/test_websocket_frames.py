"""The text frames the WebSocket transport writes are what websockets' own parser reads."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from websockets.frames import Frame, Opcode

from beseda.server.transports.websocket import SHARED_LINE_BYTES, FrameCache, text_frame


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


def test_a_line_sent_to_many_is_framed_once_per_flush() -> None:
    cache = FrameCache()
    event = b'{"type":"message","message":{"text":"hi"}}\n'
    first = cache.frame(event)
    assert first == text_frame(event[:-1])
    assert cache.frame(event) is first  # the next recipients share it
    reply = b'{"type":"result","data":"' + b"x" * SHARED_LINE_BYTES + b'"}\n'
    assert cache.frame(reply) == text_frame(reply[:-1])  # large replies are framed directly
    cache.clear()
    assert cache.frame(event) is not first


def test_a_run_of_lines_sent_to_many_is_joined_once_per_flush() -> None:
    cache = FrameCache()
    lines = [b'{"type":"message","n":%d}\n' % n for n in range(5)]
    expected = b"".join(text_frame(line[:-1]) for line in lines)
    first = cache.run(list(lines))
    assert first == expected
    second = cache.run(list(lines))  # a second recipient of the same run: kept from here on
    assert second == expected
    assert cache.run(list(lines)) is second
    assert cache.run(lines[:3]) == expected[: len(b"".join(text_frame(x[:-1]) for x in lines[:3]))]
    big = [b'"' + b"x" * SHARED_LINE_BYTES + b'"\n', lines[0]]
    framed = b"".join(text_frame(line[:-1]) for line in big)
    assert cache.run(big) == framed
    assert cache.run(big) == framed
    assert cache.run(big) is not cache.run(big)  # too large to keep: framed each time
    cache.clear()
    assert cache.run(list(lines)) is not second
