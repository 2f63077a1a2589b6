"""``coral eval``: a scored edit benchmark on the demo world, where the truth is known.

Scenes are generator samples whose scene parameters z names (the demo generator is trained to
draw ``scenes_from_z``), so every scene has true per-object masks. For each scene and prompt
(recolour one object, change the background), four methods run in the same engine with the same
CLIP, step budget and seeds:
  styleclip  latent optimisation in W+, no mask (StyleCLIP)
  feat       one attention head at one hand-picked layer (FEAT-style)
  coral_ss   CORAL segment selection, per image
  coral_can  CORAL attention network, trained once per prompt, applied to every scene
and each edit is scored for success (independent judge), preservation (PSNR outside the true
region, other objects unchanged), localisation (IoU of the effective mask with the true region)
and cost (seconds per edit and per applied image, peak memory, selected layers).
"""
from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import write_text_atomic
from ..clip_model import CoralClip
from ..editing.apply import apply_edits
from ..editing.edit import Edit
from ..editing.losses import LossWeights
from ..editing.trainer import TrainConfig, train_edit
from ..editing.visualize import effective_mask
from ..images import image_to_uint8, save_png
from ..metrics import psnr
from ..stylegan import Generator
from .judge import Judge
from .render import render
from .scene import BG_NAMES, OBJ_NAMES, SHAPES, scenes_from_z

METHODS = ("styleclip", "feat", "coral_ss", "coral_can")
# Not run by default: CORAL-SS given the world's true region as its only segment (the selector
# may scale it but not add anything else): the bound that a perfect region choice would reach.
BOUNDS = ("true_region",)


@dataclass
class EvalCase:
    seed: int
    kind: str            # "background" | "object colour"
    prompt: str
    target: Any          # bg index, or (colour, shape)
    region: torch.Tensor  # [H, W] true region of the edit
    keep: set            # (colour, shape) pairs that must survive
    neutral: str = ""    # what the region shows now (the directional loss's neutral prompt)


def default_prompt_set() -> list[dict[str, str]]:
    return [{"kind": "background", "template": "{article} {bg} background"},
            {"kind": "object colour", "template": "{article} {colour} {shape}"}]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def build_cases(G: Generator, seeds: list[int], prompt_set: list[dict[str, str]]
                ) -> tuple[list[EvalCase], torch.Tensor]:
    z = G.z_from_seeds(seeds)
    scenes = scenes_from_z(z)
    _, masks = render(scenes, G.img_resolution)
    cases = []
    for i, seed in enumerate(seeds):
        rng = np.random.RandomState(seed)
        objs = [(OBJ_NAMES[int(scenes.colour[i, k])], SHAPES[int(scenes.shape[i, k])], k)
                for k in range(scenes.present.shape[1]) if bool(scenes.present[i, k])]
        for spec in prompt_set:
            taken = {int(scenes.colour[i, k]) for k in range(scenes.present.shape[1])
                     if bool(scenes.present[i, k])}
            if spec["kind"] == "background":
                cur = int(scenes.background[i])
                # never an object's colour: the edit would hide that object
                new = int(rng.choice([b for b in range(len(BG_NAMES))
                                      if b != cur and b not in taken]))
                text = spec["template"].format(article=_article(BG_NAMES[new]),
                                               bg=BG_NAMES[new])
                cases.append(EvalCase(seed, "background", text, new, masks[i, 0],
                                      {(c, s) for c, s, _ in objs},
                                      spec["template"].format(article=_article(BG_NAMES[cur]),
                                                              bg=BG_NAMES[cur])))
            else:
                colour, shape, k = objs[int(rng.randint(len(objs)))]
                bg_name = BG_NAMES[int(scenes.background[i])]
                new_colour = str(rng.choice([c for c in OBJ_NAMES
                                             if c not in (colour, bg_name)]))
                text = spec["template"].format(article=_article(new_colour), colour=new_colour,
                                               shape=shape)
                keep = {(c, s) for c, s, kk in objs if kk != k}
                cases.append(EvalCase(seed, "object colour", text, (new_colour, shape),
                                      masks[i, 1 + k], keep,
                                      spec["template"].format(article=_article(colour),
                                                              colour=colour, shape=shape)))
    ws = G.mapping_ws(z)  # no truncation: the scene z names is the one drawn
    return cases, ws


def dilate(region: torch.Tensor, pixels: int) -> torch.Tensor:
    """A [.., H, W] soft region grown by ``pixels`` (max-pool), for boundary-tolerant scores."""
    x = region.reshape(-1, 1, *region.shape[-2:]).float()
    grown = torch.nn.functional.max_pool2d(x, 2 * pixels + 1, stride=1, padding=pixels)
    return grown.reshape(region.shape)


