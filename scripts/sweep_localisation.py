"""Measure how loss settings change localisation on the demo world (the figures behind the
library's defaults). Runs CORAL-SS per image on the given seeds for each setting and prints
the eval table per setting; every setting is scored against the world's true regions by the
independent judge.

Usage: python scripts/sweep_localisation.py GENERATOR CLIP_DIR JUDGE SEEDS "area=0.01" ...
(each setting is a comma list of LossWeights fields, optionally with steps=N or lr=X)
"""
from __future__ import annotations

import sys
from pathlib import Path

from coral_core.cache import get_clip
from coral_core.editing.losses import LossWeights
from coral_core.formats import load_generator
from coral_core.seeds import parse_seeds
from coral_core.world.evaluate import format_table, run_eval
from coral_core.world.judge import load_judge


def parse_setting(text: str) -> tuple[LossWeights, dict]:
    weights, extra = LossWeights(), {}
    for part in filter(None, text.split(",")):
        key, value = part.split("=")
        if key in ("steps", "lr", "methods", "mask_init", "directional", "select_then_edit"):
            extra[key] = value
        else:
            current = getattr(weights, key)
            setattr(weights, key, value if isinstance(current, str) else float(value))
    return weights, extra


if __name__ == "__main__":
    gen, clip_dir, judge_path, seeds = sys.argv[1:5]
    G = load_generator(gen).generator
    clip, judge = get_clip(clip_dir), load_judge(Path(judge_path))
    for setting in sys.argv[5:] or [""]:
        weights, extra = parse_setting(setting)
        methods = tuple(extra.get("methods", "coral_ss").split("+"))
        result = run_eval(G, clip, judge, parse_seeds(seeds),
                          steps=int(extra["steps"]) if "steps" in extra else None,
                          methods=methods, weights=weights,
                          lr=float(extra["lr"]) if "lr" in extra else None,
                          train_overrides={**({"mask_init": float(extra["mask_init"])}
                                              if "mask_init" in extra else {}),
                                           **({"directional": True}
                                              if "directional" in extra else {}),
                                           **({"select_then_edit":
                                               float(extra["select_then_edit"])}
                                              if "select_then_edit" in extra else {})},
                          log=lambda *a: None)
        print(f"## setting: {setting or 'library defaults'}")
        print(format_table(result["summary"]))
        for kind in ("background", "object colour"):
            rows = [r for r in result["rows"] if r["kind"] == kind]
            if rows:
                print(f"  {kind}: success {sum(r['success'] for r in rows)}/{len(rows)}, "
                      f"median PSNR outside "
                      f"{sorted(r['psnr_outside'] for r in rows)[len(rows) // 2]:.1f} dB, "
                      f"layers {[r['selected_layers'] for r in rows]}")
        print(flush=True)
