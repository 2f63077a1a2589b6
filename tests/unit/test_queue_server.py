"""``coral queue`` against one server, over real sockets: a fake ComfyUI in a thread speaks its
HTTP API and its /ws websocket (the frames a real server sends: text JSON, long ones with the
16-bit length, previews as binary frames, a text message split over fragments), so the client's
own HTTP and websocket code is exercised, not stubbed."""
from __future__ import annotations

import base64
import json
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import urllib.parse
from pathlib import Path

import pytest

from coral_core import comfy_client

WORKFLOW = {"1": {"class_type": "CoralDemoPhoto", "inputs": {"seed": 0}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
PNG = b"\x89PNG\r\n\x1a\n fake image bytes"


def frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        return head + bytes([n]) + payload
    if n < 1 << 16:
        return head + bytes([126]) + struct.pack(">H", n) + payload
    return head + bytes([127]) + struct.pack(">Q", n) + payload


class FakeComfy(ThreadingHTTPServer):
    """``outcome(seed)``: "success", "error" or "never"; ``reject``: seeds refused at /prompt."""

    def __init__(self, outcome, reject=(), expected: int = 1) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.outcome, self.reject, self.expected = outcome, set(reject), expected
        self.prompts: dict[str, int] = {}
        self.client_ids: list[str] = []  # of the websockets opened
        self.prompt_clients: list[str] = []  # of the prompts queued
        self.all_queued = threading.Event()
        self.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeComfy

    def log_message(self, *args) -> None:  # quiet
        pass

    def _json(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        if self.path != "/prompt" or self.headers.get("Content-Type") != "application/json":
            return self._json(404, {"error": "no such path"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.prompt_clients.append(body["client_id"])
        seed = body["prompt"]["1"]["inputs"]["seed"]
        if seed in self.server.reject:
            self._json(400, {"error": "invalid prompt", "node_errors": {"1": "bad seed"}})
        else:
            pid = f"p{seed}"
            self.server.prompts[pid] = seed
            self._json(200, {"prompt_id": pid})
        queued = len(self.server.prompts) + len(self.server.reject)
        if queued >= self.server.expected:
            self.server.all_queued.set()

    def do_GET(self) -> None:
        if self.path.startswith("/ws") or self.path.startswith("/nows"):
            return self._websocket()
        if self.path.startswith("/history/"):
            pid = self.path.rsplit("/", 1)[1]
            image = {"filename": f"{pid}.png", "subfolder": "", "type": "output"}
            return self._json(200, {pid: {"outputs": {"9": {"images": [image]}}}})
        if self.path.startswith("/broken"):  # an error page that is not JSON nor UTF-8
            self.send_response(500)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"internal \xff error")
            return None
        if self.path.startswith("/view?"):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)
            return None
        return self._json(404, {"error": "no such path"})

    def _websocket(self) -> None:
        """Refuse a handshake a real server would refuse (RFC 6455, 4.2.1), then send."""
        key = self.headers.get("Sec-WebSocket-Key", "")
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        valid = (urllib.parse.urlparse(self.path).path == "/ws" and "clientId" in query
                 and self.headers.get("Upgrade", "").lower() == "websocket"
                 and "upgrade" in self.headers.get("Connection", "").lower()
                 and self.headers.get("Sec-WebSocket-Version") == "13"
                 and len(base64.b64decode(key + "==")) == 16
                 and self.headers.get("Host") == f"127.0.0.1:{self.server.server_address[1]}")
        if not valid:
            return self._json(400, {"error": "bad websocket handshake"})
        self.server.client_ids.append(query["clientId"][0])
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        self.wfile.write(frame(json.dumps({"type": "status", "data": {}}).encode()))
        self.server.all_queued.wait(10)
        for pid, seed in sorted(self.server.prompts.items()):
            outcome = self.server.outcome(seed)
            progress = json.dumps({"type": "progress", "data": {
                "prompt_id": pid, "value": 1, "max": 2, "padding": "x" * 300}}).encode()
            self.wfile.write(frame(progress))  # over 125 bytes: the 16-bit length
            self.wfile.write(frame(b"\x00\x01preview", opcode=0x2))  # a binary preview
            if outcome == "success":
                done = json.dumps({"type": "executing",
                                   "data": {"prompt_id": pid, "node": None}}).encode()
                half = len(done) // 2  # one message in two fragments
                self.wfile.write(frame(done[:half], fin=False) + frame(done[half:], opcode=0))
            elif outcome == "error":  # a node runs, then the prompt fails
                self.wfile.write(frame(json.dumps({"type": "executing", "data": {
                    "prompt_id": pid, "node": "1"}}).encode()))
                self.wfile.write(frame(json.dumps({"type": "execution_error", "data": {
                    "prompt_id": pid, "exception_message": f"boom {seed}"}}).encode()))
            elif outcome == "interrupted":  # Cancel in the UI: no exception message
                self.wfile.write(frame(json.dumps({"type": "execution_interrupted",
                                                   "data": {"prompt_id": pid}}).encode()))
        outcomes = {self.server.outcome(s) for s in self.server.prompts.values()}
        if "never" in outcomes or not self.server.prompts:
            time.sleep(1.5)  # a prompt that never finishes: the client's deadline ends it
        elif "vanish" not in outcomes:  # vanish: the connection just drops
            self.wfile.write(frame(b"", opcode=0x8))


@pytest.fixture
def serve():
    servers = []

    def start(outcome, reject=(), expected=1) -> FakeComfy:
        server = FakeComfy(outcome, reject, expected)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_each_seed_is_queued_followed_and_its_saved_image_fetched(serve, tmp_path, capsys
                                                                    ) -> None:
    server = serve(lambda seed: "success", expected=3)
    jobs = comfy_client.queue_workflows(server.url, WORKFLOW, [], [4, 5, 6], tmp_path)
    assert [(j.label, j.status) for j in jobs] == [("seed4", "success"), ("seed5", "success"),
                                                   ("seed6", "success")]
    assert sorted(server.prompts.values()) == [4, 5, 6]  # the seed input set per prompt
    # the prompts name the websocket's client, so the server sends their progress there
    assert len(server.client_ids) == 1 and server.prompt_clients == server.client_ids * 3
    for job in jobs:
        [path] = job.files
        assert path == tmp_path / job.label / f"9_p{job.label[4:]}.png"
        assert path.read_bytes() == PNG
    err = capsys.readouterr().err
    assert "queued seed4: p4" in err and "seed5: 1/2" in err


def test_a_refused_prompt_and_a_failed_one_are_reported_with_the_servers_words(serve, tmp_path
                                                                               ) -> None:
    server = serve(lambda seed: "error" if seed == 2 else "success", reject=[1], expected=3)
    jobs = {j.label: j for j in comfy_client.queue_workflows(server.url, WORKFLOW, [],
                                                             [1, 2, 3], tmp_path)}
    assert jobs["seed1"].status == "rejected" and "bad seed" in jobs["seed1"].error
    assert jobs["seed1"].prompt_id is None
    assert jobs["seed2"].status == "failed" and jobs["seed2"].error == "boom 2"
    assert jobs["seed2"].files == [] and not (tmp_path / "seed2").exists()
    assert jobs["seed3"].status == "success" and jobs["seed3"].files


def test_a_prompt_that_never_finishes_is_a_timeout(serve, tmp_path) -> None:
    server = serve(lambda seed: "never" if seed == 8 else "success", expected=2)
    jobs = comfy_client.queue_workflows(server.url, WORKFLOW, [], [7, 8], tmp_path, timeout=0.5)
    assert [(j.label, j.status) for j in jobs] == [("seed7", "success"), ("seed8", "timeout")]
    assert "0.5" in jobs[1].error


def test_a_server_that_is_not_comfyui_fails_the_handshake_with_what_it_said(serve) -> None:
    server = serve(lambda seed: "success")
    with pytest.raises(ConnectionError, match="handshake failed.*400"):
        comfy_client.WebSocketReader(server.url.replace("http", "ws") + "/nows", timeout=5)


def test_the_request_helper_returns_json_bytes_and_error_bodies(serve) -> None:
    server = serve(lambda seed: "success")
    status, body = comfy_client._request(server.url, "/history/p3")
    assert status == 200 and body["p3"]["outputs"]["9"]["images"][0]["filename"] == "p3.png"
    assert comfy_client._request(server.url, "/view?filename=x") == (200, PNG)
    status, body = comfy_client._request(server.url, "/missing")
    assert status == 404 and body == {"error": "no such path"}


def test_without_an_output_folder_nothing_is_fetched(serve, tmp_path) -> None:
    server = serve(lambda seed: "success")
    [job] = comfy_client.queue_workflows(server.url, WORKFLOW, [], [3], None)
    assert job.status == "success" and job.files == []
    assert Path(tmp_path).exists() and not any(tmp_path.iterdir())


def test_a_server_that_drops_the_websocket_fails_what_was_running_and_keeps_the_rest(
        serve, tmp_path) -> None:
    server = serve(lambda seed: "success" if seed == 1 else "vanish", expected=2)
    jobs = comfy_client.queue_workflows(server.url, WORKFLOW, [], [1, 2], tmp_path)
    assert jobs[0].status == "success" and jobs[0].files
    assert jobs[1].status == "failed" and "lost the server's websocket" in jobs[1].error


def test_the_reader_takes_every_frame_form_a_server_may_send() -> None:
    """Masked frames, the 64-bit length, pings and binary frames between the fragments of a
    text message, and the close frame ending the stream; a stream cut short is an error."""
    import socket

    def reader_over(data: bytes) -> comfy_client.WebSocketReader:
        ours, theirs = socket.socketpair()
        theirs.sendall(data)
        theirs.close()
        reader = object.__new__(comfy_client.WebSocketReader)
        reader.sock, reader.buf = ours, b""
        return reader

    long_text = json.dumps({"type": "long", "data": {"x": "y" * 70000}}).encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(b'{"type": "masked"}'))
    part = b'{"type": "split"}'
    stream = (frame(long_text)  # 70 kB: the 64-bit length
              + bytes([0x81, 0x80 | len(masked)]) + mask + masked
              + frame(part[:5], fin=False) + frame(b"ping", opcode=0x9)
              + frame(b"\x00", opcode=0x2) + frame(part[5:], opcode=0x0)
              + frame(b"", opcode=0x8) + frame(b'{"type": "after close"}'))
    messages = list(reader_over(stream).messages())
    assert [m["type"] for m in messages] == ["long", "masked", "split"]
    assert len(messages[0]["data"]["x"]) == 70000
    with pytest.raises(ConnectionError, match="closed"):
        list(reader_over(frame(b'{"type": "cut"}')[:-3]).messages())


def test_a_cancelled_prompt_is_interrupted_and_a_url_may_end_in_a_slash(serve, tmp_path) -> None:
    server = serve(lambda seed: "interrupted", expected=1)
    [job] = comfy_client.queue_workflows(server.url + "/", WORKFLOW, [], [1], tmp_path)
    assert (job.status, job.error) == ("interrupted", "execution_interrupted")


def test_when_every_prompt_is_refused_nothing_waits_for_the_server(serve, tmp_path) -> None:
    server = serve(lambda seed: "success", reject=[1, 2], expected=2)
    t0 = time.perf_counter()
    jobs = comfy_client.queue_workflows(server.url, WORKFLOW, [], [1, 2], tmp_path, timeout=5)
    assert [j.status for j in jobs] == ["rejected", "rejected"]
    assert time.perf_counter() - t0 < 1.0  # the silent websocket is not read at all


def test_an_error_page_that_is_not_json_comes_back_as_text(serve) -> None:
    server = serve(lambda seed: "success")
    assert comfy_client._request(server.url, "/broken") == (500, "internal \ufffd error")


def test_a_workflow_queued_once_without_seeds_keeps_its_own_seed(serve, tmp_path) -> None:
    server = serve(lambda seed: "success")
    [job] = comfy_client.queue_workflows(server.url, WORKFLOW, [], None, tmp_path)
    assert (job.label, job.status) == ("prompt", "success") and server.prompts == {"p0": 0}
    assert [p.parent.name for p in job.files] == ["prompt"]
