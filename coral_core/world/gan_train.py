"""Training the demo world's small StyleGAN2 (coral_core's own generator) — supervised route.

Why not adversarial: a first adversarial trial on 2 CPU cores gave blurry blobs after ten
minutes and rounded, partly empty samples after 84 (see shared/docs/demo-world-notes.md). The
world is procedural, so the scene is a fixed function of z (``scene.scenes_from_z``): the
generator is trained to draw the scene its z names (L1 + L2 reconstruction). Every sample then
has known scene parameters and true masks, attributes follow the renderer's distribution by
construction (no mode collapse). The architecture is a real StyleGAN2 (mapping network,
modulated convs, noise inputs, toRGB skips), so the CORAL engine edits it as it would a face
model.

Why the mapping network's first two layers are built, not learned (``init_scene_mapping``): a
scene's choices are step functions of z (which bin of the normal CDF a dim falls in). An MLP
learns steps slowly and leaves them soft, and every sample near a soft step is drawn as a blend
of two scenes (v1: median PSNR to the render 18 dB, object IoU 0.44). Pairs of lrelu ramps one
unit apart make exact near-steps (their difference is flat outside a 1/SHARPNESS-wide band), so
fc0/fc1 are set to emit one bounded step feature per threshold (plus the lighting gradient) and
frozen; fc2.. and the synthesis network learn the rest (colour look-ups, the rule that an object
never takes its background's colour, drawing).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path, write_text_atomic
from ..errors import InputError
from ..progress import Reporter
from ..stylegan import Generator, GeneratorConfig
from ..stylegan.layers import FullyConnectedLayer
from .clip_train import StepBudget, warmup_cosine
from .spec import WorldSpec, get_world

DEMO_GENERATOR_CFG = get_world("shapes").generator_cfg
SHARPNESS = 100.0  # step width in normalised-z units is 1 / SHARPNESS
FROZEN_MAPPING_LAYERS = ("fc0", "fc1")


def scene_thresholds(world: WorldSpec | None = None) -> list[tuple[int, float]]:
    """(z dim, threshold on the normalised z) for every discrete scene choice."""
    world = world or get_world("shapes")
    normal = torch.distributions.Normal(0.0, 1.0)
    return [(dim, float(normal.icdf(torch.tensor(j / n))))
            for dim, n in world.discrete_dims for j in range(1, n)]


@torch.no_grad()
def init_scene_mapping(G: Generator, world: WorldSpec | None = None) -> None:
    """Set fc0/fc1 so that fc1 emits one step feature per scene threshold and one linear
    feature per continuous parameter.

    fc0 row pairs compute lrelu(a (z_d - t)) and lrelu(a (z_d - t) - 1); fc1 takes their
    difference, which is 0.2 below the threshold and 1 above it (times lrelu's gain), bounded
    whatever z is. Unused rows are zero, so fc1's output holds nothing else.
    """
    fc0, fc1 = G.mapping.fc0, G.mapping.fc1
    assert isinstance(fc0, FullyConnectedLayer) and isinstance(fc1, FullyConnectedLayer)
    world = world or get_world("shapes")
    thresholds = scene_thresholds(world)
    if 2 * len(thresholds) + len(world.continuous_dims) > fc0.weight.shape[0]:
        raise ValueError("w_dim too small for the scene's step features")
    w0 = torch.zeros_like(fc0.weight)
    b0 = torch.zeros_like(fc0.bias)
    w1 = torch.zeros_like(fc1.weight)
    b1 = torch.zeros_like(fc1.bias)
    a = SHARPNESS
    for s, (dim, t) in enumerate(thresholds):
        for r, offset in ((2 * s, 0.0), (2 * s + 1, -1.0)):
            w0[r, dim] = a / fc0.weight_gain
            b0[r] = (-a * t + offset) / fc0.bias_gain
        # fc0's outputs carry lrelu's sqrt(2) gain; divide it out so steps are 0.2 .. 1.
        w1[s, 2 * s] = (1 / math.sqrt(2)) / fc1.weight_gain
        w1[s, 2 * s + 1] = (-1 / math.sqrt(2)) / fc1.weight_gain
    for j, dim in enumerate(world.continuous_dims):
        g_row = 2 * len(thresholds) + j
        w0[g_row, dim] = 1.0 / fc0.weight_gain
        b0[g_row] = 4.0 / fc0.bias_gain  # z + 4 > 0 for any plausible z: lrelu passes it
        w1[len(thresholds) + j, g_row] = (0.25 / math.sqrt(2)) / fc1.weight_gain
    fc0.weight.copy_(w0)
    fc0.bias.copy_(b0)
    fc1.weight.copy_(w1)
    fc1.bias.copy_(b1)


def part_pixel_weights(masks: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-pixel loss weights [B, 1, H, W]: 1 + strength * sqrt(mean part area / this part's).

    Why: a plain per-pixel loss spends itself on the large parts; a 10-pixel mouth or a
    6-pixel iris is a rounding error of it, and the generator draws them as smudges (face
    world at 16k steps: mouth IoU 0.15, irises 0.47). Weighting by rarity, measured from the
    batch's own true masks, is world-agnostic (no part is named). strength 0 gives 1s.
    """
    if strength <= 0:
        return torch.ones_like(masks[:, :1])
    area = masks.sum(dim=(0, 2, 3)).clamp(min=1.0)  # per part, over the batch
    present = masks.sum(dim=(0, 2, 3)) > 0
    rarity = (area[present].mean() / area).sqrt().clamp(max=8.0) * present
    per_pixel = (masks * rarity[None, :, None, None]).sum(1, keepdim=True)
    return 1.0 + strength * per_pixel


def _checkpoint_path(out: Path) -> Path:
    return out.with_suffix(".ckpt.pt")


def build_demo_generator(cfg: GeneratorConfig | None = None, world: WorldSpec | None = None
                         ) -> Generator:
    world = world or get_world("shapes")
    G = Generator(cfg or world.generator_cfg)
    init_scene_mapping(G, world)
    for name in FROZEN_MAPPING_LAYERS:
        getattr(G.mapping, name).requires_grad_(False)
    return G


def train_gan(out: Path, steps: int = 20000, batch: int = 16, lr: float = 2e-3, seed: int = 0,
              reporter: Reporter | None = None, resume: bool = True,
              checkpoint_every: int = 500, device: str = "cpu",
              cfg: GeneratorConfig | None = None,
              max_minutes: float | None = None, stop_at: int | None = None,
              world: str = "shapes", part_weight: float = 0.0,
              init_from: Path | None = None) -> dict[str, Any]:
    """Train (or resume) and write ``out`` (.safetensors); returns a small report.

    Adam with a cosine learning-rate decay over ``steps``; ``max_minutes`` stops early with a
    checkpoint (resume later with the same command) so a lent GPU's time limit loses nothing.
    Resuming with a larger ``steps`` continues on the longer schedule's tail (a fine-tune at a
    lower learning rate). ``part_weight`` > 0 weights each pixel by its part's rarity (see
    ``part_pixel_weights``). ``init_from``: a generator file of this world's architecture to
    start from (a fine-tune after the world's drawing changed: a fresh optimiser and
    schedule, the built mapping steps rebuilt); a checkpoint of ``out`` still wins.
    """
    from ..formats import load_generator, save_generator

    spec = get_world(world)
    cfg = cfg or spec.generator_cfg
    torch.manual_seed(seed)
    G = build_demo_generator(cfg, spec).to(device).train()
    ckpt = _checkpoint_path(out)
    resuming = resume and ckpt.is_file()
    if init_from is not None and not resuming:  # a checkpoint wins: no load for nothing
        source = load_generator(init_from).generator
        if source.cfg != cfg:  # a fine-tune starts from this world's architecture only
            raise InputError(f"{init_from}: not a generator of this world's architecture "
                             f"({source.cfg.img_resolution} px, w {source.cfg.w_dim}; this "
                             f"world's: {cfg.img_resolution} px, w {cfg.w_dim})")
        G.load_state_dict(source.state_dict())
        init_scene_mapping(G, spec)  # the built steps stay exactly as built
    params = [p for p in G.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.0, 0.99))
    start, elapsed = 0, 0.0
    if resuming:
        state = torch.load(ckpt, map_location=device, weights_only=True)
        G.load_state_dict(state["G"])
        opt.load_state_dict(state["opt"])
        start, elapsed = int(state["step"]), float(state["elapsed"])
    g = torch.Generator().manual_seed(seed * 1_000_003 + start)
    t0 = time.perf_counter()
    budget = StepBudget(max_minutes)
    loss_value, step = float("nan"), start
    step = start
    while step < steps:
        step += 1
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(lr, step, steps, warmup=0.02)
        z = torch.randn(batch, G.z_dim, generator=g).to(device)
        with torch.no_grad():
            target, masks = spec.render(spec.scenes_from_z(z), cfg.img_resolution)
            weights = part_pixel_weights(masks, part_weight)
        ws = G.mapping(z, update_w_avg=True)
        img = G.synthesize(ws, noise_mode="const")
        err = img - target
        loss = ((err.abs() + err.square()) * weights).mean() / weights.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if reporter is not None:
            loss_value = float(loss.detach())
            reporter.update(step, steps, loss=loss_value)
        if start == 0:
            steps = budget.fit(steps, step)
        out_of_time = budget.out_of_time() or (stop_at is not None and step >= stop_at)
        if step % checkpoint_every == 0 or step == steps or out_of_time:
            with atomic_path(ckpt) as tmp:
                torch.save({"G": G.state_dict(), "opt": opt.state_dict(), "step": step,
                            "elapsed": elapsed + time.perf_counter() - t0}, tmp)
        if out_of_time:
            break
    loss_value = float(loss.detach())
    G.train(False).requires_grad_(False)
    wall = elapsed + time.perf_counter() - t0
    save_generator(G.to("cpu"), out, {"trained_on": f"coral demo world: {world} (supervised route)",
                                      "steps": str(step), "wall_seconds": f"{wall:.0f}"})
    report = {"steps": step, "planned_steps": steps, "batch": batch, "final_loss": loss_value,
              "wall_seconds": round(wall), "device": device, "config": cfg.to_dict(),
              "world": world, "part_weight": part_weight, "resumed_at_step": start,
              "started_from": None if init_from is None else str(init_from)}
    write_text_atomic(out.with_suffix(".report.json"), json.dumps(report, indent=2))
    return report
