"""Queue many prompts on a running ComfyUI server through its HTTP API (``coral queue``).

Standard library only: HTTP via urllib, and a minimal websocket reader (text frames from the
server; the client never sends frames) to follow progress. coral_core stays free of ComfyUI:
this only speaks its public protocol.
"""
from __future__ import annotations

import base64
import copy
import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .atomic import write_bytes_atomic
from .errors import InputError


class WebSocketReader:
    """Just enough RFC 6455 to read JSON text messages from ComfyUI's /ws endpoint."""

    def __init__(self, url: str, timeout: float = 600) -> None:
        parts = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path + ("?" + parts.query if parts.query else "")
        request = (f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        self.buf = b""
        header = self._read_until(b"\r\n\r\n")
        if b" 101 " not in header.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake failed: {header[:200]!r}")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buf += chunk
        head, self.buf = self.buf.split(marker, 1)
        return head

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def messages(self) -> Iterator[dict[str, Any]]:
        fragments = b""
        while True:
            b1, b2 = self._read(2)
            opcode, length = b1 & 0x0F, b2 & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._read(8))
            mask = self._read(4) if b2 & 0x80 else None
            payload = self._read(length)
            if mask:
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            if opcode == 0x8:
                return
            if opcode in (0x1, 0x0):
                fragments += payload
                if b1 & 0x80:
                    text, fragments = fragments, b""
                    yield json.loads(text)
            # binary frames (preview images) and pings are ignored

    def close(self) -> None:
        self.sock.close()


@dataclass
class QueuedPrompt:
    label: str
    prompt_id: str | None = None
    status: str = "pending"
    error: str = ""
    files: list[Path] = field(default_factory=list)


