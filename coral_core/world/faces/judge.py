"""The face world's independent judge: a CNN reading every attribute of a portrait.

Edits are driven by the CLIP, which an edit can fool, so they are scored by this separate
network with another architecture and objective (one softmax per attribute). Hair colour is
trained and read only where there is hair (a bald face's hair colour is not in the picture).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...progress import Reporter
from .captions import BALD
from .clip_data import TRAIN_SUPERSAMPLE
from .render import render
from .scene import ATTRIBUTE_NAMES, VALUES, FaceBatch, random_faces


class FaceJudge(nn.Module):
    """Conv body, a 4x4 feature map flattened (keeps where things are), one head per attribute."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout),
                    nn.SiLU()]

        self.body = nn.Sequential(*block(3, w, 1), *block(w, w * 2, 2), *block(w * 2, w * 2, 1),
                                  *block(w * 2, w * 4, 2), *block(w * 4, w * 4, 2),
                                  *block(w * 4, w * 4, 2))
        self.heads = nn.ModuleDict({name: nn.Linear(w * 4 * 16, len(VALUES[name]))
                                    for name in ATTRIBUTE_NAMES})

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        h = F.adaptive_avg_pool2d(self.body(img), 4).flatten(1)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def read(self, img: torch.Tensor) -> list[dict[str, str]]:
        """Every attribute's value name, per image (hair colour omitted where judged bald)."""
        out = {k: v.argmax(1).tolist() for k, v in self(img).items()}
        reads = []
        for i in range(img.shape[0]):
            r = {name: VALUES[name][out[name][i]] for name in ATTRIBUTE_NAMES}
            if r["hair_style"] == "bald":
                del r["hair_colour"]
            reads.append(r)
        return reads


def judge_loss(out: dict[str, torch.Tensor], faces: FaceBatch) -> torch.Tensor:
    loss = torch.zeros((), device=faces.background.device)
    for name in ATTRIBUTE_NAMES:
        target = getattr(faces, name)
        keep = faces.hair_style != BALD if name == "hair_colour" else torch.ones_like(
            target, dtype=torch.bool)
        loss = loss + F.cross_entropy(out[name][keep], target[keep])
    return loss


def train_face_judge(out: Path, steps: int = 1200, batch: int = 64, seed: int = 1,
                     reporter: Reporter | None = None, device: str = "cpu") -> dict[str, Any]:
    """Train from scratch on renders (with the CLIP's augmentations) and write ``out``."""
    from ..judge import fit_judge, save_judge

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = FaceJudge().to(device)

    def draw(step: int) -> tuple[torch.Tensor, FaceBatch]:
        faces = random_faces(batch, 60_000_000 + seed * 100_000 + step, device)
        return render(faces, supersample=TRAIN_SUPERSAMPLE)[0], faces

    fit_judge(model, draw, judge_loss, steps, g, reporter)
    acc = judge_accuracy(model)
    save_judge(model, out, "coral face judge")
    return acc


def load_face_judge(path: Path) -> FaceJudge:
    from ...formats.weights import load_weights_file

    model = FaceJudge()
    model.load_state_dict(load_weights_file(path, "face judge"))
    return model.train(False).requires_grad_(False)


@torch.no_grad()
def judge_accuracy(model: FaceJudge, n: int = 1000, seed: int = 424242) -> dict[str, float]:
    """Per-attribute accuracy on held-out renders, and the share of faces read exactly."""
    faces = random_faces(n, seed, next(model.parameters()).device)
    reads = model.read(render(faces)[0])
    truth = [_visible(faces, i) for i in range(n)]
    out = {name: sum(r.get(name) == t.get(name) for r, t in zip(reads, truth)
                     if name in t) / max(1, sum(name in t for t in truth))
           for name in ATTRIBUTE_NAMES}
    out["all exact"] = sum(r == t for r, t in zip(reads, truth)) / n
    return out


def _visible(faces: FaceBatch, i: int) -> dict[str, str]:
    from .captions import facts_of

    return facts_of(faces, i)
