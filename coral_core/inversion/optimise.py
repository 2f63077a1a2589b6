"""Real photos into the generator: optimisation projector in W / W+ / W-then-W+, and pivotal
tuning (PTI) on a copy of the generator.

Perceptual term: LPIPS through NVIDIA's ``vgg16.pt`` TorchScript when the user has it, otherwise
distances between features of the loaded CLIP's image tower. Noise stays at the model's constant
buffers (not optimised), so an inverted latent applies like any other latent, with no extra
per-image state to carry around.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import isolated_rng
from ..errors import InputError
from ..metrics import psnr, ssim
from ..progress import Reporter
from ..stylegan import Generator

SPACES = ("w", "w+", "w_then_w+")
MIN_SIDE = 8


def prepare_images(images: torch.Tensor | np.ndarray, resolution: int) -> torch.Tensor:
    """Any [B, H, W, C] (0..1 floats or uint8) or [H, W, C] image -> [B, 3, R, R] in [-1, 1].

    Greyscale is repeated to RGB; alpha is composited over white; non-square images are
    centre-cropped to a square (the generator only draws squares), then resized with antialias.
    """
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.float() / 255
    x = x.float()
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise InputError(f"images must be [B, H, W, C], got shape {list(x.shape)}")
    c = x.shape[-1]
    if c == 1:
        x = x.repeat(1, 1, 1, 3)
    elif c == 2:  # grey + alpha
        x = x[..., :1].repeat(1, 1, 1, 3) * x[..., 1:] + (1 - x[..., 1:])
    elif c == 4:
        x = x[..., :3] * x[..., 3:] + (1 - x[..., 3:])
    elif c != 3:
        raise InputError(f"images must have 1-4 channels, got {c}")
    x = x.permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"image of {w}x{h} px is too small to invert: the shorter side must "
                         f"be at least {MIN_SIDE} px")
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[:, :, top:top + s, left:left + s]
    if s != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=True,
                          align_corners=False)
    return x.clamp(0, 1) * 2 - 1


class Perceptual:
    """LPIPS via NVIDIA vgg16.pt if given, else CLIP image-tower feature distance."""

    def __init__(self, clip: Any = None, vgg16_path: str | None = None) -> None:
        self.vgg = None
        self.clip = clip
        if vgg16_path:
            # NVIDIA's vgg16.pt is a TorchScript program; running it (torch.jit.load) would run
            # whatever a crafted file's TorchScript does (it can write to any path). Until a
            # data-only reader rebuilds LPIPS from its tensors, the file is refused, not run.
            raise InputError(
                f"{vgg16_path}: TorchScript LPIPS files (vgg16.pt) are not loaded: loading one "
                "runs code from the file. Leave --vgg16 out: the perceptual term then uses the "
                "CLIP image tower's features")
        self.kind = "lpips-vgg16" if self.vgg is not None else (
            "clip-features" if clip is not None else "none")

    def features(self, img: torch.Tensor) -> torch.Tensor | None:
        if self.vgg is not None:
            x = (img + 1) * 127.5
            if x.shape[-1] > 256:
                x = F.interpolate(x, size=(256, 256), mode="area")
            return self.vgg.to(x.device)(x, resize_images=False, return_lpips=True)
        if self.clip is not None:
            return self.clip.model.encode_image(self.clip.preprocess(img))
        return None

    def distance(self, a_feat: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        if a_feat is None:
            return torch.zeros((), device=img.device)
        b = self.features(img)
        if self.vgg is not None:
            return (a_feat - b).square().sum(1).mean()
        assert b is not None  # CLIP features, when there is no VGG
        return (1 - F.cosine_similarity(a_feat, b, dim=-1)).mean()


@dataclass
class InvertConfig:
    space: str = "w+"
    steps: int = 300
    lr: float = 0.05
    perceptual_weight: float = 1.0
    w_steps_fraction: float = 0.5   # for w_then_w+: share of steps spent in W
    pti_steps: int = 0
    pti_lr: float = 3e-4
    seed: int = 0


@dataclass
class InvertResult:
    ws: torch.Tensor
    reconstruction: torch.Tensor
    psnr: list[float]
    ssim: list[float]
    seconds: float
    generator: Generator | None = None  # the PTI-tuned copy, if pivotal tuning ran
    perceptual: str = ""
    history: list[float] = field(default_factory=list)


def invert(G: Generator, target: torch.Tensor, cfg: InvertConfig, clip: Any = None,
           vgg16_path: str | None = None, init_ws: torch.Tensor | None = None,
           reporter: Reporter | None = None) -> InvertResult:
    """Project ``target`` ([B, 3, R, R] in [-1, 1]) into the generator's latent space."""
    if cfg.space not in SPACES:
        raise InputError(f"space must be one of {SPACES}, got {cfg.space!r}")
    if target.ndim != 4 or target.shape[1] != 3 or target.shape[-1] != G.img_resolution:
        raise InputError(f"target must be [B, 3, {G.img_resolution}, {G.img_resolution}] "
                         f"(use prepare_images), got {list(target.shape)}")
    with isolated_rng(cfg.seed, G.w_avg.device):
        return _invert(G, target, cfg, clip, vgg16_path, init_ws, reporter)


