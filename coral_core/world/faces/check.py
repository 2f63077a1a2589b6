"""``coral world check --world faces``: does the face generator draw the portrait its z names,
and do the face CLIP and judge read portraits?

Fidelity: PSNR of samples against renders, and per-part IoU of a nearest-colour labelling of
the sample against the same labelling of the render (so a perfect drawing scores exactly 1 and
the figure measures drawing errors, not the labelling's own), for parts of >= 20 px. The judge's
accuracy on samples against renders; the CLIP's zero-shot and binding accuracy on held-out
renders.
"""
from __future__ import annotations

from typing import Any

import torch

from ...metrics import psnr
from ...stylegan import Generator
from .judge import FaceJudge
from .render import layers
from .scene import ATTRIBUTE_NAMES, PARTS, FaceBatch

GOALS = {"fidelity PSNR (dB, median)": 28.0, "part IoU (median)": 0.85,
         "judge gap (points, worst)": 5.0}
CLIP_GOAL, BINDING_GOAL = 0.95, 0.90
MIN_PART_PIXELS = 20


def label_by_colour(img: torch.Tensor, faces: FaceBatch) -> torch.Tensor:
    """Each pixel's part (index into PARTS) by the nearest colour this face paints with,
    lighting included: [B, H, W]. Parts that share a colour share the first one's label."""
    res = img.shape[-1]
    painted = layers(faces, res, 1)
    xs = (torch.arange(res, dtype=torch.float32) + 0.5) / res
    light = 1 + faces.light[:, None, None, None] * (0.5 - xs[None, None, None, :]) * 2
    refs = [("background", _bg(faces))] + [(part, rgb) for part, _, rgb in painted]
    x = (img + 1) / 2
    dist = torch.stack([(x - (rgb[:, :, None, None] * light)).square().sum(1)
                        for _, rgb in refs], 1)
    parts = torch.tensor([PARTS.index(p) for p, _ in refs])
    present = torch.stack([torch.ones(len(faces), dtype=torch.bool)] +
                          [cov.flatten(1).any(1) for _, cov, _ in painted], 1)
    dist[~present[:, :, None, None].expand_as(dist)] = float("inf")
    return parts[dist.argmin(1)]


def _bg(faces: FaceBatch) -> torch.Tensor:
    from .render import _colour

    return _colour("background", faces.background)


def part_ious(img: torch.Tensor, renders: torch.Tensor, masks: torch.Tensor,
              faces: FaceBatch) -> dict[str, list[float]]:
    drawn, true = label_by_colour(img, faces), label_by_colour(renders, faces)
    out: dict[str, list[float]] = {p: [] for p in PARTS}
    for i in range(len(faces)):
        for k, part in enumerate(PARTS):
            if float((masks[i, k] >= 0.5).sum()) < MIN_PART_PIXELS:
                continue
            d, t = drawn[i] == k, true[i] == k
            union = int((d | t).sum())
            if union:
                out[part].append(float((d & t).sum()) / union)
    return out


@torch.no_grad()
def judge_accuracy_on(judge: FaceJudge, img: torch.Tensor, faces: FaceBatch) -> dict[str, float]:
    from .captions import facts_of

    reads = judge.read(img)
    truth = [facts_of(faces, i) for i in range(len(faces))]
    return {name: sum(r.get(name) == t[name] for r, t in zip(reads, truth) if name in t)
            / max(1, sum(name in t for t in truth)) for name in ATTRIBUTE_NAMES}


@torch.no_grad()
def check_faces(G: Generator, judge: FaceJudge, clip: Any | None = None, n: int = 500,
                seed: int = 7) -> dict[str, Any]:
    from ..check import sample_with_truth

    samples, faces, renders, masks = sample_with_truth(G, n, seed, "faces")
    p = psnr(samples, renders)
    ious = part_ious(samples, renders, masks, faces)
    all_ious = torch.tensor([v for vals in ious.values() for v in vals])
    on_samples = judge_accuracy_on(judge, samples, faces)
    on_renders = judge_accuracy_on(judge, renders, faces)
    gaps = {k: 100 * (on_renders[k] - on_samples[k]) for k in on_samples}
    figures: dict[str, float] = {"fidelity PSNR (dB, median)": float(p.median()),
                                 "part IoU (median)": float(all_ious.median())}
    figures.update({f"part IoU {k} (median)": float(torch.tensor(v).median())
                    for k, v in ious.items() if v})
    figures["judge gap (points, worst)"] = max(gaps.values())
    figures.update({f"judge on renders: {k}": v for k, v in on_renders.items()})
    goals = dict(GOALS)
    for k in on_renders:
        goals[f"judge on renders: {k}"] = 0.98
    if clip is not None:
        from .clip_data import zero_shot_accuracy

        acc = zero_shot_accuracy(clip.model, clip.tokenizer)
        for k, v in acc.items():
            figures[f"CLIP {k}"] = v
            goals[f"CLIP {k}"] = BINDING_GOAL if k.startswith("binding") else CLIP_GOAL
    from ..check import goal_rows

    return {"rows": goal_rows(figures, goals), "judge on samples": on_samples, "judge on renders": on_renders,
            "fidelity PSNR p10": float(p.quantile(0.1)), "samples": n}
