#!/usr/bin/env python3
"""The direction prior alone as a face edit: w + scale * prior on every W+ entry, no training,
no masks, scored as ``coral eval --world faces`` scores (success by the judge, the other parts
read unchanged, PSNR outside the part). Why: it shows whether the generator's own w-direction
of a prompt is a clean edit before any training turns it (docs/method.md, "Holding the
direction to the prior"). Usage:
    python scripts/prior_alone_faces.py --seeds 200-223 --scales 0.75,1,1.5 --forms matched,mean
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from coral_core.clip_model import load_clip
from coral_core.editing.config import PRIOR_FORMS
from coral_core.editing.prior import retrieval_prior, sample_bank_for
from coral_core.formats.loader import load_generator
from coral_core.seeds import parse_seeds
from coral_core.world.assets import world_assets
from coral_core.world.faces.evaluate import KINDS, build_cases, score
from coral_core.world.faces.judge import load_face_judge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="200-223")
    ap.add_argument("--scales", default="0.75,1,1.5")
    ap.add_argument("--top", type=int, default=64)
    ap.add_argument("--forms", default=",".join(PRIOR_FORMS),
                    help="the prior's forms to compare (prior.retrieval_prior)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    assets = world_assets("faces")
    G = load_generator(assets.generator).generator
    clip = load_clip(assets.clip)
    judge = load_face_judge(assets.judge)
    bank = sample_bank_for(G, clip, 1024)
    cases, ws_all, faces = build_cases(G, parse_seeds(args.seeds), tuple(KINDS))
    for form, scale in ((f, float(s)) for f in args.forms.split(",")
                        for s in args.scales.split(",")):
        by_kind: dict[str, list[dict]] = {}
        for case in cases:
            ws = ws_all[case.index:case.index + 1]
            prior = retrieval_prior(bank, clip.encode_text([case.prompt])[0], args.top, form)
            got = score(case, judge, faces, G.synthesize(ws), G.synthesize(ws + scale * prior))
            by_kind.setdefault(case.kind, []).append(got)
        for kind, rows in by_kind.items():
            print(f"{form:8s} scale {scale:<5} {kind:12s} cases {len(rows):3d}  success "
                  f"{np.mean([r['success'] for r in rows]):.2f}  others kept "
                  f"{np.mean([r['others_preserved'] for r in rows]):.2f}  PSNR outside "
                  f"{np.median([r['psnr_outside'] for r in rows]):.1f} dB")


if __name__ == "__main__":
    main()
