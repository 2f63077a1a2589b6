"""An attribute classifier trained on renders: the independent judge of edits.

The CLIP that drives an edit can be fooled by it (a first trial's CLIP called teardrop blobs
"triangles"), so success is scored by a separate network with a different architecture and
objective: a small CNN predicting the background colour and which (colour, shape) objects are
present (multi-label).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..atomic import atomic_path
from ..progress import Reporter
from .clip_train import augment
from .render import render
from .scene import BG_NAMES, MAX_OBJECTS, OBJ_NAMES, SHAPES, SceneBatch, random_scenes

PAIRS = [(c, s) for c in OBJ_NAMES for s in SHAPES]


class Judge(nn.Module):
    def __init__(self, width: int = 48) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.GroupNorm(8, width * 2),
            nn.SiLU(),
            nn.Conv2d(width * 2, width * 2, 3, stride=2, padding=1), nn.GroupNorm(8, width * 2),
            nn.SiLU(), nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1), nn.SiLU())
        self.bg = nn.Linear(width * 4, len(BG_NAMES))
        self.pairs = nn.Linear(width * 4, len(PAIRS))

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(img).mean((2, 3))
        return self.bg(h), self.pairs(h)

    @torch.no_grad()
    def read(self, img: torch.Tensor) -> dict[str, Any]:
        """Background index and the set of (colour, shape) pairs judged present, per image."""
        bg, pairs = self(img)
        present = torch.sigmoid(pairs) > 0.5
        return {"background": bg.argmax(1).tolist(),
                "objects": [{PAIRS[j] for j in row.nonzero().flatten().tolist()}
                            for row in present]}


def pair_targets(scenes: SceneBatch) -> torch.Tensor:
    t = torch.zeros(len(scenes), len(PAIRS))
    for k in range(MAX_OBJECTS):
        idx = scenes.colour[:, k] * len(SHAPES) + scenes.shape[:, k]
        t[torch.arange(len(scenes))[scenes.present[:, k]], idx[scenes.present[:, k]]] = 1
    return t


def train_judge(out: Path, steps: int = 1200, batch: int = 128, seed: int = 1,
                reporter: Reporter | None = None) -> dict[str, float]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Judge()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.1)
    for step in range(1, steps + 1):
        scenes = random_scenes(batch, 50_000_000 + seed * 100_000 + step)
        img, _ = render(scenes)
        bg, pairs = model(augment(img, g))
        loss = F.cross_entropy(bg, scenes.background) + \
            F.binary_cross_entropy_with_logits(pairs, pair_targets(scenes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if reporter is not None:
            reporter.update(step, steps, loss=float(loss.detach()))
    model.train(False)
    acc = judge_accuracy(model)
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"kind": "coral demo judge"})
    return acc


def load_judge(path: Path) -> Judge:
    model = Judge()
    model.load_state_dict(load_file(str(path)))
    return model.train(False).requires_grad_(False)


@torch.no_grad()
def judge_accuracy(model: Judge, n: int = 1000, seed: int = 424242) -> dict[str, float]:
    scenes = random_scenes(n, seed)
    img, _ = render(scenes)
    bg, pairs = model(img)
    exact = ((torch.sigmoid(pairs) > 0.5).float() == pair_targets(scenes)).all(1)
    return {"background": float((bg.argmax(1) == scenes.background).float().mean()),
            "objects exact": float(exact.float().mean())}
