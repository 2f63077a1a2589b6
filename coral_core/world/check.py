"""Does the demo generator draw the world? Attribute statistics of samples vs renders."""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from ..stylegan import Generator
from .judge import Judge
from .render import render
from .scene import BG_NAMES, OBJ_NAMES, SHAPES, random_scenes, scenes_from_z


@torch.no_grad()
def attribute_stats(judge: Judge, img: torch.Tensor) -> dict[str, dict[str, float]]:
    read = judge.read(img)
    n = img.shape[0]
    bg = Counter(BG_NAMES[i] for i in read["background"])
    colours: Counter = Counter()
    shapes: Counter = Counter()
    counts: Counter = Counter()
    for objs in read["objects"]:
        counts[min(len(objs), 3)] += 1
        for c, s in objs:
            colours[c] += 1
            shapes[s] += 1
    total_objs = max(1, sum(colours.values()))
    return {"background": {k: bg[k] / n for k in BG_NAMES},
            "object colour": {k: colours[k] / total_objs for k in OBJ_NAMES},
            "object shape": {k: shapes[k] / total_objs for k in SHAPES},
            "objects per image": {str(k): counts[k] / n for k in range(4)}}


@torch.no_grad()
def check_generator(G: Generator, judge: Judge, n: int = 1000, seed: int = 7) -> dict[str, Any]:
    """Judge-read attribute frequencies of G's samples vs renders, the largest gap per
    attribute, and how often the sample agrees with the scene its z names."""
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    samples = torch.cat([G.synthesize(G.mapping_ws(c)) for c in z.split(250)])
    renders, _ = render(random_scenes(n, seed + 1))
    gen, real = attribute_stats(judge, samples), attribute_stats(judge, renders)
    gaps = {attr: max(abs(gen[attr][k] - real[attr][k]) for k in gen[attr]) for attr in gen}
    named = scenes_from_z(z)
    read = judge.read(samples)
    bg_agree = float(sum(int(b == int(t)) for b, t in zip(read["background"],
                                                            named.background)) / n)
    return {"generated": gen, "renders": real, "max_gap": gaps, "background_matches_z": bg_agree}
