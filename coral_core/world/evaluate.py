"""``coral eval``: a scored edit benchmark on the demo world, where the truth is known.

Scenes are generator samples whose scene parameters z names (the demo generator is trained to
draw ``scenes_from_z``), so every scene has true per-object masks. Every method runs on the
user's path: it gets the prompt and nothing else (no neutral prompt built from the scene, no
region); the truth only scores. Edit kinds: background recolour, object recolour, shape change,
two attributes at once, and prompts that do not fit (an absent object, a colour already there,
unknown words: the image must stay as it was, with a warning). Methods, in the same engine with
the same CLIP, step budget and seeds:
  styleclip  latent optimisation in W+, no mask (StyleCLIP)
  feat       one attention head at one hand-picked layer (FEAT-style)
  coral_ss   CORAL segment selection, per image
  coral_can  CORAL attention network, trained once per prompt, applied to every scene
and each edit is scored from pixels (``scoring.py``): success by the independent judge (the
*named* object, in its slot, with its outline kept unless the prompt reshapes it), other
objects read unchanged and their outlines kept, PSNR outside the true region without dilation
(the dilated figure beside it), PSNR inside against the ideal render, the target colour's share
in the interior, the ring round other parts and the border band, and cost.
"""
from __future__ import annotations

import json
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
from ..editing.presets import DEFAULT_PRESET, preset_config, preset_defaults
from ..editing.trainer import train_edit
from ..editing.visualize import effective_mask
from ..images import image_to_uint8, save_png
from ..metrics import psnr
from ..stylegan import Generator
from .judge import Judge
from .render import palette_rgb, render
from .scene import BG_NAMES, OBJ_NAMES, SHAPES, SceneBatch, scenes_from_z
from .scoring import grow, iou, outline, prior_record, psnr_in, shrink, target_shares

METHODS = ("styleclip", "feat", "coral_ss", "coral_can")
# Not run by default: CORAL-SS given the world's true region as its only segment (the selector
# may scale it but not add anything else): the bound that a perfect region choice would reach.
BOUNDS = ("true_region",)


KINDS = ("background", "object colour", "shape", "two attributes", "absent", "already",
         "unknown")
COLOUR_KINDS = ("background", "object colour")
#: Prompts that do not fit the scene: the edit must leave the image as it was and say why.
UNFIT_KINDS = ("absent", "already", "unknown")
UNKNOWN_PROMPTS = ("a dog", "qwzx blorp")


@dataclass
class EvalCase:
    """One scene and one prompt, with the truth that scores the edit (never an input to it)."""

    seed: int
    kind: str                  # one of KINDS
    prompt: str
    index: int                 # the scene's row in the batch
    after: SceneBatch | None   # the ideal scene after the edit; None: it should not change
    region: torch.Tensor       # [H, W] union of the changed parts before and after
    slot: int | None = None    # the object the prompt names
    target: int | None = None  # palette index the region should take (colour edits)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(*words: str) -> str:
    text = " ".join(words)
    return f"{_article(text)} {text}"


