"""The hostile-file re-count's second half: the same inputs through a real ComfyUI server.

Each input the nodes can reach is dropped into the folder its loader node reads (models/
coral_clip, models/stylegan, models/coral_edits, output/coral_latents) or typed into the node
(prompts), and a prompt that runs that node is queued over the HTTP API. Per input: the node's
error (it must be that loader's, name the file and be one of the pack's own error types, not a
raw exception), a crash or hang of the server (it is restarted and the input counted), the peak
memory of the server above its memory just before (the high-water mark, reset each time), and
whether the server then serves the next prompt. Used by ``hostile_recount.py --server``.
"""
from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from comfy_server import ComfyServer, load_workflow

OWN_ERRORS = {"ModelFormatError", "UnsafeFileError", "InputError", "EditMismatchError",
              "CoralError", "FileNotFoundError"}  # FileNotFoundError: the pack's own message
MODEL_FOLDERS = {"clip": "models/coral_clip", "generator": "models/stylegan",
                 "edit": "models/coral_edits", "latents": "output/coral_latents"}
NEXT_PROMPT = {"1": {"class_type": "CoralLoadStyleGAN",
                     "inputs": {"generator": "[demo] shapes generator"}},
               "2": {"class_type": "CoralSampleLatents",
                     "inputs": {"model": ["1", 0], "seed": 5, "batch_size": 1,
                                "truncation": 1.0}},
               "3": {"class_type": "CoralGenerate",
                     "inputs": {"model": ["1", 0], "latents": ["2", 0], "noise_mode": "const"}},
               "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}


def _arg(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _train_workflow(**changes: Any) -> dict:
    """The shipped train template, cut to a two-step run without the prior (the CLI cases
    train with --steps 1-2 --prior-samples 0 too)."""
    wf = load_workflow("train_apply_visualise")
    train = next(k for k, n in wf.items() if n["class_type"] == "CoralTrainEdit")
    wf[train]["inputs"].update(steps=2, prior_samples=0)
    for class_type, inputs in changes.items():
        node = next(k for k, n in wf.items() if n["class_type"] == class_type)
        wf[node]["inputs"].update(inputs)
    return wf


def _generate_from(generator: str | None = None, latent_file: str | None = None) -> dict:
    wf = json.loads(json.dumps(NEXT_PROMPT))
    if generator is not None:
        wf["1"]["inputs"]["generator"] = generator
    if latent_file is not None:
        wf["5"] = {"class_type": "CoralLoadLatents",
                   "inputs": {"latent_file": latent_file, "model": ["1", 0]}}
        wf["3"]["inputs"]["latents"] = ["5", 0]
        del wf["2"]
    return wf


def node_prompt(case: Any, base: Path, tag: str) -> tuple[dict, str, str] | None:
    """Place the case's file where its node reads it: (prompt, node class that must fail or
    load, the name the error must carry); None when no node reads this kind of input."""
    argv = case.argv
    if argv[0] == "train" and "--clip" in argv:
        src = Path(_arg(argv, "--clip") or "")
        folder = base / MODEL_FOLDERS["clip"] / tag
        if src.is_dir():
            shutil.copytree(src, folder)
            value = tag
        else:  # a file keeps what lay beside it (the config the CLI would read)
            folder.mkdir(parents=True)
            shutil.copy(src, folder / src.name)
            if (src.parent / "open_clip_config.json").is_file():
                shutil.copy(src.parent / "open_clip_config.json", folder)
            value = f"{tag}/{src.name}"
        wf = _train_workflow(CoralLoadCLIP={"clip_name": value,
                                            "model_name": _arg(argv, "--clip-model") or ""})
        return wf, "CoralLoadCLIP", tag  # the error may name the config beside the weights
    if argv[0] == "info":
        src = Path(argv[1])
        dest = base / MODEL_FOLDERS["generator"] / f"{tag}{src.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
        return _generate_from(generator=dest.name), "CoralLoadStyleGAN", dest.name
    if argv[0] == "apply" and "--latent" in argv:
        src = Path(_arg(argv, "--latent") or "")
        if src.suffix != ".npz":
            return None  # Load Latents lists .safetensors and .npz only
        dest = base / MODEL_FOLDERS["latents"] / f"{tag}.npz"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
        return _generate_from(latent_file=dest.name), "CoralLoadLatents", dest.name
    if argv[0] == "apply" and case.disk is None:
        src = Path(_arg(argv, "--edit") or "")
        dest = base / MODEL_FOLDERS["edit"] / f"{tag}.safetensors"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
        wf = load_workflow("apply_saved_edit")
        wf["4"]["inputs"]["edit_name"] = dest.name
        wf["3"]["inputs"]["batch_size"] = 1
        return wf, "CoralLoadEdit", dest.name
    if argv[0] == "train" and case.cls.startswith("prompts"):
        prompt = _arg(argv, "--prompt") or ""
        return _train_workflow(CoralTrainEdit={"prompt": prompt}), "CoralTrainEdit", "prompt"
    return None  # resume checkpoints, full disks, two writers, killed writes: CLI paths


def _status_kb(pid: int, field: str) -> int:
    """A memory figure of a running process: "VmRSS" now, "VmHWM" its peak (kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


class CappedServer(ComfyServer):
    """A ComfyUI server under an address-space cap, as the CLI runs are."""

    def __init__(self, base: Path, cap_bytes: int) -> None:
        super().__init__(base)
        self.cap_bytes = cap_bytes

    def start(self, timeout: float = 180) -> "CappedServer":
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (self.cap_bytes, hard))  # the child inherits it
        try:
            super().start(timeout)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        return self


def _classify(result: dict, node_id: str, name: str) -> tuple[str, str]:
    if result["status"] == "success":
        return "loaded", ""
    if result["status"] == "rejected":
        return "rejected by validation", json.dumps(result["body"])[:300]
    data = result["data"]
    message = str(data.get("exception_message", ""))[:300]
    kind = str(data.get("exception_type", "")).rsplit(".", 1)[-1]
    if data.get("node_id") != node_id:
        return f"error at another node ({data.get('node_type')})", message
    if kind not in OWN_ERRORS:
        return f"raw {kind}", message
    return ("named error", message) if name in message else ("error without the file", message)


def run_cases(cases: list, work: Path, cap_bytes: int, timeout: float = 180) -> list[dict]:
    """Every case a node can reach, through one server (restarted after a crash or hang)."""
    base = work / "server"
    server = CappedServer(base, cap_bytes).start()
    rows: list[dict] = []
    try:
        server.run(NEXT_PROMPT, timeout=timeout)  # warm: models of the next prompt resident
        for i, case in enumerate(cases, 1):
            placed = node_prompt(case, base, f"c{i:03d}")
            if placed is None:
                continue
            wf, class_type, name = placed
            node_id = next(k for k, v in wf.items() if v["class_type"] == class_type)
            before_kb = _status_kb(server.proc.pid, "VmRSS")
            _reset_peak(server.proc.pid)
            t0 = time.perf_counter()
            try:
                outcome, message = _classify(server.run(wf, timeout=timeout), node_id, name)
            except (TimeoutError, OSError) as exc:
                alive = server.proc.poll() is None
                outcome = "hang" if alive else f"crash (exit {server.proc.returncode})"
                message = str(exc)[:300]
            peak = _status_kb(server.proc.pid, "VmHWM") if server.proc.poll() is None else 0
            serves_next = False
            if server.proc.poll() is None and outcome != "hang":
                try:
                    serves_next = server.run(NEXT_PROMPT, timeout=timeout)["status"] == "success"
                except (TimeoutError, OSError):
                    serves_next = False
            if server.proc.poll() is not None or outcome == "hang":
                server.stop()
                server = CappedServer(base, cap_bytes).start()
            expected = "loaded" if case.expect_load else "named error"
            rows.append({"class": case.cls, "input": case.name, "outcome": outcome,
                         "ok": outcome == expected and serves_next,
                         "serves_next_prompt": serves_next,
                         "seconds": round(time.perf_counter() - t0, 1),
                         "rss_above_baseline_mib": max(0, round((peak - before_kb) / 1024)),
                         "message": message})
            print(f"[server {i}/{len(cases)}] {case.cls} / {case.name}: {outcome}"
                  f"{'' if serves_next else ', NEXT PROMPT FAILED'} "
                  f"(+{rows[-1]['rss_above_baseline_mib']} MiB)"
                  + ("" if rows[-1]["ok"] else f"  <-- {message}"), flush=True)
    finally:
        server.stop()
    rows += full_disk_save(work, cap_bytes, timeout)
    return rows


def full_disk_save(work: Path, cap_bytes: int, timeout: float) -> list[dict]:
    """Save Edit onto a full models/coral_edits (a filled tmpfs in the server's own mount
    namespace): the node's error must name the file and say where the edit was kept, and the
    server must serve the next prompt."""
    base = work / "server_full_disk"
    edits = base / MODEL_FOLDERS["edit"]
    edits.mkdir(parents=True, exist_ok=True)
    rescue = work / "server_rescue"
    rescue.mkdir(exist_ok=True)
    server = CappedServer(base, cap_bytes)
    server.wrap = ["unshare", "--mount", "--map-root-user", "--", "sh", "-c",
                   'mount -t tmpfs -o size=512k tmpfs "$0" && dd if=/dev/zero of="$0/fill" '
                   'bs=4k 2>/dev/null; exec "$@"', str(edits)]
    server.env = {"TMPDIR": str(rescue)}
    try:
        server.start()
    except (RuntimeError, subprocess.SubprocessError) as exc:
        return [{"class": "full disk", "input": "Save Edit", "outcome": "not run", "ok": False,
                 "serves_next_prompt": False, "seconds": 0, "rss_above_baseline_mib": 0,
                 "message": str(exc)[:300]}]
    try:
        wf = _train_workflow()  # the template ends in Save Edit
        save = next(k for k, n in wf.items() if n["class_type"] == "CoralSaveEdit")
        result = server.run(wf, timeout=timeout)
        outcome, message = _classify(result, save, "_00001.safetensors")
        kept = [p for p in (rescue / "coral-rescued").glob("*.safetensors")]
        if outcome == "named error" and not ("kept at" in message and kept):
            outcome = "lost work"
        serves_next = server.run(NEXT_PROMPT, timeout=timeout)["status"] == "success"
    finally:
        server.stop()
    return [{"class": "full disk", "input": "Save Edit node", "outcome": outcome,
             "ok": outcome == "named error" and serves_next, "serves_next_prompt": serves_next,
             "seconds": 0, "rss_above_baseline_mib": 0, "message": message}]

