"""Does the demo generator draw the world, and do the demo CLIP and judge read it?

``coral world check`` prints every figure in one table, each beside its goal:
fidelity of G's samples to the render of the scene their z names (PSNR, per-object IoU of a
nearest-colour segmentation of the sample against the rendered visible mask), the judge's
accuracy on samples vs on renders of the same scenes, and the CLIP's zero-shot and binding
accuracy on held-out renders.
"""
from __future__ import annotations

from typing import Any

import torch

from ..metrics import psnr
from ..stylegan import Generator
from .judge import Judge
from .render import palette_rgb, shading
from .scene import MAX_OBJECTS, SceneBatch

GOALS = {"fidelity PSNR (dB, median)": 28.0, "object IoU (median)": 0.90,
         "judge gap (points, worst)": 5.0, "CLIP object colour": 0.95,
         "CLIP object shape": 0.95, "CLIP background colour": 0.95,
         "CLIP binding background": 0.90, "CLIP binding two objects": 0.90}


def segment_by_colour(img: torch.Tensor, scenes: SceneBatch) -> torch.Tensor:
    """Label each pixel with the scene region (0 background, 1 + k object k) whose exact
    rendered colour (lighting included) is nearest: [B, H, W]. Absent objects never win, and
    two objects of the same colour share the first one's label (colour cannot tell them apart).
    """
    res = img.shape[-1]
    rgb = palette_rgb(img.device)
    bg_light, obj_light = shading(scenes, res)
    refs = [rgb[scenes.background][:, :, None, None] * bg_light]
    refs += [rgb[scenes.colour[:, k]][:, :, None, None] * obj_light for k in range(MAX_OBJECTS)]
    x = (img + 1) / 2
    dist = torch.stack([(x - r.expand_as(x)).square().sum(1) for r in refs], 1)
    hidden = ~scenes.present.clone()
    hidden[:, 1] |= scenes.colour[:, 1] == scenes.colour[:, 0]  # merged into object 0's label
    dist[:, 1:][hidden[:, :, None, None].expand(-1, -1, res, res)] = float("inf")
    return dist.argmin(1)


def object_ious(img: torch.Tensor, scenes: SceneBatch, truth: torch.Tensor) -> torch.Tensor:
    """Per present object, the IoU of its region in ``img`` with its region in the render
    ``truth`` of the same scenes, both segmented by nearest scene colour. Segmenting the render
    the same way makes a perfect drawing score exactly 1 (anti-aliased edge pixels go to the
    nearer colour in both), so the figure measures drawing errors, not the metric's own."""
    drawn_labels = segment_by_colour(img, scenes)
    true_labels = segment_by_colour(truth, scenes)
    label_of = torch.stack([torch.ones_like(scenes.background),
                            torch.where(scenes.colour[:, 1] == scenes.colour[:, 0], 1, 2)], 1)
    out = []
    for k in range(MAX_OBJECTS):
        lab = label_of[:, k, None, None]
        drawn, true = drawn_labels == lab, true_labels == lab
        inter = (drawn & true).flatten(1).sum(1).float()
        union = (drawn | true).flatten(1).sum(1).float()
        keep = scenes.present[:, k] & (true.flatten(1).sum(1) > 0)
        out.append((inter / union.clamp_min(1))[keep])
    return torch.cat(out)


@torch.no_grad()
def sample_with_truth(G: Generator, n: int, seed: int, world: str = "shapes"
                      ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """G's samples for n seeded z, the scenes (portraits) they name, and their renders and
    masks, in either world."""
    from .spec import get_world

    spec = get_world(world)
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    device = G.w_avg.device
    samples = torch.cat([G.synthesize(G.mapping_ws(c.to(device))).float().cpu()
                         for c in z.split(100)])
    scenes = spec.scenes_from_z(z)
    renders, masks = spec.render(scenes, G.img_resolution)
    return samples, scenes, renders, masks


@torch.no_grad()
def judge_reads(judge: Judge, img: torch.Tensor, scenes: SceneBatch) -> dict[str, float]:
    """The judge's accuracy on background (all images) and on each present object's colour
    and shape (read in its slot)."""
    out = judge(img)
    present = scenes.present
    colour_ok = (out["colour"].argmax(-1) == scenes.colour)[present]
    shape_ok = (out["shape"].argmax(-1) == scenes.shape)[present]
    return {"background": float((out["background"].argmax(1) == scenes.background)
                                .float().mean()),
            "object colour": float(colour_ok.float().mean()),
            "object shape": float(shape_ok.float().mean())}


@torch.no_grad()
def check_world(G: Generator, judge: Judge, clip: Any | None = None, n: int = 500,
                seed: int = 7, clip_renders: int = 1000) -> dict[str, Any]:
    """Every figure of the world check, with its goal and whether it is met (the CLIP's on
    ``clip_renders`` held-out renders, apart from the ``n`` generator samples)."""
    samples, scenes, renders, _ = sample_with_truth(G, n, seed)
    p = psnr(samples, renders)
    ious = object_ious(samples, scenes, renders)
    on_samples, on_renders = judge_reads(judge, samples, scenes), judge_reads(judge, renders,
                                                                              scenes)
    gaps = {k: 100 * (on_renders[k] - on_samples[k]) for k in on_samples}
    figures: dict[str, float] = {
        "fidelity PSNR (dB, median)": float(p.median()),
        "object IoU (median)": float(ious.median()),
        "judge gap (points, worst)": max(gaps.values()),
    }
    if clip is not None:
        from .clip_train import zero_shot_accuracy

        acc = zero_shot_accuracy(clip.model, clip.tokenizer, n=clip_renders)
        figures.update({f"CLIP {k}": v for k, v in acc.items()})
    return {"rows": goal_rows(figures, GOALS), "judge on samples": on_samples, "judge on renders": on_renders,
            "fidelity PSNR p10": float(p.quantile(0.1)), "object IoU p10":
            float(ious.quantile(0.1)), "samples": n}


def goal_rows(figures: dict[str, float], goals: dict[str, float]) -> list[dict[str, Any]]:
    """Each figure beside its goal and whether it is met (a judge gap is better lower)."""
    rows = []
    for name, value in figures.items():
        goal = goals.get(name)
        lower_is_better = name.startswith("judge gap")
        met = None if goal is None else (value <= goal if lower_is_better else value >= goal)
        rows.append({"figure": name, "value": value, "goal": goal, "met": met})
    return rows


def format_check(result: dict[str, Any]) -> str:
    lines = ["| figure | value | goal | met |", "|---|---|---|---|"]
    for r in result["rows"]:
        goal = "" if r["goal"] is None else (f"<= {r['goal']:g}" if r["figure"].startswith(
            "judge gap") else f">= {r['goal']:g}")
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['figure']} | {r['value']:.3f} | {goal} | {met} |")
    return "\n".join(lines)
