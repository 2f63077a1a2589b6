"""The GPU check: one call on a bare GPU machine proves the CUDA path and measures real-scale
edits, then writes ``gpu_check.json`` and ``gpu_check.log`` to ``--out``.

    python scripts/gpu_check.py --out "$OUT"                 # on the GPU machine (~6 minutes)
    python scripts/gpu_check.py --out out/gpu --device cpu --quick   # rehearsal on the CPU

What it does, in order, each step timed and guarded so a failure is recorded, not fatal:
1. installs what the image lacks (open_clip and its small dependencies) from wheels carried in
   ``.gpu_wheels/`` (fill it here with ``--fetch-wheels``; torch comes from the image);
2. runs the GPU tier (``pytest -m gpu tests/gpu``; skipped on the CPU);
3. for each resolution (256, 512, 1024; ``--quick``: 32 and 64 px): a random config-f StyleGAN2
   and a random ViT-B/32 (nothing downloaded): generation at batch 8 (ms/image), apply of a
   segment-selection edit, a per-image SS edit with the library's defaults (the sample bank's
   build timed apart), the same in bf16, a per-prompt CAN edit at batch 4 (steps/s) and a short
   inversion, each with its peak memory (``torch.cuda.max_memory_allocated``; RSS on the CPU).
It stops starting new work after ``--budget`` seconds (default 420), so a rerun fits in the
device time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpu_wheels"
# open_clip and everything it imports but torch; torchvision is only installed when the image
# lacks it (0.26 pairs with the image's torch 2.11)
WHEEL_PACKAGES = ("open_clip_torch", "ftfy", "wcwidth", "regex", "timm", "huggingface_hub",
                  "safetensors", "einops", "tqdm", "pyyaml", "filelock", "fsspec", "packaging",
                  "typing_extensions", "hf_xet", "click", "httpx2", "httpcore", "anyio", "idna",
                  "certifi", "h11", "sniffio", "httpcore2", "truststore",
                  "torchvision==0.26.*")


def fetch_wheels(python_version: str = "3.12") -> None:
    """Download the wheels the GPU image lacks (run here, where the registry is reachable)."""
    WHEELS.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", python_version,
                    "--platform", "manylinux2014_x86_64", "--platform",
                    "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "any", "-d", str(WHEELS),
                    *WHEEL_PACKAGES], check=True)


def ensure_open_clip(log: Callable[[str], None]) -> None:
    try:
        import open_clip  # noqa: F401
        return
    except ImportError:
        pass
    log(f"installing open_clip from {WHEELS}")
    wheels = sorted(str(w) for w in WHEELS.glob("*.whl"))
    try:
        import torchvision  # noqa: F401
        wheels = [w for w in wheels if "torchvision" not in Path(w).name]
    except ImportError:
        pass
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    *wheels], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/gpu_check")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU rehearsal)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds before no new work")
    ap.add_argument("--fetch-wheels", action="store_true", help="only download the wheels")
    args = ap.parse_args()
    if args.fetch_wheels:
        fetch_wheels()
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.perf_counter() - t_start:6.1f}s] {msg}"
        print(line, flush=True)
        lines.append(line)
        (out / "gpu_check.log").write_text("\n".join(lines) + "\n")

    results: dict[str, Any] = {"device": args.device, "quick": args.quick, "steps": {}}

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))

    def step(name: str, fn: Callable[[], Any]) -> Any:
        if time.perf_counter() - t_start > args.budget:
            log(f"SKIP {name}: past the {args.budget:.0f} s budget")
            results["steps"][name] = "skipped (budget)"
            save()
            return None
        log(f"start {name}")
        try:
            value = fn()
            results["steps"][name] = value
            log(f"done  {name}: {json.dumps(value, default=str)[:300]}")
        except Exception as exc:  # noqa: BLE001 - record and go on: the next rerun fixes it
            results["steps"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                      "trace": traceback.format_exc()[-2000:]}
            log(f"FAIL  {name}: {type(exc).__name__}: {exc}")
        save()
        return results["steps"][name]

    sys.path.insert(0, str(ROOT))
    step("install", lambda: ensure_open_clip(log) or "ok")
    import torch

    results["torch"] = torch.__version__
    results["cuda"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        step("gpu tier", lambda: _pytest_gpu())
    sizes = (32, 64) if args.quick else (256, 512, 1024)
    for res in sizes:
        step(f"{res}px", lambda res=res: _scale(res, device, args.quick, log))
    results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    save()
    log(f"finished in {results['wall_seconds']} s")
    return 0


def _pytest_gpu() -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--import-mode=importlib",
                           "--rootdir", "tests", "-m", "gpu", "tests/gpu", "-q", "-x",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    return {"returncode": proc.returncode, "tail": proc.stdout[-1500:] + proc.stderr[-500:]}


def _peak(device: Any) -> float:
    import torch

    from coral_core.devices import peak_rss_mib

    if device.type == "cuda":
        torch.cuda.synchronize()
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(peak_rss_mib(), 1)


def _reset(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _timed(device: Any, fn: Callable[[], Any]) -> tuple[float, Any]:
    import torch

    _reset(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, value


def _scale(res: int, device: Any, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    import tempfile

    import torch

    from coral_core.commands.bench import _edit_selecting, config_f_generator, random_vit_b32
    from coral_core.editing.apply import apply_edits
    from coral_core.editing.trainer import TrainConfig, train_edit
    from coral_core.inversion import InvertConfig, invert

    G = config_f_generator(res, device)
    clip = random_vit_b32(device)
    out: dict[str, Any] = {"resolution": res}
    ws8 = G.mapping_ws(G.z_from_seeds(range(8)).to(device))
    with torch.no_grad():
        G.synthesize(ws8[:1])  # warm-up (cuDNN autotuning, lazy init)
        t, _ = _timed(device, lambda: [G.synthesize(ws8) for _ in range(3)])
    out["generate_ms_per_image_b8"] = round(t / 3 / 8 * 1000, 2)
    out["generate_peak_mib"] = _peak(device)
    edit = _edit_selecting(G, list(range(len(G.conv_layers) // 2, len(G.conv_layers) + 1)))
    t, _ = _timed(device, lambda: apply_edits(G, ws8, [edit]))
    out["apply_ms_per_image_b8"] = round(t / 8 * 1000, 2)
    out["apply_peak_mib"] = _peak(device)
    steps = 5 if quick else 200
    bank = 64 if quick else 1024
    ws1 = ws8[:1]
    with tempfile.TemporaryDirectory() as cache:
        for bf16 in ((False,) if device.type != "cuda" else (False, True)):
            # check_fit off: with random weights the fit check could skip the training
            cfg = TrainConfig(prompt="a face with a beard", steps=steps, batch=1, bf16=bf16,
                              prior_samples=bank, catalogue_dir=Path(cache), check_fit=False)
            t, r = _timed(device, lambda cfg=cfg: train_edit(G, clip, cfg, latents=ws1))
            key = "ss_edit_bf16" if bf16 else "ss_edit_fp32"
            out[key] = {"seconds": round(t, 2), "steps": steps, "peak_mib": _peak(device),
                        "train_seconds": r.edit.info.get("wall_seconds")}
            log(f"{res}px {key}: {out[key]}")
        can_steps = 3 if quick else 30
        cfg = TrainConfig(prompt="a face with a beard", variant="can", mode="per_prompt",
                          steps=can_steps, batch=4, prior_samples=bank,
                          catalogue_dir=Path(cache))
        t, _ = _timed(device, lambda: train_edit(G, clip, cfg))
        out["can_b4"] = {"steps_per_second": round(can_steps / t, 3), "seconds": round(t, 2),
                         "peak_mib": _peak(device), "note": "includes the catalogue and bank"}
    with torch.no_grad():
        target = G.synthesize(ws1)
    t, _ = _timed(device, lambda: invert(G, target, InvertConfig(steps=3 if quick else 50),
                                         clip=clip))
    out["invert"] = {"seconds": round(t, 2), "steps": 3 if quick else 50,
                     "peak_mib": _peak(device)}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
