"""Where each image shows the thing a prompt names, read by the CLIP itself by hiding one
segment piece at a time (a departure from the paper; ``TrainConfig.locate_named``).

Why: the region contest (region.py) lets the large pieces compete for the edit by the CLIP
loss each reaches alone, and a CLIP that binds colour to shape weakly scores "a yellow circle"
almost as well when the yellow goes onto the triangle beside the circle: on the demo world
the contest gave most failed object recolours to the wrong object. The same CLIP reads the
*shape* well: the picture with the circle hidden matches "a circle" far less, the picture with
the triangle hidden does not (the hidden piece that lowers it most was the named object in 43
of 43 recolouring cases, docs/method.md, session 30). So the prompt is read as its grammar
says: in "a yellow circle" the last word names the thing and the word before it says what it
should become; the text without that word ("a circle") is what the picture already shows, and
the piece whose hiding lowers its score most is where the edit belongs. Only a clause naming
one thing is read so: in "a face with blond hair" the rest, "a face with hair", names two, and
on fresh faces 332-341 it named the face's skin for the hair (the pieces there mix hair and
face) and lost three hair recolours.

No truth and no tuned number: a piece is hidden by filling it with the median colour of the
ring round it (two catalogue cells wide, one cell out), and only pieces between the contest's
smallest share and half the picture are hidden (a piece covering half the picture or more is
the ground the scene stands on; hiding it hides the scene). A piece is named only if hiding
it takes away at least ``fit.MIN_REACH`` of the text's range on the sample bank (the fit
check's unit): the thing is there, not a hint of it. On the face world the pieces are not the
things prompts name (a mouth lies inside a beard's piece, eyes are smaller than any contest
piece), the drops are small, and a smile's edit aimed at the face's skin came out unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..clip_model import CoralClip
from .fit import (EVER_PRESENT, FUNCTION_WORDS, MIN_REACH, _fix_articles, bare_words,
                  prompt_clauses, text_range)
from .prior import SampleBank

MAX_NAMED_SHARE = 0.5  # of the picture: a larger piece is the ground, never hidden


def named_text(prompt: str) -> str | None:
    """The prompt's first clause that names one thing and what it should become, without
    the latter ("a yellow circle": "a circle"; "a smiling face": "a face"), or None where no
    clause does: one content word, a detail added with "with", a clause naming what every
    picture has (a background), or one that names a second thing ("a face with blond hair"
    left "a face with hair": hiding the face lowers that as much as hiding the hair, and on
    the face world the pieces mix the two)."""
    for clause in prompt_clauses(prompt):
        words = clause.split()
        bare = bare_words(words)
        if len(words) < 2 or EVER_PRESENT.intersection(bare):
            continue
        if bare[-1] in FUNCTION_WORDS or bare[-2] in FUNCTION_WORDS:
            continue
        if sum(w not in FUNCTION_WORDS for w in bare[:-2]):
            continue
        return _fix_articles(words[:-2] + words[-1:])
    return None


def hidden(image: torch.Tensor, piece: torch.Tensor) -> torch.Tensor:
    """[3, H, W]: ``image`` [3, H, W] with ``piece`` [r, r] (one image's segment at the
    catalogue's resolution) and one cell round it filled with the median colour of the ring
    two cells further out; the image itself where that ring is empty."""
    cell = piece[None, None].float()
    grown = F.max_pool2d(cell, 3, 1, 1)
    ring = F.max_pool2d(grown, 5, 1, 2) - grown
    size = image.shape[-2:]
    grown = F.interpolate(grown, size=size, mode="nearest")[0, 0]
    ring = F.interpolate(ring, size=size, mode="nearest")[0, 0]
    if float(ring.sum()) < 1:
        return image
    colour = image[:, ring > 0.5].median(1).values
    return image * (1 - grown) + colour[:, None, None] * grown


@torch.no_grad()
def named_pieces(clip: CoralClip, images: torch.Tensor, segs: torch.Tensor, prompt: str,
                 min_share: float, bank: SampleBank | None, top: int,
                 as_displayed: bool = True) -> list[int | None]:
    """Per image [B, 3, H, W] with its pieces ``segs`` [B, K, r, r]: the piece (between
    ``min_share`` and MAX_NAMED_SHARE of the picture) whose hiding lowers the CLIP's score of
    ``named_text(prompt)`` most, if that takes away at least MIN_REACH of the text's range on
    the ``bank`` (its ``top`` best samples against its mean); None where the prompt names
    nothing to find, there is no bank to measure by, or no piece qualifies."""
    text = named_text(prompt)
    if text is None or bank is None:
        return [None] * int(images.shape[0])
    target = clip.encode_text([text])[0].float()
    least = MIN_REACH * text_range(bank, target, top)
    share = segs.flatten(2).float().mean(2)  # [B, K]
    out: list[int | None] = []
    for b in range(int(images.shape[0])):
        pieces = [k for k in range(int(segs.shape[1]))
                  if min_share <= float(share[b, k]) < MAX_NAMED_SHARE]
        if not pieces:
            out.append(None)
            continue
        variants = torch.stack([images[b]] + [hidden(images[b], segs[b, k]) for k in pieces])
        scores = clip.encode_image(variants, as_displayed).float() @ target.to(images.device)
        drops = scores[0] - scores[1:]
        best = int(drops.argmax())
        out.append(pieces[best] if float(drops[best]) >= least and float(drops[best]) > 0
                   else None)
    return out