def build_cases(G: Generator, seeds: list[int], kinds: tuple[str, ...] = KINDS
                ) -> tuple[list[EvalCase], torch.Tensor, SceneBatch]:
    """Cases per seed and kind. Object prompts name an object whose shape is unique in its
    scene (so "a red circle" can only mean one object); a scene without such an object, or
    where a kind cannot be posed, gives no case of that kind."""
    z = G.z_from_seeds(seeds)
    scenes = scenes_from_z(z)
    res = G.img_resolution
    _, masks = render(scenes, res)
    cases = []
    for i, seed in enumerate(seeds):
        present = [k for k in range(scenes.present.shape[1]) if bool(scenes.present[i, k])]
        shape_of = {k: int(scenes.shape[i, k]) for k in present}
        colour_of = {k: int(scenes.colour[i, k]) for k in present}
        unique = [k for k in present if list(shape_of.values()).count(shape_of[k]) == 1]
        bg = int(scenes.background[i])
        for kind in kinds:
            # seeded by the kind's place among all kinds, not in the list asked for, so a
            # seed and kind are the same case whatever other kinds a run asks for
            rng = np.random.RandomState(seed * 97 + KINDS.index(kind))
            one = scenes.select(slice(i, i + 1)).clone()
            case: EvalCase | None = None
            if kind == "background":
                new = int(rng.choice([b for b in range(len(BG_NAMES))
                                      if b != bg and b not in colour_of.values()]))
                one.background[0] = new
                case = EvalCase(seed, kind, _phrase(BG_NAMES[new], "background"), i, one,
                                masks[i, 0], None, new)
            elif kind in ("object colour", "two attributes") and unique:
                k = int(rng.choice(unique))
                new = int(rng.choice([c for c in range(len(OBJ_NAMES))
                                      if c not in (colour_of[k], bg)]))
                one.colour[0, k] = new
                prompt = _phrase(OBJ_NAMES[new], SHAPES[shape_of[k]])
                region = masks[i, 1 + k]
                if kind == "two attributes":
                    new_bg = int(rng.choice([b for b in range(len(BG_NAMES)) if b != bg and
                                             b != new and b not in colour_of.values()]))
                    one.background[0] = new_bg
                    prompt += f" on {_phrase(BG_NAMES[new_bg], 'background')}"
                    region = torch.maximum(region, masks[i, 0])
                    new = None
                case = EvalCase(seed, kind, prompt, i, one, region, k, new)
            elif kind == "shape" and unique:
                k = int(rng.choice(unique))
                options = [s for s in range(len(SHAPES)) if s != shape_of[k] and not any(
                    shape_of[j] == s for j in present if j != k)]
                if options:
                    new_shape = int(rng.choice(options))
                    one.shape[0, k] = new_shape
                    _, after_masks = render(one, res)
                    region = torch.maximum(masks[i, 1 + k], after_masks[0, 1 + k])
                    case = EvalCase(seed, kind,
                                    _phrase(OBJ_NAMES[colour_of[k]], SHAPES[new_shape]), i,
                                    one, region, k)
            elif kind == "absent":
                missing = [s for s in range(len(SHAPES)) if s not in shape_of.values()]
                if missing:
                    colour = int(rng.choice([c for c in range(len(OBJ_NAMES))
                                             if c != bg and c not in colour_of.values()]))
                    case = EvalCase(seed, kind, _phrase(OBJ_NAMES[colour],
                                                        SHAPES[int(rng.choice(missing))]),
                                    i, None, torch.zeros_like(masks[i, 0]))
            elif kind == "already":
                case = EvalCase(seed, kind, _phrase(BG_NAMES[bg], "background"), i, None,
                                torch.zeros_like(masks[i, 0]))
            elif kind == "unknown":
                case = EvalCase(seed, kind, UNKNOWN_PROMPTS[seed % len(UNKNOWN_PROMPTS)], i,
                                None, torch.zeros_like(masks[i, 0]))
            if case is not None:
                cases.append(case)
    ws = G.mapping_ws(z)  # no truncation: the scene z names is the one drawn
    return cases, ws, scenes


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
    from ..devices import peak_rss_mib

    return peak_rss_mib()


def score_case(case: EvalCase, judge: Judge, scenes: SceneBatch, original: torch.Tensor,
               edited: torch.Tensor, warnings: list[str]) -> dict[str, Any]:
    """Every score of one edit (images [1, 3, H, W]); see the module docstring."""
    res = original.shape[-1]
    o, e = original[0].detach().cpu().float(), edited[0].detach().cpu().float()
    psnr_full = psnr_in(e, o, torch.ones(res, res, dtype=torch.bool))
    out: dict[str, Any] = {"psnr_image": psnr_full, "warned": bool(warnings)}
    if case.after is None:  # a prompt that does not fit: unchanged (>= 35 dB) and said so
        unchanged = psnr_full >= UNCHANGED_DB
        out.update(success=unchanged and bool(warnings), unchanged=unchanged,
                   silent_damage=not unchanged and not warnings)
        return out
    before = scenes.select(slice(case.index, case.index + 1))
    _, m_before = render(before, res)
    ideal, m_after = render(case.after, res)
    read_b, read_a = judge.read_slots(original.cpu())[0], judge.read_slots(edited.cpu())[0]
    slots = [k for k in range(before.present.shape[1]) if bool(before.present[0, k])]
    outlines = _outline_ious(o, e, m_before[0], m_after[0], slots)
    k = case.slot
    named = None if k is None else read_a["slots"][k]
    want_obj = None if k is None else (OBJ_NAMES[int(case.after.colour[0, k])],
                                       SHAPES[int(case.after.shape[0, k])])
    bg_ok = read_a["background"] == int(case.after.background[0])
    if case.kind == "background":
        success = bg_ok
    elif case.kind == "shape":
        assert k is not None
        new_outline = _outline(e, m_before[0], m_after[0], k)
        success = named == want_obj and iou(new_outline, m_after[0, 1 + k] >= 0.5) > iou(
            new_outline, m_before[0, 1 + k] >= 0.5)
    else:
        assert k is not None
        success = named == want_obj and outlines[k] >= OUTLINE_IOU and (
            case.kind != "two attributes" or bg_ok)
    others = [j for j in slots if j != k]
    kept = all(read_a["slots"][j] == read_b["slots"][j] for j in others) and (
        case.kind in ("background", "two attributes") or
        read_a["background"] == read_b["background"])
    # The region is the part's support (every pixel it covers at all, anti-aliased edge pixels
    # included, no dilation): an ideal edit changes nothing outside it.
    region = case.region > 0
    grown = dilate(region.float(), boundary_pixels(res)) >= 0.5
    out.update(success=bool(success), others_preserved=bool(kept),
               outlines_kept=all(outlines[j] >= OUTLINE_IOU for j in others),
               named_outline_iou=outlines.get(k, float("nan")) if k is not None else
               float("nan"),
               psnr_outside=psnr_in(e, o, ~region), psnr_outside_dilated=psnr_in(e, o, ~grown),
               psnr_inside_ideal=psnr_in(e, ideal[0], case.region >= 0.5))
    if case.target is not None:
        out.update(target_shares(e, palette_rgb("cpu"), case.target, case.region,
                                 1 - case.region, border=case.kind == "background"))
    return out


