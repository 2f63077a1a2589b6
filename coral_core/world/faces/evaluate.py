"""``coral eval --world faces``: the paper's edits on portraits, scored against the truth.

The user's path, as in the shapes world: each method gets the prompt and nothing else; the
truth (the portrait z names, its part masks, the judge) only scores. Edit kinds and prompts:
add a beard, add glasses, smile, hair colour, hair style (short <-> long), eye colour,
background colour. Success: the judge reads the new value; others kept: the judge reads every
other attribute as before; preservation: PSNR outside the part's support before and after
(no dilation), with the dilated figure beside it; and which layers each edit selected.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...atomic import write_text_atomic
from ...clip_model import CoralClip
from ...editing.apply import apply_edits
from ...editing.presets import DEFAULT_PRESET, preset_config, preset_defaults
from ...editing.trainer import train_edit
from ...images import image_to_uint8, save_png
from ...stylegan import Generator
from ..scoring import change_shares, grow, prior_record, psnr_in
from .captions import BALD, caption, facts_of
from .judge import FaceJudge
from .render import render
from .scene import BACKGROUNDS, HAIR_COLOURS, PARTS, VALUES, FaceBatch, faces_from_z

#: kind -> (attribute, the parts whose masks bound the change; a beard takes its hair's
#: colour, so a hair colour edit also recolours the beard)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "beard": ("beard", ("beard",)), "glasses": ("glasses", ("glasses",)),
    "smile": ("mouth", ("mouth",)), "hair colour": ("hair_colour", ("hair", "beard")),
    "hair style": ("hair_style", ("hair",)), "eye colour": ("eyes", ("eyes",)),
    "background": ("background", ("background",))}


def change_region(before: torch.Tensor, after: torch.Tensor, parts: tuple[str, ...]
                  ) -> torch.Tensor:
    """[..., H, W] union of the parts' visible masks before and after (masks [..., P, H, W])."""
    idx = [PARTS.index(p) for p in parts]
    return torch.maximum(before[..., idx, :, :].amax(-3), after[..., idx, :, :].amax(-3))
METHODS = ("styleclip", "coral_ss", "coral_can")


@dataclass
class FaceCase:
    seed: int
    kind: str
    prompt: str
    index: int
    after: FaceBatch
    region: torch.Tensor  # [H, W] support of the changed part before and after


def _new_value(kind: str, face: FaceBatch, rng: np.random.RandomState) -> int | None:
    attr, _ = KINDS[kind]
    cur = int(getattr(face, attr)[0])
    if kind in ("beard", "glasses", "smile"):
        return 1 if cur == 0 else None  # add what is not there
    if kind == "hair style":
        return {1: 2, 2: 1}.get(cur)  # short <-> long; bald faces are not asked
    if kind == "hair colour":
        if int(face.hair_style[0]) == BALD:
            return None
        bg = list(BACKGROUNDS)[int(face.background[0])]
        options = [c for c in range(len(HAIR_COLOURS)) if c != cur and
                   list(HAIR_COLOURS)[c] != bg]
    elif kind == "background":
        hair = list(HAIR_COLOURS)[int(face.hair_colour[0])]
        # never the hair's colour: the world would then change the hair (and a beard) too
        options = [b for b in range(len(BACKGROUNDS)) if b != cur and
                   list(BACKGROUNDS)[b] != hair]
    else:
        options = [v for v in range(len(VALUES[attr])) if v != cur]
    return int(rng.choice(options)) if options else None


def build_cases(G: Generator, seeds: list[int], kinds: tuple[str, ...] = tuple(KINDS)
                ) -> tuple[list[FaceCase], torch.Tensor, FaceBatch]:
    z = G.z_from_seeds(seeds)
    faces = faces_from_z(z)
    _, masks = render(faces, G.img_resolution)
    cases = []
    place = {kind: n for n, kind in enumerate(KINDS)}
    for i, seed in enumerate(seeds):
        for kind in kinds:
            one = faces.select(slice(i, i + 1)).clone()
            # seeded by the kind's place among all kinds, not in the list asked for, so a
            # seed and kind are the same case whatever other kinds a run asks for
            new = _new_value(kind, one, np.random.RandomState(seed * 89 + place[kind]))
            if new is None:
                continue
            attr, parts = KINDS[kind]
            after = one.replace(**{attr: new})
            _, after_masks = render(after, G.img_resolution)
            region = change_region(masks[i], after_masks[0], parts)
            prompt = caption(**{attr: VALUES[attr][new]}).text()
            cases.append(FaceCase(seed, kind, prompt, i, after, region))
    return cases, G.mapping_ws(z), faces


