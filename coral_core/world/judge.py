"""An attribute classifier trained on renders: the independent judge of edits.

The CLIP that drives an edit can be fooled by it (a first trial's CLIP called teardrop blobs
"triangles"), so success is scored by a separate network with a different architecture and
objective: a small CNN predicting the background colour and which (colour, shape) objects are
present (multi-label).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..atomic import atomic_path
from ..progress import Reporter
from .clip_train import augment
from .render import render
from .scene import BG_NAMES, MAX_OBJECTS, OBJ_NAMES, SHAPES, SceneBatch, random_scenes

class Judge(nn.Module):
    """A CNN reading the background colour and, for each of the world's two object slots,
    whether an object is there, its colour and its shape.

    Reading per slot (the 4x4 feature map flattened, not mean-pooled) is what makes shapes
    readable: v1's judge pooled features over the image and scored (colour, shape) pairs as a
    multi-label set; it read colours at ~100 % but shapes at ~50 % (chance is 33 %).
    """

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.GroupNorm(8, width * 2),
            nn.SiLU(),
            nn.Conv2d(width * 2, width * 2, 3, stride=2, padding=1), nn.GroupNorm(8, width * 2),
            nn.SiLU(), nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1),
            nn.GroupNorm(8, width * 4), nn.SiLU(),
            nn.Conv2d(width * 4, width * 4, 3, stride=2, padding=1), nn.SiLU())
        feat = width * 4 * 16
        self.bg = nn.Linear(feat, len(BG_NAMES))
        self.present = nn.Linear(feat, MAX_OBJECTS)
        self.colour = nn.Linear(feat, MAX_OBJECTS * len(OBJ_NAMES))
        self.shape = nn.Linear(feat, MAX_OBJECTS * len(SHAPES))

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        h = F.adaptive_avg_pool2d(self.body(img), 4).flatten(1)
        b = img.shape[0]
        return {"background": self.bg(h), "present": self.present(h),
                "colour": self.colour(h).view(b, MAX_OBJECTS, len(OBJ_NAMES)),
                "shape": self.shape(h).view(b, MAX_OBJECTS, len(SHAPES))}

    @torch.no_grad()
    def read(self, img: torch.Tensor) -> dict[str, Any]:
        """Background index and the set of (colour, shape) objects judged present, per image."""
        out = self(img)
        present = torch.sigmoid(out["present"]) > 0.5
        present[:, 0] = True  # the world always has a first object
        colour, shape = out["colour"].argmax(-1), out["shape"].argmax(-1)
        objects = [{(OBJ_NAMES[int(colour[i, k])], SHAPES[int(shape[i, k])])
                    for k in range(MAX_OBJECTS) if bool(present[i, k])}
                   for i in range(img.shape[0])]
        return {"background": out["background"].argmax(1).tolist(), "objects": objects}


    @torch.no_grad()
    def read_slots(self, img: torch.Tensor) -> list[dict[str, Any]]:
        """Per image: the background index and, per object slot, None (judged empty) or its
        (colour, shape): what an edit did to *each* object, not only which pairs exist."""
        out = self(img)
        present = torch.sigmoid(out["present"]) > 0.5
        present[:, 0] = True
        colour, shape = out["colour"].argmax(-1), out["shape"].argmax(-1)
        return [{"background": int(out["background"][i].argmax()),
                 "slots": [(OBJ_NAMES[int(colour[i, k])], SHAPES[int(shape[i, k])])
                           if bool(present[i, k]) else None for k in range(MAX_OBJECTS)]}
                for i in range(img.shape[0])]


def judge_loss(out: dict[str, torch.Tensor], scenes: SceneBatch) -> torch.Tensor:
    present = scenes.present
    loss = F.cross_entropy(out["background"], scenes.background)
    loss = loss + F.binary_cross_entropy_with_logits(out["present"], present.float())
    for k in range(MAX_OBJECTS):
        here = present[:, k]
        if here.any():
            loss = loss + F.cross_entropy(out["colour"][here, k], scenes.colour[here, k]) \
                + F.cross_entropy(out["shape"][here, k], scenes.shape[here, k])
    return loss


def fit_judge(model: nn.Module, draw: Callable[[int], tuple[torch.Tensor, Any]],
              loss_fn: Callable[[dict[str, torch.Tensor], Any], torch.Tensor], steps: int,
              g: torch.Generator, reporter: Reporter | None = None) -> nn.Module:
    """The judges' one training loop (both worlds): AdamW with a one-cycle schedule on
    ``draw(step)`` -> (renders, their truth), the CLIP's augmentations on the renders."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.1)
    for step in range(1, steps + 1):
        img, truth = draw(step)
        loss = loss_fn(model(augment(img, g)), truth)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if reporter is not None:
            reporter.update(step, steps, loss=float(loss.detach()))
    return model.train(False)


def save_judge(model: nn.Module, out: Path, kind: str) -> None:
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in model.to("cpu").state_dict().items()},
                  str(tmp), metadata={"kind": kind})


def train_judge(out: Path, steps: int = 800, batch: int = 64, seed: int = 1,
                reporter: Reporter | None = None, device: str = "cpu") -> dict[str, float]:
    """Train from scratch on renders (with the CLIP's augmentations) and write ``out``."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Judge().to(device)

    def draw(step: int) -> tuple[torch.Tensor, SceneBatch]:
        scenes = random_scenes(batch, 50_000_000 + seed * 100_000 + step, device)
        return render(scenes)[0], scenes

    fit_judge(model, draw, judge_loss, steps, g, reporter)
    acc = judge_accuracy(model)
    save_judge(model, out, "coral demo judge")
    return acc


def load_judge(path: Path) -> Judge:
    model = Judge()
    model.load_state_dict(load_file(str(path)))
    return model.train(False).requires_grad_(False)


@torch.no_grad()
def judge_accuracy(model: Judge, n: int = 1000, seed: int = 424242) -> dict[str, float]:
    """Accuracy on held-out renders: background, and every object read exactly (colour and
    shape of each present object, no extra objects)."""
    scenes = random_scenes(n, seed, next(model.parameters()).device)
    img, _ = render(scenes)
    read = model.read(img)
    truth = [{(OBJ_NAMES[int(scenes.colour[i, k])], SHAPES[int(scenes.shape[i, k])])
              for k in range(MAX_OBJECTS) if bool(scenes.present[i, k])} for i in range(n)]
    exact = sum(int(r == t) for r, t in zip(read["objects"], truth)) / n
    bg = float((torch.tensor(read["background"]) == scenes.background.cpu()).float().mean())
    return {"background": bg, "objects exact": exact}