UNCHANGED_DB = 35.0
OUTLINE_IOU = 0.8


def _outline(img: torch.Tensor, m_before: torch.Tensor, m_after: torch.Tensor, k: int
             ) -> torch.Tensor:
    """Object slot k's outline read from ``img``'s pixels near where it is before or after
    (other objects' true pixels excluded; the row's background colour from background pixels
    at least 2 px from any object)."""
    n = m_before.shape[0]
    others = torch.zeros_like(m_before[0], dtype=torch.bool)
    for j in range(1, n):
        if j != 1 + k:
            others |= (m_before[j] >= 0.5) | (m_after[j] >= 0.5)
    area = grow((m_before[1 + k] >= 0.5) | (m_after[1 + k] >= 0.5), 3) & ~others
    background = shrink((m_before[0] >= 0.99) & (m_after[0] >= 0.99), 2)
    return outline(img, background, area)


def _outline_ious(o: torch.Tensor, e: torch.Tensor, m_before: torch.Tensor,
                  m_after: torch.Tensor, slots: list[int]) -> dict[int, float]:
    """Per object: IoU of its outline in the edited image with its outline before."""
    return {k: iou(_outline(o, m_before, m_after, k), _outline(e, m_before, m_after, k))
            for k in slots}


def run_eval(G: Generator, clip: CoralClip, judge: Judge, seeds: list[int],
             steps: int | None = None,
             methods: tuple[str, ...] = METHODS, kinds: tuple[str, ...] = KINDS,
             out: Path | None = None, feat_layer: int | None = None, can_steps: int | None = None,
             log: Any = print, weights: LossWeights | None = None, lr: float | None = None,
             train_overrides: dict[str, Any] | None = None,
             preset: str = DEFAULT_PRESET) -> dict[str, Any]:
    """The user's path: every method gets only the prompt (no neutral prompt, no region, nothing
    the truth knows) and the ``preset``'s defaults (or the same given ones) with the same step
    budget. CAN trains ``can_steps`` per prompt (default 3 x steps) on fresh samples and is
    applied to the evaluation scenes, which it never saw (colour kinds only)."""
    given = dict(train_overrides or {})
    if weights is not None:
        given["weights"] = weights
    steps = steps or preset_defaults(preset).steps
    cases, ws_all, scenes = build_cases(G, seeds, kinds)
    feat_layer = feat_layer or (len(G.conv_layers) + 1) // 2
    rows: list[dict[str, Any]] = []
    tiles: list[tuple[float, str, np.ndarray]] = []
    can_edits: dict[str, Edit] = {}
    for method in methods:
        for case in cases:
            if method == "coral_can" and case.kind not in COLOUR_KINDS + UNFIT_KINDS:
                continue
            ws = ws_all[case.index:case.index + 1]
            t0 = time.perf_counter()
            if method == "coral_can":
                if case.prompt not in can_edits:
                    cfg = preset_config(preset, prompt=case.prompt, variant="can",
                                        direction="global", mode="per_prompt",
                                        steps=can_steps or steps * 3, batch=4, seed=0,
                                        truncation=1.0, lr=lr, **given)
                    can_edits[case.prompt] = train_edit(G, clip, cfg).edit
                edit = can_edits[case.prompt]
            else:
                cfg = preset_config(preset, prompt=case.prompt, steps=steps, batch=1,
                                    seed=case.seed, variant="can" if method == "feat" else "ss",
                                    only_layers=[feat_layer] if method == "feat" else None,
                                    no_masks=method == "styleclip", lr=lr, **given)
                region = case.region[None, None].float() if method == "true_region" else None
                edit = train_edit(G, clip, cfg, latents=ws, segments=region).edit
            t_edit = time.perf_counter() - t0
            t1 = time.perf_counter()
            res = apply_edits(G, ws, [edit], clip=clip)  # a user's Apply with its CLIP
            t_apply = time.perf_counter() - t1
            assert res.original is not None
            warnings = res.all_warnings([edit])
            scores = score_case(case, judge, scenes, res.original, res.edited, warnings)
            if case.after is not None:
                scores["iou"] = _mask_iou(res, case, G.img_resolution)
            selected = res.selected_layers()
            rows.append({"method": method, "seed": case.seed, "kind": case.kind,
                         "prompt": case.prompt, **scores, "seconds_per_edit": t_edit,
                         "seconds_per_apply": t_apply, "peak_mib": _peak_mib(),
                         "selected_layers": selected, "warnings": warnings,
                         "reach": (edit.info.get("prompt_fit") or {}).get("reach"),
                         "prior": prior_record(edit.info)})
            if method in ("coral_ss", "coral_can"):  # the pack's own edits, worst shown
                tiles.append((_badness(scores), f"{method} {case.kind}: {case.prompt}",
                              _tile(res, G.img_resolution)))
            log(f"{method:>10} seed {case.seed:>3} {case.kind:>14} {case.prompt!r}: "
                f"success={scores['success']} psnr_out={scores.get('psnr_outside', 0):.1f} "
                f"image={scores['psnr_image']:.1f}")
    summary = summarise(rows)
    result = {"cases": len(cases), "steps": steps, "can_steps": can_steps or steps * 3,
              "lr": lr, "preset": preset,
              # what the CORAL methods trained with: the preset, then --set / the given weights
              "loss_weights": preset_config(preset, prompt="-", **given).weights.to_dict(),
              "settings": {k: v.to_dict() if isinstance(v, LossWeights) else v
                           for k, v in given.items()},
              "methods": list(methods),
              "kinds": list(kinds), "feat_layer": feat_layer, "summary": summary, "rows": rows,
              "path": "user's path: the prompt only, library defaults"}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "eval.json", json.dumps(result, indent=2))
        write_text_atomic(out / "eval_table.md", format_table(summary) + "\n")
        if tiles:  # the worst cases first: failures, then the most damage outside
            worst = sorted(tiles, key=lambda t: -t[0])[:8]
            save_png(np.kron(np.concatenate([t[2] for t in worst], 0),
                             np.ones((3, 3, 1), dtype=np.uint8)), out / "eval_grid.png")
            write_text_atomic(out / "eval_grid.txt", "\n".join(
                f"row {n + 1}: {t[1]}" for n, t in enumerate(worst)) + "\n")
    return result


