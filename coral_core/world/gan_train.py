"""Training the demo world's small StyleGAN2 (coral_core's own generator) — supervised route.

Why not adversarial: a first adversarial trial on these 2 CPU cores gave blurry blobs after ten
minutes and rounded, partly empty samples after 84 (see shared/docs/demo-world-notes.md). The
world is procedural, so the scene can be a fixed function of z (``scene.scenes_from_z``): the
generator is trained to draw the scene its z names (L1 + L2 reconstruction). Every sample then
has known scene parameters and true masks, attributes follow the renderer's distribution by
construction (no mode collapse), and training converges in minutes. The architecture is a real
StyleGAN2 (mapping network, modulated convs, noise inputs, toRGB skips, 4 resolutions), so the
CORAL engine edits it exactly as it would a face model.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..atomic import atomic_path, write_text_atomic
from ..progress import Reporter
from ..stylegan import Generator, GeneratorConfig
from .render import render
from .scene import scenes_from_z

DEMO_GENERATOR_CFG = GeneratorConfig(img_resolution=32, z_dim=32, w_dim=128, mapping_layers=4,
                                     mapping_lr_multiplier=1.0, channel_base=2048,
                                     channel_max=96, conv_clamp=256.0)


def _checkpoint_path(out: Path) -> Path:
    return out.with_suffix(".ckpt.pt")


def train_gan(out: Path, steps: int = 4000, batch: int = 32, lr: float = 2e-3, seed: int = 0,
              reporter: Reporter | None = None, resume: bool = True,
              checkpoint_every: int = 250) -> dict[str, Any]:
    """Train (or resume) and write ``out`` (.safetensors); returns a small report."""
    from ..formats import save_generator

    torch.manual_seed(seed)
    G = Generator(DEMO_GENERATOR_CFG).train()
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.0, 0.99))
    start, elapsed = 0, 0.0
    ckpt = _checkpoint_path(out)
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        G.load_state_dict(state["G"])
        opt.load_state_dict(state["opt"])
        start, elapsed = int(state["step"]), float(state["elapsed"])
    g = torch.Generator().manual_seed(seed * 1_000_003 + start)
    t0 = time.perf_counter()
    loss_value = float("nan")
    for step in range(start + 1, steps + 1):
        z = torch.randn(batch, G.z_dim, generator=g)
        with torch.no_grad():
            target, _ = render(scenes_from_z(z), DEMO_GENERATOR_CFG.img_resolution)
        ws = G.mapping(z, update_w_avg=True)
        img = G.synthesize(ws, noise_mode="const")
        loss = F.l1_loss(img, target) + F.mse_loss(img, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        if reporter is not None:
            reporter.update(step, steps, loss=loss_value)
        if step % checkpoint_every == 0 or step == steps:
            with atomic_path(ckpt) as tmp:
                torch.save({"G": G.state_dict(), "opt": opt.state_dict(), "step": step,
                            "elapsed": elapsed + time.perf_counter() - t0}, tmp)
    G.train(False).requires_grad_(False)
    wall = elapsed + time.perf_counter() - t0
    save_generator(G, out, {"trained_on": "coral demo world (supervised route)",
                            "steps": str(steps), "wall_seconds": f"{wall:.0f}"})
    report = {"steps": steps, "batch": batch, "final_loss": loss_value, "wall_seconds": wall}
    write_text_atomic(out.with_suffix(".report.json"), json.dumps(report, indent=2))
    return report
