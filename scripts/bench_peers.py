#!/usr/bin/env python3
"""The editing hot path beside the peers' own generators, built from their public sources at
run time (never committed), timed interleaved run by run in one process on one device.

    python scripts/bench_peers.py --nvlabs DIR --rosinality DIR [--resolution 256] [--batch 4]

DIR: a checkout of NVlabs/stylegan2-ada-pytorch and of rosinality/stylegan2-pytorch (e.g.
``git clone``, or ``git archive`` of a mirror). All generators are config-f shaped (512-d z/w,
8 mapping layers, channel_base 32768, channel_max 512 / channel multiplier 2) with random
weights; the timed operation is what every edit and inversion step does: synthesis from W+
forward, then backward to W+. rosinality's CUDA extensions are not compiled: their modules'
own CPU code paths run (the script stubs the compile call at import; on CUDA it refuses).
Ratios are to this project's default path.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coral_core.commands.bench import config_f_generator, median_time  # noqa: E402
from coral_core.devices import pick_device  # noqa: E402
from coral_core.stylegan import ops  # noqa: E402


def import_from(checkout: Path, module: str, stub_compile: bool = False) -> Any:
    """Import ``module`` from a peer's checkout (its folder first on the path)."""
    sys.path.insert(0, str(checkout))
    try:
        if stub_compile:  # the CPU paths of rosinality's ops never touch the extension
            with mock.patch("torch.utils.cpp_extension.load", return_value=None):
                return importlib.import_module(module)
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(checkout))


def nvlabs_step(checkout: Path, resolution: int, ws: torch.Tensor, fused: bool
                ) -> Callable[[], None]:
    networks = import_from(checkout, "training.networks")
    G = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution,
                           img_channels=3, mapping_kwargs={"num_layers": 8},
                           synthesis_kwargs={"channel_base": 32768, "channel_max": 512,
                                             "num_fp16_res": 0, "conv_clamp": None})
    G = G.to(ws.device).train(False).requires_grad_(False)

    def step() -> None:
        w = ws.clone().requires_grad_(True)
        G.synthesis(w, noise_mode="const", fused_modconv=fused).square().mean().backward()
    return step


def rosinality_step(checkout: Path, resolution: int, ws: torch.Tensor) -> Callable[[], None]:
    if ws.device.type != "cpu":
        raise SystemExit("rosinality's ops need their compiled CUDA extension off the CPU")
    model = import_from(checkout, "model", stub_compile=True)
    G = model.Generator(resolution, 512, 8, channel_multiplier=2).train(False)
    G.requires_grad_(False)
    w_plus = ws[:, :G.n_latent]

    def step() -> None:
        w = w_plus.clone().requires_grad_(True)
        img, _ = G([w], input_is_latent=True, randomize_noise=False)
        img.square().mean().backward()
    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nvlabs", type=Path, required=True)
    ap.add_argument("--rosinality", type=Path, required=True)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = pick_device(args.device)
    G = config_f_generator(args.resolution, dev)
    ws = G.mapping_ws(torch.randn(args.batch, G.z_dim,
                                  generator=torch.Generator().manual_seed(0)).to(dev))
    noise = G.make_noise(args.batch, "const")

    def ours(fused: bool) -> Callable[[], None]:
        def step() -> None:
            ops.FUSED_MODCONV = fused
            w = ws.clone().requires_grad_(True)
            G.synthesize(w, noise=noise).square().mean().backward()
        return step

    default = ops.FUSED_MODCONV
    paths = {
        "this project (default, unfused)": ours(False),
        "this project, fused grouped conv": ours(True),
        "NVlabs stylegan2-ada, fused modconv": nvlabs_step(args.nvlabs, args.resolution, ws, True),
        "NVlabs stylegan2-ada, non-fused": nvlabs_step(args.nvlabs, args.resolution, ws, False),
        "rosinality (CPU code paths)": rosinality_step(args.rosinality, args.resolution, ws),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for _ in range(args.repeats):
            for name, step in paths.items():
                times[name].append(median_time(step, 1, dev))
    finally:
        ops.FUSED_MODCONV = default
    base = float(np.median(times["this project (default, unfused)"]))
    print(f"device {dev}, config-f {args.resolution}px, batch {args.batch}, forward + backward "
          f"w.r.t. W+, median of {args.repeats} interleaved runs; ratio to this project's "
          "default (lower is faster)")
    print("| path | ms | ratio |\n|---|---|---|")
    for name, t in times.items():
        med = float(np.median(t))
        print(f"| {name} | {med * 1000:.0f} | {med / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