def _mask_iou(res: Any, case: EvalCase, resolution: int) -> float:
    """IoU of the edit's effective mask (the changed-pixel map where there is no mask) with
    the true region: where the method chose to act."""
    masks = res.masks[0]
    if any(m is not None for m in masks) and not all(
            m is None or bool((m == 1).all()) for m in masks):
        eff = effective_mask(masks, resolution)[0].cpu() >= 0.5
    else:
        eff = (res.edited - res.original).abs().amax(1)[0].cpu() > 0.1
    return iou(eff, case.region >= 0.5)


def _badness(scores: dict[str, Any]) -> float:
    return (0.0 if scores["success"] else 100.0) + max(0.0, 40 - float(
        scores.get("psnr_outside", scores["psnr_image"])))


def _tile(res: Any, resolution: int) -> np.ndarray:
    """Original, edited, where the edit acts (every clause's mask together) and the change."""
    effs = [effective_mask(masks, resolution) for masks in res.masks
            if any(m is not None for m in masks)]
    eff = torch.stack(effs).amax(0) if effs else torch.zeros(1, resolution, resolution)
    m_img = (eff[0].cpu().numpy() * 255).astype(np.uint8)
    diff = ((res.edited - res.original).abs().amax(1)[0].cpu().numpy() * 127).clip(0, 255)
    return np.concatenate([image_to_uint8(res.original)[0], image_to_uint8(res.edited)[0],
                           np.repeat(m_img[..., None], 3, -1),
                           np.repeat(diff.astype(np.uint8)[..., None], 3, -1)], 1)


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method and kind group: success, preservation as MEDIANS over cases (a method that
    changes nothing scores 100 dB on a case; averaging dB values would reward it), worst case."""
    out: dict[str, dict[str, float]] = {}
    groups = {"colour": COLOUR_KINDS, "shape": ("shape",), "two attributes": ("two attributes",),
              "unfit": UNFIT_KINDS}
    for method in dict.fromkeys(r["method"] for r in rows):
        for group, kinds in groups.items():
            sub = [r for r in rows if r["method"] == method and r["kind"] in kinds]
            if not sub:
                continue
            row: dict[str, float] = {"cases": float(len(sub)),
                                     "success": _mean(sub, "success"),
                                     "s_per_edit": _mean(sub, "seconds_per_edit")}
            if group == "unfit":
                row.update(unchanged=_mean(sub, "unchanged"), warned=_mean(sub, "warned"),
                           silent_damage=_mean(sub, "silent_damage"))
            else:
                row.update(others_preserved=_mean(sub, "others_preserved"),
                           clean=_mean([{"x": bool(r["success"]) and bool(r["others_preserved"])}
                                        for r in sub], "x"),
                           outlines_kept=_mean(sub, "outlines_kept"),
                           psnr_outside=_median(sub, "psnr_outside"),
                           psnr_outside_worst=float(np.nanmin([r["psnr_outside"] for r in sub])),
                           psnr_outside_dilated=_median(sub, "psnr_outside_dilated"),
                           share_30db=_mean([{"x": r["psnr_outside"] >= 30} for r in sub], "x"),
                           psnr_inside_ideal=_median(sub, "psnr_inside_ideal"),
                           iou=_median(sub, "iou"))
                for key in ("share_interior", "share_ring", "share_border"):
                    vals = [r[key] for r in sub if key in r and r[key] == r[key]]
                    if vals:
                        row[key] = float(np.median(vals))
            out[f"{method} / {group}"] = row
    return out


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([float(r[key]) for r in rows]))


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(np.nanmedian([float(r[key]) for r in rows]))


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """Two tables: edits that should change something, and prompts that do not fit."""
    def f(row: dict[str, float], key: str, fmt: str = "{:.2f}") -> str:
        return fmt.format(row[key]) if key in row else "-"

    head = ("| method / kinds | cases | success | others kept | clean (both) | outlines kept | "
            "PSNR outside, "
            "median (dB) | worst | +1 px | cases >= 30 dB | PSNR inside vs ideal | target "
            "share interior / ring / border | s/edit |")
    lines = [head, "|" + "---|" * 13]
    unfit = ["| method | cases | left unchanged and warned | unchanged (>= 35 dB) | warned | "
             "changed without a warning | s/edit |", "|" + "---|" * 7]
    for name, r in summary.items():
        if name.endswith("/ unfit"):
            unfit.append(f"| {name} | {r['cases']:.0f} | {r['success']:.2f} | "
                         f"{r['unchanged']:.2f} | {r['warned']:.2f} | "
                         f"{r['silent_damage']:.2f} | {r['s_per_edit']:.1f} |")
            continue
        shares = " / ".join(f(r, k) for k in ("share_interior", "share_ring", "share_border"))
        lines.append(f"| {name} | {r['cases']:.0f} | {r['success']:.2f} | "
                     f"{r['others_preserved']:.2f} | {r['clean']:.2f} | "
                     f"{r['outlines_kept']:.2f} | "
                     f"{r['psnr_outside']:.1f} | {r['psnr_outside_worst']:.1f} | "
                     f"{r['psnr_outside_dilated']:.1f} | {r['share_30db']:.2f} | "
                     f"{r['psnr_inside_ideal']:.1f} | {shares} | {r['s_per_edit']:.1f} |")
    return "\n".join(lines) + "\n\n" + "\n".join(unfit)
