"""Training batches and zero-shot scores for the face world's CLIP.

Every batch holds each portrait and one hard-negative *twin*: either the same face with one
attribute changed (so every word is tied to the part it names), or a colour moved between
places (red hair on a blue background becomes other hair on a red background), which is what
teaches binding a colour to its place.
"""
from __future__ import annotations

import random
from typing import Any

import torch

from ...errors import InputError
from ..clip_train import _text_embeddings
from .captions import BALD, attribute_prompts, caption, caption_for, truth_matrix
from .render import render
from .scene import (ATTRIBUTE_NAMES, BACKGROUNDS, HAIR_COLOURS, VALUES, FaceBatch,
                    random_faces)

SHARED = [c for c in BACKGROUNDS if c in HAIR_COLOURS]  # colours of both places
TRAIN_SUPERSAMPLE = 2


def _concat(a: FaceBatch, b: FaceBatch) -> FaceBatch:
    return FaceBatch(*(torch.cat([getattr(a, n), getattr(b, n)])
                       for n in a.__dataclass_fields__))


def twins(faces: FaceBatch, g: torch.Generator, focus: tuple[str, ...] = ()) -> FaceBatch:
    """One twin per face (see the module docstring). With ``focus``, half the twins change
    one of those attributes (a fine-tune for what a first run learnt least)."""
    out = faces.clone()
    n = len(faces)
    which = torch.randint(0, len(ATTRIBUTE_NAMES), (n,), generator=g)
    if focus:
        picks = torch.tensor([ATTRIBUTE_NAMES.index(a) for a in focus])
        focused = picks[torch.randint(0, len(picks), (n,), generator=g)]
        which = torch.where(torch.rand(n, generator=g) < 0.5, focused, which)
    for a, name in enumerate(ATTRIBUTE_NAMES):
        k = len(VALUES[name])
        step = torch.randint(1, k, (n,), generator=g)
        current = getattr(out, name)
        setattr(out, name, torch.where(which == a, (current + step) % k, current))
    # colour moves: red/grey hair -> that colour as background, or the reverse
    bg_names, hair_names = list(BACKGROUNDS), list(HAIR_COLOURS)
    move = torch.rand(n, generator=g) < 0.5
    for colour in SHARED:
        bgi, hi = bg_names.index(colour), hair_names.index(colour)
        hair_has = move & (faces.hair_colour == hi) & (faces.hair_style != BALD)
        bg_has = move & (faces.background == bgi) & ~hair_has
        other_bg = (bgi + torch.randint(1, len(bg_names), (n,), generator=g)) % len(bg_names)
        other_hair = (hi + torch.randint(1, len(hair_names), (n,), generator=g)) % len(
            hair_names)
        for name, value, where in (("background", bgi, hair_has),
                                   ("hair_colour", other_hair, hair_has),
                                   ("hair_colour", hi, bg_has), ("background", other_bg, bg_has),
                                   ("hair_style", faces.hair_style.clamp(min=1), bg_has)):
            current = getattr(out, name)
            setattr(out, name, torch.where(where, torch.as_tensor(value), current))
    return out.with_visible_hair()


def training_batch(batch: int, seed: int, rng: random.Random, g: torch.Generator,
                   device: str, focus: tuple[str, ...] = ()
                   ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """(images, captions, truth[image, caption]) for one contrastive step; with ``focus``,
    half the twins differ in, and half the captions name, one of those attributes."""
    unknown = [a for a in focus if a not in ATTRIBUTE_NAMES]
    if unknown:
        raise InputError(f"--focus: unknown attribute(s) {unknown}; choose from "
                         f"{', '.join(ATTRIBUTE_NAMES)}")
    faces = random_faces(batch, seed)
    both = _concat(faces, twins(faces, g, focus)).to(device)
    # 2x supersampling: the CLIP reads attributes, not edge quality (its augmentations blur
    # anyway), and a 4x portrait render cost 10 s per 256 images on the 2-core machine, most of
    # a training step
    img, _ = render(both, supersample=TRAIN_SUPERSAMPLE)
    specs = [caption_for(both, i, rng, focus if rng.random() < 0.5 else ())
             for i in range(len(both))]
    return img, [s.text() for s in specs], truth_matrix(specs, both)


def _encode(model: Any, img: torch.Tensor) -> torch.Tensor:
    from ..clip_train import _encode_images

    return _encode_images(model, img)



@torch.no_grad()
def zero_shot_accuracy(model: Any, tokenizer: Any, n: int = 1000, seed: int = 987654
                       ) -> dict[str, float]:
    """Per-attribute zero-shot accuracy on held-out renders (hair colour on faces with hair),
    and binding: "red hair" must score a red-haired face on another background above the
    same face with other hair on a red background, and "a red background" the reverse."""
    device = next(model.parameters()).device
    faces = random_faces(n, seed, device)
    img, _ = render(faces)
    emb = _encode(model, img)
    out: dict[str, float] = {}
    for name, prompts in attribute_prompts().items():
        pred = (emb @ _text_embeddings(model, tokenizer, prompts).T).argmax(1)
        keep = faces.hair_style != BALD if name == "hair_colour" else torch.ones_like(pred,
                                                                                   dtype=torch.bool)
        out[name] = float((pred[keep] == getattr(faces, name)[keep]).float().mean())
    out.update(binding_accuracy(model, tokenizer, faces))
    return out


@torch.no_grad()
def binding_accuracy(model: Any, tokenizer: Any, faces: FaceBatch) -> dict[str, float]:
    bg_names, hair_names = list(BACKGROUNDS), list(HAIR_COLOURS)
    wins_hair, wins_bg, total = 0, 0, 0
    for colour in SHARED:
        bgi, hi = bg_names.index(colour), hair_names.index(colour)
        pos = faces.clone()
        pos.hair_colour = torch.full_like(pos.hair_colour, hi)
        pos.hair_style = faces.hair_style.clamp(min=1)
        pos.background = torch.where(pos.background == bgi, (bgi + 1) % len(bg_names),
                                     pos.background)
        neg = pos.clone()
        neg.background = torch.full_like(pos.background, bgi)
        neg.hair_colour = torch.full_like(pos.hair_colour, (hi + 1) % len(hair_names))
        neg.with_visible_hair()
        e_pos, e_neg = _encode(model, render(pos)[0]), _encode(model, render(neg)[0])
        t_hair = _text_embeddings(model, tokenizer, [caption(hair_colour=colour).text()])[0]
        t_bg = _text_embeddings(model, tokenizer, [caption(background=colour).text()])[0]
        wins_hair += int(((e_pos @ t_hair) > (e_neg @ t_hair)).sum())
        wins_bg += int(((e_neg @ t_bg) > (e_pos @ t_bg)).sum())
        total += len(faces)
    return {"binding hair colour": wins_hair / total, "binding background": wins_bg / total}
