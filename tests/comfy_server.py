"""Start and drive a real ComfyUI 0.3.75 server with this pack mounted (for e2e tests)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / ".host" / "comfyui"
PACK_NAME = "ComfyUI-CoralStyleCLIP"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, base: Path, front_end: Path | None = None) -> None:
        if not (HOST / "main.py").is_file():
            raise RuntimeError(f"no ComfyUI host at {HOST}: run ./scripts/setup.sh first")
        self.base = base
        self.front_end = front_end  # a front end's static folder; None: the host's bundled one
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.proc: subprocess.Popen | None = None
        self.wrap: list[str] = []       # a command prefix (e.g. a private mount namespace)
        self.env: dict[str, str] = {}   # extra environment for the server

    def start(self, timeout: float = 120) -> "ComfyServer":
        packs = self.base / "packs"
        packs.mkdir(parents=True, exist_ok=True)
        link = packs / PACK_NAME
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        (self.base / "custom_nodes").mkdir(exist_ok=True)
        (self.base / "extra.yaml").write_text(f"coral_tests:\n  custom_nodes: {packs}\n")
        cmd = [sys.executable, str(HOST / "main.py"), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--base-directory", str(self.base),
               "--extra-model-paths-config", str(self.base / "extra.yaml"),
               "--disable-auto-launch", "--disable-api-nodes",
               "--database-url", "sqlite:///:memory:"]
        if self.front_end is not None:
            cmd += ["--front-end-root", str(self.front_end)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **self.env)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.wrap + cmd, cwd=HOST, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early:\n{self.log_text()[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not start in {timeout}s:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ---- HTTP -------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            data = r.read()
        try:
            return json.loads(data)
        except ValueError:
            return data

    def post(self, path: str, body: dict) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None

    # ---- prompts ----------------------------------------------------------------------------
    def run(self, prompt: dict, timeout: float = 300, on_message=None) -> dict:
        """Queue a prompt and follow it over the websocket until it finishes or fails."""
        import websocket

        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}",
                                         timeout=timeout)
        try:
            status, body = self.post("/prompt", {"prompt": prompt, "client_id": client_id})
            if status != 200:
                return {"status": "rejected", "http": status, "body": body, "messages": []}
            pid = body["prompt_id"]
            messages = []
            deadline = time.time() + timeout
            while time.time() < deadline:
                raw = ws.recv()
                if not isinstance(raw, str):
                    continue
                msg = json.loads(raw)
                messages.append(msg)
                if on_message is not None:
                    on_message(self, pid, msg)
                data = msg.get("data", {})
                if data.get("prompt_id") not in (None, pid):
                    continue
                kind = msg["type"]
                if kind in ("execution_error", "execution_interrupted"):
                    return {"status": kind, "prompt_id": pid, "messages": messages,
                            "data": data}
                if kind == "executing" and data.get("node") is None and \
                        data.get("prompt_id") == pid:
                    hist = self.get(f"/history/{pid}")[pid]
                    return {"status": "success", "prompt_id": pid, "messages": messages,
                            "outputs": hist["outputs"]}
            raise TimeoutError(f"prompt {pid} did not finish in {timeout}s")
        finally:
            ws.close()


def upload_image(server: "ComfyServer", name: str, png: bytes) -> dict:
    """POST /upload/image (multipart), as the front end does."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode() + png + \
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue" \
        f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(server.url + "/upload/image", data=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def output_images(server: "ComfyServer", outputs: dict, node: str) -> list:
    """Decode the images a SaveImage node wrote, via GET /view."""
    import io

    import numpy as np
    from PIL import Image

    arrays = []
    for img in outputs[node]["images"]:
        query = urllib.parse.urlencode({k: img[k] for k in ("filename", "subfolder", "type")})
        data = server.get(f"/view?{query}")
        arrays.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return arrays


def load_workflow(name: str) -> dict:
    return json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
