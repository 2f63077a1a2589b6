"""Measure how loss settings change localisation on the demo world (the figures behind the
library's defaults). Runs CORAL-SS per image on the given seeds for each setting and prints
the eval table per setting; every setting is scored against the world's true regions by the
independent judge.

Usage: python scripts/sweep_localisation.py GENERATOR CLIP_DIR JUDGE SEEDS "area=0.01" ...
(each setting is a comma list of LossWeights or TrainConfig fields, e.g.
"area=0.05,steps=200,select_then_edit=0.5,directional=1", and methods=coral_ss+true_region)
"""
from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

from coral_core.cache import get_clip
from coral_core.editing.losses import LossWeights
from coral_core.editing.trainer import TrainConfig
from coral_core.formats import load_generator
from coral_core.seeds import parse_seeds
from coral_core.world.evaluate import format_table, run_eval
from coral_core.world.judge import load_judge


TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


def parse_setting(text: str) -> tuple[LossWeights, dict, dict]:
    """LossWeights, run options (steps, lr, methods) and TrainConfig overrides of a setting."""
    weights, extra, overrides = LossWeights(), {}, {}
    for part in filter(None, text.split(",")):
        key, value = part.split("=")
        if key in ("steps", "lr", "methods"):
            extra[key] = value
        elif key in TRAIN_FIELDS and not hasattr(weights, key):
            kind = type(getattr(TrainConfig(prompt="-"), key))  # None defaults take floats
            overrides[key] = bool(int(value)) if kind is bool else \
                int(value) if kind is int else value if kind is str else float(value)
        else:
            current = getattr(weights, key)
            setattr(weights, key, value if isinstance(current, str) else float(value))
    return weights, extra, overrides


if __name__ == "__main__":
    gen, clip_dir, judge_path, seeds = sys.argv[1:5]
    G = load_generator(gen).generator
    clip, judge = get_clip(clip_dir), load_judge(Path(judge_path))
    for setting in sys.argv[5:] or [""]:
        weights, extra, overrides = parse_setting(setting)
        methods = tuple(extra.get("methods", "coral_ss").split("+"))
        result = run_eval(G, clip, judge, parse_seeds(seeds),
                          steps=int(extra["steps"]) if "steps" in extra else None,
                          methods=methods, weights=weights,
                          lr=float(extra["lr"]) if "lr" in extra else None,
                          train_overrides=overrides, log=lambda *a: None)
        print(f"## setting: {setting or 'library defaults'}")
        print(format_table(result["summary"]))
        for r in result["rows"]:  # every case, to see which ones a setting moves
            print(f"    {r['method']:>11} seed {r['seed']:>3} {r['kind']:>14} "
                  f"{r['prompt']!r:<40} {'ok  ' if r['success'] else 'FAIL'} "
                  f"{r.get('psnr_outside', r['psnr_image']):.1f} dB "
                  f"layers {r['selected_layers']} warnings {len(r['warnings'])}")