def boundary_pixels(resolution: int) -> int:
    """One pixel at 32 px, the same share of the side at other sizes (2 px at 64 px)."""
    return max(1, round(resolution / 32))


def outside_scores(edited: torch.Tensor, original: torch.Tensor, region: torch.Tensor
                   ) -> dict[str, float]:
    """PSNR (dB) of what changed outside the TRUE region of the edit (the world's masks, never
    the learned mask), and outside the region grown by one 32-px pixel, so anti-aliased edges
    are reported apart from real leaks."""
    res = region.shape[-1]
    inside = (region >= 0.5).float()
    grown = dilate(inside, boundary_pixels(res))
    e, o = edited.detach().cpu().float(), original.detach().cpu().float()
    return {"psnr_outside": float(psnr(e, o, (1 - inside)[None])[0]),
            "psnr_outside_dilated": float(psnr(e, o, (1 - grown)[None])[0])}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _score(case: EvalCase, judge: Judge, G: Generator, original: torch.Tensor,
           edited: torch.Tensor, masks: list, threshold: float) -> dict[str, Any]:
    read_after = judge.read(edited.cpu())
    read_before = judge.read(original.cpu())
    # Success: the judge (an independent classifier, not the CLIP that drove the edit) reads
    # the new background, or the object with its new colour and its own shape; preservation:
    # the colours of the other objects that were readable before are still there.
    if case.kind == "background":
        success = read_after["background"][0] == case.target
    else:
        success = tuple(case.target) in read_after["objects"][0]
    before_colours = {c for c, _ in read_before["objects"][0]}
    kept = {c for c, _ in case.keep} & before_colours
    preserved = kept <= {c for c, _ in read_after["objects"][0]}
    region_scores = outside_scores(edited, original, case.region)
    if any(m is not None for m in masks) and not all(
            m is None or bool((m == 1).all()) for m in masks):
        eff = effective_mask(masks, G.img_resolution)[0].cpu() >= threshold
    else:  # no mask (StyleCLIP): the changed-pixel map
        eff = ((edited - original).abs().amax(1)[0].cpu() > 0.1)
    gt = case.region >= 0.5
    iou = float((eff & gt).sum() / max(1, int((eff | gt).sum())))
    return {"success": bool(success), "others_preserved": bool(preserved), **region_scores,
            "iou": iou}