def score(case: FaceCase, judge: FaceJudge, faces: FaceBatch, original: torch.Tensor,
          edited: torch.Tensor) -> dict[str, Any]:
    o, e = original[0].detach().cpu().float(), edited[0].detach().cpu().float()
    attr, _ = KINDS[case.kind]
    before_read, after_read = judge.read(original.cpu())[0], judge.read(edited.cpu())[0]
    want = facts_of(case.after, 0)
    success = after_read.get(attr) == want.get(attr)
    others = [a for a in before_read if a != attr and not (
        attr == "hair_style" and a == "hair_colour")]
    kept = all(after_read.get(a) == before_read.get(a) for a in others)
    region = case.region > 0
    ideal, _ = render(case.after, o.shape[-1])
    return {"success": bool(success), "others_preserved": bool(kept),
            "psnr_outside": psnr_in(e, o, ~region),
            "psnr_outside_dilated": psnr_in(e, o, ~grow(region, 2)),
            "psnr_inside_ideal": psnr_in(e, ideal[0], case.region >= 0.5),
            **change_shares(e, o, ideal[0], case.region),
            "read_after": after_read}


def run_face_eval(G: Generator, clip: CoralClip, judge: FaceJudge, seeds: list[int],
                  methods: tuple[str, ...] = ("coral_ss",), kinds: tuple[str, ...] = tuple(KINDS),
                  steps: int | None = None, can_steps: int | None = None,
                  out: Path | None = None, log: Any = print,
                  preset: str = DEFAULT_PRESET,
                  train_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The user's path on portraits (module docstring); ``train_overrides`` (``coral eval
    --set``) changes named settings of every method's config, for ablations."""
    given = dict(train_overrides or {})
    steps = steps or preset_defaults(preset).steps
    cases, ws_all, faces = build_cases(G, seeds, kinds)
    rows: list[dict[str, Any]] = []
    can: dict[str, Any] = {}
    tiles: list[tuple[float, np.ndarray]] = []
    for method in methods:
        for case in cases:
            ws = ws_all[case.index:case.index + 1]
            t0 = time.perf_counter()
            if method == "coral_can":
                if case.prompt not in can:
                    cfg = preset_config(preset, prompt=case.prompt, variant="can",
                                        mode="per_prompt", steps=can_steps or steps * 3,
                                        batch=4, seed=0, **given)
                    can[case.prompt] = train_edit(G, clip, cfg).edit
                edit = can[case.prompt]
            else:
                cfg = preset_config(preset, prompt=case.prompt, steps=steps, batch=1,
                                    seed=case.seed, no_masks=method == "styleclip", **given)
                edit = train_edit(G, clip, cfg, latents=ws).edit
            t_edit = time.perf_counter() - t0
            res = apply_edits(G, ws, [edit], clip=clip)  # a user's Apply with its CLIP
            assert res.original is not None
            s = score(case, judge, faces, res.original, res.edited)
            selected = res.selected_layers()  # every edit of a chain, as the shapes
            rows.append({"method": method, "seed": case.seed, "kind": case.kind,
                         "prompt": case.prompt, **s, "seconds_per_edit": t_edit,
                         "selected_layers": selected,
                         "reach": (edit.info.get("prompt_fit") or {}).get("reach"),
                         "prior": prior_record(edit.info),
                         "unchanged": bool(torch.equal(res.edited, res.original)),
                         "warnings": res.all_warnings([edit])})
            if method == "coral_ss":
                bad = (0 if s["success"] else 100) + max(0.0, 40 - s["psnr_outside"])
                diff = ((res.edited - res.original).abs().amax(1)[0].cpu().numpy() * 127)
                tiles.append((bad, np.concatenate(
                    [image_to_uint8(res.original)[0], image_to_uint8(res.edited)[0],
                     np.repeat(diff.clip(0, 255).astype(np.uint8)[..., None], 3, -1)], 1)))
            log(f"{method:>10} seed {case.seed:>3} {case.kind:>12} {case.prompt!r}: "
                f"success={s['success']} kept={s['others_preserved']} "
                f"out={s['psnr_outside']:.1f} layers={selected}")
    summary = summarise(rows)
    result = {"world": "faces", "steps": steps, "methods": list(methods), "kinds": list(kinds),
              "settings": {k: str(v) for k, v in given.items()},
              "summary": summary, "rows": rows,
              "path": "user's path: the prompt only, library defaults"}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "eval.json", json.dumps(result, indent=2, default=str))
        write_text_atomic(out / "eval_table.md", format_table(summary) + "\n")
        if tiles:
            worst = [t[1] for t in sorted(tiles, key=lambda t: -t[0])[:8]]
            save_png(np.kron(np.concatenate(worst, 0), np.ones((3, 3, 1), dtype=np.uint8)),
                     out / "eval_grid.png")
    return result


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: each edit kind, then all kinds together (``method / all``)."""
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        for kind in dict.fromkeys(r["kind"] for r in mine):
            out[f"{method} / {kind}"] = _figures([r for r in mine if r["kind"] == kind])
        if len({r["kind"] for r in mine}) > 1:
            out[f"{method} / all"] = _figures(mine)
    return out


def _figures(sub: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the table. ``clean``: the edit succeeded and every other part is read
    unchanged (the figure a user cares about); ``unchanged_warned``: left exactly as it was
    with a warning (a refusal, not damage)."""
    layers: dict[int, int] = {}
    for r in sub:
        for layer in r["selected_layers"]:
            layers[layer] = layers.get(layer, 0) + 1
    return {
        "cases": len(sub), "success": float(np.mean([r["success"] for r in sub])),
        "others_preserved": float(np.mean([r["others_preserved"] for r in sub])),
        "clean": float(np.mean([bool(r["success"]) and bool(r["others_preserved"])
                                for r in sub])),
        "unchanged_warned": float(np.mean([bool(r["warnings"]) and bool(r["unchanged"])
                                           for r in sub])),
        "psnr_outside": float(np.nanmedian([r["psnr_outside"] for r in sub])),
        "psnr_outside_worst": float(np.nanmin([r["psnr_outside"] for r in sub])),
        "psnr_outside_dilated": float(np.nanmedian([r["psnr_outside_dilated"] for r in sub])),
        "psnr_inside_ideal": float(np.nanmedian([r["psnr_inside_ideal"] for r in sub])),
        **{key: _median(sub, key) for key in ("change_interior", "change_edge")},
        "s_per_edit": float(np.mean([r["seconds_per_edit"] for r in sub])),
        "layers": ",".join(str(k) for k, v in sorted(layers.items())
                           if v >= max(1, len(sub) // 2))}


def _median(rows: list[dict[str, Any]], key: str) -> float:
    """Median over the rows where the figure was judged; NaN where none was (a part too
    small to have an interior), without numpy's warning for an all-NaN slice."""
    values = [r[key] for r in rows if r[key] == r[key]]
    return float(np.median(values)) if values else float("nan")


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    lines = ["| method / edit | cases | success | others kept | clean (both) | left unchanged, "
             "warned | PSNR outside, median (dB) | worst | +2 px | PSNR inside vs ideal | "
             "changed halfway, interior / edge | layers (>= half the cases) | s/edit |",
             "|" + "---|" * 13]
    for name, r in summary.items():
        lines.append(f"| {name} | {r['cases']} | {r['success']:.2f} | "
                     f"{r['others_preserved']:.2f} | {r['clean']:.2f} | "
                     f"{r['unchanged_warned']:.2f} | {r['psnr_outside']:.1f} | "
                     f"{r['psnr_outside_worst']:.1f} | "
                     f"{r['psnr_outside_dilated']:.1f} | {r['psnr_inside_ideal']:.1f} | "
                     f"{r.get('change_interior', float('nan')):.2f} / "
                     f"{r.get('change_edge', float('nan')):.2f} | "
                     f"{r['layers'] or '-'} | {r['s_per_edit']:.1f} |")
    return "\n".join(lines)