def _request(server: str, path: str, body: dict | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(server.rstrip("/") + path,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw and r.headers.get_content_type()
                              == "application/json" else raw)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def apply_overrides(workflow: dict, sets: list[str]) -> dict:
    """``NODE.INPUT=VALUE`` (NODE: an id or a class_type; VALUE parsed as JSON when it can be)."""
    wf = copy.deepcopy(workflow)
    for item in sets:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise InputError(f"--set expects NODE.INPUT=VALUE, got {item!r}")
        target, value = item.split("=", 1)
        node, name = target.rsplit(".", 1)
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        ids = [i for i, n in wf.items() if i == node or n.get("class_type") == node]
        if not ids:
            raise InputError(f"--set {item!r}: no node with id or class_type {node!r}")
        for i in ids:
            wf[i]["inputs"][name] = parsed
    return wf


def seed_inputs(workflow: dict) -> list[tuple[str, str]]:
    return [(i, "seed") for i, n in workflow.items() if "seed" in n.get("inputs", {})
            and not isinstance(n["inputs"]["seed"], list)]


def queue_workflows(server: str, workflow: dict, sets: list[str], seeds: list[int] | None,
                    out_dir: Path | None, timeout: float = 3600) -> list[QueuedPrompt]:
    """Queue one prompt per seed (or one), follow them, fetch their images, report each."""
    base = apply_overrides(workflow, sets)
    client_id = uuid.uuid4().hex
    ws_url = server.replace("http", "ws", 1).rstrip("/") + f"/ws?clientId={client_id}"
    reader = WebSocketReader(ws_url, timeout=timeout)
    jobs: dict[str, QueuedPrompt] = {}
    results: list[QueuedPrompt] = []
    try:
        for seed in (seeds if seeds is not None else [None]):
            wf = _prompt_for(base, seed)
            label = "prompt" if seed is None else f"seed{seed}"
            job = QueuedPrompt(label)
            results.append(job)
            status, body = _request(server, "/prompt", {"prompt": wf, "client_id": client_id})
            if status != 200:
                job.status = "rejected"
                job.error = json.dumps(body)[:2000] if not isinstance(body, str) else body
                continue
            job.prompt_id = body["prompt_id"]
            jobs[job.prompt_id] = job
            print(f"queued {label}: {job.prompt_id}", file=sys.stderr)
        pending = set(jobs)
        try:
            _follow(reader, jobs, pending, time.time() + timeout)
        except TimeoutError:
            pass  # the server went silent: what is still pending is reported as timed out
        except OSError as exc:  # the server closed the websocket or went away
            for pid in pending:
                jobs[pid].status, jobs[pid].error = "failed", f"lost the server's websocket ({exc})"
    finally:
        reader.close()
    for job in results:
        if job.status == "success" and out_dir is not None and job.prompt_id:
            job.files = _download_outputs(server, job, out_dir)
        elif job.status == "pending":
            job.status, job.error = "timeout", f"not finished after {timeout}s"
    return results


def _follow(reader: WebSocketReader, jobs: dict[str, QueuedPrompt], pending: set[str],
            deadline: float) -> None:
    """Read the server's messages until every pending prompt ended or the deadline passed
    (the socket's own timeout stops a silent server; the caller reports what is left)."""
    for msg in reader.messages() if pending else iter(()):
        data = msg.get("data") or {}
        pid = data.get("prompt_id")
        if pid in pending:
            kind = msg.get("type")
            if kind == "progress":
                print(f"{jobs[pid].label}: {data.get('value')}/{data.get('max')}",
                      file=sys.stderr)
            elif kind in ("execution_error", "execution_interrupted"):
                jobs[pid].status = "failed" if kind == "execution_error" else "interrupted"
                jobs[pid].error = data.get("exception_message", kind)
                pending.discard(pid)
            elif kind == "executing" and data.get("node") is None:
                jobs[pid].status = "success"
                pending.discard(pid)
        if not pending or time.time() > deadline:
            return
        reader.sock.settimeout(max(0.1, deadline - time.time()))


def _prompt_for(base: dict, seed: int | None) -> dict:
    wf = copy.deepcopy(base)
    if seed is not None:
        targets = seed_inputs(wf)
        if not targets:
            raise InputError("--seeds given but no node in the workflow has a 'seed' input")
        for node, name in targets:
            wf[node]["inputs"][name] = seed
    return wf


def queue_across_servers(servers: list[str], workflow: dict, sets: list[str],
                         seeds: list[int] | None, out_dir: Path | None,
                         timeout: float = 3600, in_flight: int = 2,
                         poll: float = 0.5) -> list[QueuedPrompt]:
    """Spread a batch over several ComfyUI servers (one per GPU or machine).

    Each server holds at most ``in_flight`` of our prompts at a time; completion is read from
    its /history. A server that stops answering is dropped and its unfinished prompts go to
    another server, so every prompt completes once (outputs are fetched from the server that
    finished it); a prompt the server rejects or that fails there is reported, not retried.
    """
    base = apply_overrides(workflow, sets)
    todo = [(seed, QueuedPrompt("prompt" if seed is None else f"seed{seed}"))
            for seed in (seeds if seeds is not None else [None])]
    results = [job for _, job in todo]
    alive: dict[str, list] = {s.rstrip("/"): [] for s in servers}  # server -> [(seed, job)] in flight
    deadline = time.time() + timeout
    client_id = uuid.uuid4().hex
    while (todo or any(alive.values())) and time.time() < deadline:
        if not alive:
            for _, job in todo:
                job.status, job.error = "failed", "no server left answering"
            break
        for server in list(alive):
            while todo and len(alive[server]) < in_flight:
                seed, job = todo.pop(0)
                try:
                    status, body = _request(server, "/prompt",
                                            {"prompt": _prompt_for(base, seed),
                                             "client_id": client_id})
                except OSError:
                    todo.insert(0, (seed, job))
                    todo[:0] = alive.pop(server)
                    print(f"{server}: not answering; its prompts go elsewhere",
                          file=sys.stderr)
                    break
                if status != 200:
                    job.status = "rejected"
                    job.error = body if isinstance(body, str) else json.dumps(body)[:2000]
                    continue
                job.prompt_id = body["prompt_id"]
                alive[server].append((seed, job))
                print(f"queued {job.label} on {server}: {job.prompt_id}", file=sys.stderr)
        for server in list(alive):
            try:
                alive[server] = _poll_server(server, alive[server], out_dir)
            except OSError:  # it went away (also mid-download): its unfinished prompts
                for seed, job in alive.pop(server):  # run elsewhere; finished ones stay done
                    if job.status == "pending":
                        job.prompt_id, job.files = None, []
                        todo.insert(0, (seed, job))
                print(f"{server}: went away; re-queueing its prompts", file=sys.stderr)
        time.sleep(poll)
    for job in results:
        if job.status == "pending":
            job.status, job.error = "timeout", f"not finished after {timeout}s"
    return results


def _poll_server(server: str, in_flight: list, out_dir: Path | None) -> list:
    """Read each in-flight prompt's state from the server's /history; finished ones get their
    status (and, when asked, their outputs); return those still running. An OSError (the
    server went away, even half-way through a download) leaves every job of this server
    unfinished for the caller to re-queue: nothing half-downloaded is kept."""
    still = []
    for seed, job in in_flight:
        _, hist = _request(server, f"/history/{job.prompt_id}")
        entry = hist.get(job.prompt_id) if isinstance(hist, dict) else None
        state = (entry or {}).get("status") or {}
        if entry and state.get("completed"):
            if out_dir is not None:
                job.files = _download_outputs(server, job, out_dir)
            job.status = "success"
        elif entry and state.get("status_str") == "error":
            job.status = "failed"
            msgs = [m for m in state.get("messages", []) if m[0] == "execution_error"]
            job.error = (msgs[0][1].get("exception_message", "execution error")
                         if msgs else "execution error")
        else:
            still.append((seed, job))
    return still


def _download_outputs(server: str, job: QueuedPrompt, out_dir: Path) -> list[Path]:
    """Fetch the images a finished prompt saved (Save Image and the like: type "output"; the
    previews nodes show, type "temp", only when it saved none, e.g. a workflow ending in
    Preview Image), all of them before any is written (a server dying half-way leaves no
    partial set behind), then write them atomically."""
    _, hist = _request(server, f"/history/{job.prompt_id}")
    fetched: list[tuple[Path, bytes]] = []
    images = [(node_id, img) for node_id, output in
              (hist.get(job.prompt_id, {}).get("outputs") or {}).items()
              for img in output.get("images", [])]
    if any(img.get("type") == "output" for _, img in images):
        images = [(node_id, img) for node_id, img in images if img.get("type") == "output"]
    for node_id, img in images:
        query = urllib.parse.urlencode({k: img.get(k, "") for k in
                                        ("filename", "subfolder", "type")})
        status, data = _request(server, f"/view?{query}")
        if status == 200 and isinstance(data, bytes):
            fetched.append((out_dir / job.label / f"{node_id}_{img['filename']}", data))
    for path, data in fetched:
        write_bytes_atomic(path, data)
    return [path for path, _ in fetched]
