"""The queue client's websocket reader against what a TCP stream really delivers: a
handshake split over packets, a frame arriving in the same packet as the handshake's end,
a frame whose 16-bit length has its top bit set, a frame that fills the buffer exactly and
then silence, and a refusal. A scripted raw socket server sends exact bytes."""
from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest

from coral_core.comfy_client import WebSocketReader

HANDSHAKE = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\n\r\n")


def text_frame(obj) -> bytes:
    payload = json.dumps(obj).encode()
    n = len(payload)
    if n < 126:
        return bytes([0x81, n]) + payload
    if n < 1 << 16:
        return bytes([0x81, 126]) + struct.pack(">H", n) + payload
    return bytes([0x81, 127]) + struct.pack(">Q", n) + payload


class Scripted:
    """Accept one connection, read the request, send each piece (a short pause between
    pieces, so they arrive as separate packets), then keep the socket open until closed."""

    def __init__(self, pieces: list[bytes], hold: float = 5.0) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.pieces, self.hold = pieces, hold
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.listener.getsockname()[1]}/ws?clientId=x"

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            for piece in self.pieces:
                conn.sendall(piece)
                time.sleep(0.05)
            time.sleep(self.hold)


def _first(url: str, timeout: float = 3.0):
    reader = WebSocketReader(url, timeout=timeout)
    try:
        return next(reader.messages())
    finally:
        reader.close()


def test_a_handshake_split_over_packets_is_read_whole() -> None:
    server = Scripted([HANDSHAKE[:20], HANDSHAKE[20:50], HANDSHAKE[50:],
                       text_frame({"type": "status"})])
    assert _first(server.url) == {"type": "status"}


def test_a_frame_in_the_handshake_s_last_packet_is_kept_even_if_it_holds_a_blank_line(
) -> None:
    """JSON may put CR LF CR LF between its tokens: the handshake ends at the first one."""
    payload = b'{"type":\r\n\r\n "executing"}'
    server = Scripted([HANDSHAKE + bytes([0x81, len(payload)]) + payload])
    assert _first(server.url) == {"type": "executing"}


def test_a_long_frame_whose_16_bit_length_has_its_top_bit_set() -> None:
    message = {"type": "progress", "padding": "x" * 40_000}  # length in 32768..65535
    server = Scripted([HANDSHAKE, text_frame(message)])
    assert _first(server.url) == message


def test_a_frame_is_delivered_without_waiting_for_more_bytes() -> None:
    """The frame ends exactly where the stream pauses: reading it must not wait for a byte
    that is not coming (the server stays silent for seconds)."""
    server = Scripted([HANDSHAKE, text_frame({"type": "status"})], hold=5.0)
    started = time.perf_counter()
    assert _first(server.url, timeout=2.0) == {"type": "status"}
    assert time.perf_counter() - started < 1.5


def test_a_refused_handshake_is_an_error_even_if_a_later_line_says_101() -> None:
    refusal = (b"HTTP/1.1 400 Bad Request\r\nX-Note: expected 101 \r\n"
               b"Content-Length: 0\r\n\r\n")
    server = Scripted([refusal])
    with pytest.raises(ConnectionError, match="handshake failed"):
        WebSocketReader(server.url, timeout=2.0)


def test_a_stream_closed_mid_handshake_is_an_error() -> None:
    server = Scripted([HANDSHAKE[:30]], hold=0.0)
    with pytest.raises(ConnectionError, match="websocket closed"):
        WebSocketReader(server.url, timeout=2.0)


def test_a_server_that_never_answers_the_handshake_times_out() -> None:
    """Connected, then silence: the reader gives up after its timeout instead of hanging."""
    server = Scripted([], hold=3.0)
    started = time.perf_counter()
    with pytest.raises(OSError):  # socket.timeout is TimeoutError, an OSError
        WebSocketReader(server.url, timeout=0.3)
    assert time.perf_counter() - started < 2.0