def run_eval(G: Generator, clip: CoralClip, judge: Judge, seeds: list[int],
             steps: int | None = None,
             methods: tuple[str, ...] = METHODS, prompt_set: list[dict[str, str]] | None = None,
             out: Path | None = None, feat_layer: int | None = None, can_steps: int | None = None,
             threshold: float = 0.5, log: Any = print,
             weights: LossWeights | None = None, lr: float | None = None,
             train_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every method gets the library's default loss weights and learning rates (or the same
    given ones) and the same step budget; CAN trains ``can_steps`` per prompt (default 3 x
    steps) on fresh samples and is applied to the evaluation scenes, which it never saw."""
    weights = weights or LossWeights()
    steps = steps or TrainConfig(prompt="-").steps
    cases, ws_all = build_cases(G, seeds, prompt_set or default_prompt_set())
    feat_layer = feat_layer or (len(G.conv_layers) + 1) // 2
    rows: list[dict[str, Any]] = []
    figure: dict[str, list[np.ndarray]] = {}
    can_edits: dict[str, Edit] = {}
    seed_index = {s: i for i, s in enumerate(seeds)}
    for method in methods:
        for case in cases:
            ws = ws_all[seed_index[case.seed]:seed_index[case.seed] + 1]
            t0 = time.perf_counter()
            if method == "coral_can":
                if case.prompt not in can_edits:
                    cfg = TrainConfig(prompt=case.prompt, variant="can", direction="global",
                                      mode="per_prompt", steps=can_steps or steps * 3,
                                      batch=4, seed=0, truncation=1.0, lr=lr,
                                      weights=weights, **(train_overrides or {}))
                    can_edits[case.prompt] = train_edit(G, clip, cfg).edit
                edit = can_edits[case.prompt]
            else:
                cfg = TrainConfig(prompt=case.prompt, neutral=case.neutral,
                                  steps=steps, batch=1, seed=case.seed,
                                  variant="can" if method == "feat" else "ss",
                                  only_layers=[feat_layer] if method == "feat" else None,
                                  no_masks=method == "styleclip", lr=lr, weights=weights,
                                  **(train_overrides or {}))
                region = case.region[None, None].float() if method == "true_region" else None
                edit = train_edit(G, clip, cfg, latents=ws, segments=region).edit
            t_edit = time.perf_counter() - t0
            t1 = time.perf_counter()
            res = apply_edits(G, ws, [edit])
            t_apply = time.perf_counter() - t1
            assert res.original is not None
            scores = _score(case, judge, G, res.original, res.edited, res.masks[0], threshold)
            selected = [i + 1 for i, m in enumerate(res.masks[0])
                        if m is not None and float(m.max()) >= threshold]
            rows.append({"method": method, "seed": case.seed, "kind": case.kind,
                         "prompt": case.prompt, **scores, "seconds_per_edit": t_edit,
                         "seconds_per_apply": t_apply, "peak_mib": _peak_mib(),
                         "selected_layers": selected})
            if len(figure.get(method, [])) < 4:
                eff = effective_mask(res.masks[0], G.img_resolution) \
                    if any(m is not None for m in res.masks[0]) else torch.zeros(1, G.img_resolution, G.img_resolution)
                m_img = (eff[0].cpu().numpy() * 255).astype(np.uint8)
                tile = np.concatenate([image_to_uint8(res.original)[0],
                                       image_to_uint8(res.edited)[0],
                                       np.repeat(m_img[..., None], 3, -1)], 1)
                figure.setdefault(method, []).append(tile)
            log(f"{method:>10} seed {case.seed:>3} {case.prompt!r}: success={scores['success']} "
                f"iou={scores['iou']:.2f} psnr_out={scores['psnr_outside']:.1f}")
    summary = summarise(rows)
    result = {"cases": len(cases), "steps": steps, "can_steps": can_steps or steps * 3,
              "lr": lr, "loss_weights": weights.to_dict(), "methods": list(methods),
              "feat_layer": feat_layer, "summary": summary, "rows": rows}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "eval.json", json.dumps(result, indent=2))
        write_text_atomic(out / "eval_table.md", format_table(summary) + "\n")
        if figure:
            blocks = [np.concatenate(tiles, 0) for tiles in figure.values()]
            h = max(b.shape[0] for b in blocks)
            blocks = [np.pad(b, ((0, h - b.shape[0]), (0, 4), (0, 0))) for b in blocks]
            save_png(np.kron(np.concatenate(blocks, 1), np.ones((3, 3, 1), dtype=np.uint8)),
                     out / "eval_grid.png")
    return result


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method: success rate, and preservation as MEDIANS over cases (a method that changes
    nothing scores 100 dB on a case; averaging dB values would reward it)."""
    out: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        sub = [r for r in rows if r["method"] == method]
        out[method] = {
            "cases": float(len(sub)),
            "success": float(np.mean([r["success"] for r in sub])),
            "others_preserved": float(np.mean([r["others_preserved"] for r in sub])),
            "psnr_outside": float(np.median([r["psnr_outside"] for r in sub])),
            "psnr_outside_dilated": float(np.median([r["psnr_outside_dilated"] for r in sub])),
            "share_30db": float(np.mean([r["psnr_outside"] >= 30 for r in sub])),
            "iou": float(np.median([r["iou"] for r in sub])),
            "s_per_edit": float(np.mean([r["seconds_per_edit"] for r in sub])),
            "s_per_apply": float(np.mean([r["seconds_per_apply"] for r in sub])),
            "peak_mib": float(max(r["peak_mib"] for r in sub)),
            "mean_layers": float(np.mean([len(r["selected_layers"]) for r in sub])),
        }
    return out


def format_table(summary: dict[str, dict[str, float]]) -> str:
    head = ("| method | cases | success | others kept | PSNR outside, median (dB) | "
            "outside +1 px (dB) | cases >= 30 dB | IoU, median | s/edit | s/apply | "
            "peak MiB | layers |")
    lines = [head, "|" + "---|" * 12]
    for m, s in summary.items():
        lines.append(f"| {m} | {s['cases']:.0f} | {s['success']:.2f} | "
                     f"{s['others_preserved']:.2f} | {s['psnr_outside']:.1f} | "
                     f"{s['psnr_outside_dilated']:.1f} | {s['share_30db']:.2f} | "
                     f"{s['iou']:.2f} | {s['s_per_edit']:.2f} | {s['s_per_apply']:.3f} | "
                     f"{s['peak_mib']:.0f} | {s['mean_layers']:.1f} |")
    return "\n".join(lines)
