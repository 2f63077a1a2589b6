"""Run chosen demo-world evaluation cases under settings and print each case: the judge's
verdict, PSNR outside the true region, IoU, the plain CLIP loss of the result, the training's
CLIP loss every 20 steps and the region contest's verdict (what session 9 used to look at the
failures one by one). Scored with the same ``build_cases`` and ``_score`` as ``coral eval``,
without the +1 px figure.

Usage: python scripts/run_cases.py "25b,28b,29o" "" "prior_scale=1" ...
(a case is a seed and b = background or o = object; settings as in sweep_localisation.py)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from coral_core.cache import get_clip
from coral_core.editing.apply import apply_edits
from coral_core.editing.trainer import TrainConfig, train_edit
from coral_core.formats import load_generator
from coral_core.world import assets
from coral_core.world.evaluate import _score, build_cases, default_prompt_set
from coral_core.world.judge import load_judge

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_localisation import parse_setting  # noqa: E402


def main(which: str, settings: list[str]) -> None:
    G = load_generator(assets.DEMO_GENERATOR).generator
    clip, judge = get_clip(str(assets.DEMO_CLIP)), load_judge(assets.DEMO_JUDGE)
    want = [(int(c[:-1]), c[-1]) for c in which.split(",")]
    seeds = sorted({s for s, _ in want})
    cases, ws_all = build_cases(G, seeds, default_prompt_set())
    index = {s: i for i, s in enumerate(seeds)}
    for setting in settings or [""]:
        weights, extra, overrides = parse_setting(setting)
        ok = 0
        for case in cases:
            if (case.seed, case.kind[0]) not in want:
                continue
            ws = ws_all[index[case.seed]:index[case.seed] + 1]
            t0 = time.time()
            cfg = TrainConfig(prompt=case.prompt, neutral=case.neutral, batch=1, seed=case.seed,
                              weights=weights, steps=int(extra.get("steps", 100)),
                              lr=float(extra["lr"]) if "lr" in extra else None, **overrides)
            result = train_edit(G, clip, cfg, latents=ws)
            res = apply_edits(G, ws, [result.edit])
            sc = _score(case, judge, G, res.original, res.edited, res.masks[0], 0.5)
            with torch.no_grad():
                plain = float(1 - (clip.encode_image(res.edited)
                                   * clip.encode_text([case.prompt])).sum(-1))
            ok += sc["success"]
            contest = result.edit.info.get("region_pruning", {}).get("removed", {}).get("contest")
            print(f"[{setting}] {case.seed} {case.kind[:3]} {case.prompt!r:<24} "
                  f"{'ok  ' if sc['success'] else 'FAIL'} "
                  f"{'k' if sc['others_preserved'] else 'L'} iou {sc['iou']:.2f} "
                  f"psnr {sc['psnr_outside']:.1f} plain {plain:.3f} "
                  f"clip_hist {[round(h['clip'], 3) for h in result.history[::20]]} "
                  f"contest {contest} {time.time() - t0:.1f}s", flush=True)
        print(f"[{setting}] success {ok}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