def _invert(G: Generator, target: torch.Tensor, cfg: InvertConfig, clip: Any,
            vgg16_path: str | None, init_ws: torch.Tensor | None,
            reporter: Reporter | None) -> InvertResult:
    t0 = time.perf_counter()
    device = G.w_avg.device
    target = target.to(device)
    perc = Perceptual(clip, vgg16_path)
    with torch.no_grad():
        target_feat = perc.features(target)
    b = target.shape[0]
    noise = G.make_noise(b, "const")
    if init_ws is not None:
        w_plus = G.check_ws(init_ws.to(device)).clone()
        w = w_plus.mean(1, keepdim=True)
    else:
        w = G.w_avg[None, None].repeat(b, 1, 1).clone()
        w_plus = None
    history: list[float] = []
    total = cfg.steps + cfg.pti_steps

    def loss_of(img: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(img, target) + cfg.perceptual_weight * perc.distance(target_feat, img)

    steps_in_w = {"w": cfg.steps, "w+": 0, "w_then_w+": int(cfg.steps * cfg.w_steps_fraction)}
    w_steps = steps_in_w[cfg.space] if init_ws is None else 0
    if w_steps:
        w.requires_grad_(True)
        _optimise([w], lambda: G.synthesize(w.expand(-1, G.num_ws, -1), noise=noise), loss_of,
                  range(1, w_steps + 1), cfg.lr, total, history, reporter)
    if cfg.space == "w":
        ws = w.detach().expand(-1, G.num_ws, -1).clone()
    else:
        ws = (w_plus if w_plus is not None else w.detach().expand(-1, G.num_ws, -1)).clone()
        ws.requires_grad_(True)
        _optimise([ws], lambda: G.synthesize(ws, noise=noise), loss_of,
                  range(w_steps + 1, cfg.steps + 1), cfg.lr, total, history, reporter)
        ws = ws.detach()
    tuned = None
    if cfg.pti_steps > 0:
        tuned = pivotal_tuning(G, ws, target, cfg, loss_of, noise, reporter, cfg.steps, total,
                               history)
    final_G = tuned if tuned is not None else G
    with torch.no_grad():
        rec = final_G.synthesize(ws, noise=noise)
    return InvertResult(ws, rec, psnr(rec, target).tolist(), ssim(rec, target).tolist(),
                        time.perf_counter() - t0, tuned, perc.kind, history)


def _optimise(params: list[torch.Tensor], render: Callable[[], torch.Tensor],
              loss_of: Callable[[torch.Tensor], torch.Tensor], steps: range, lr: float,
              total: int, history: list[float], reporter: Reporter | None) -> None:
    """Adam on ``params`` for the given step numbers (they index the shared progress bar)."""
    opt = torch.optim.Adam(params, lr=lr)
    for step in steps:
        loss = loss_of(render())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
        if reporter is not None:
            reporter.update(step, total, loss=history[-1])


def pivotal_tuning(G: Generator, ws: torch.Tensor, target: torch.Tensor, cfg: InvertConfig,
                   loss_of: Callable[[torch.Tensor], torch.Tensor], noise: list,
                   reporter: Reporter | None, offset: int, total: int,
                   history: list[float]) -> Generator:
    """Fine-tune a *copy* of G so the pivot ws reproduces the target (the cached G is never
    touched). The copy gets a new fingerprint, so edits must be trained on it."""
    tuned = copy.deepcopy(G).train().requires_grad_(True)
    _optimise(list(tuned.synthesis.parameters()), lambda: tuned.synthesize(ws, noise=noise),
              loss_of, range(offset + 1, offset + cfg.pti_steps + 1), cfg.pti_lr, total,
              history, reporter)
    tuned.train(False).requires_grad_(False)
    tuned.invalidate_fingerprint()
    return tuned
