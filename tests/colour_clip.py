"""A stand-in CLIP that sees only colour, so that a test knows what every score means.

An image embeds as its mean colour (red, green, blue, each at least a little) unit-normed, with a
fourth coordinate of 0; a prompt embeds as the colours it names (a prompt naming none points
along the fourth axis alone, so every picture scores 0: a prompt the CLIP "cannot see"). It is
differentiable, so training can follow it, and it has the members the engine reads of a
CoralClip.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from coral_core.clip_model import displayed

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
           "yellow": (1.0, 1.0, 0.0), "cyan": (0.0, 1.0, 1.0), "white": (1.0, 1.0, 1.0)}


class ColourClip:
    model_id = "colour-clip"
    context_words = 16  # prompts longer than this are "cut"
    vocabulary = None  # as an open-web CLIP: it lists no words

    def __init__(self) -> None:
        self.model = torch.nn.Identity()

    def fingerprint(self) -> str:
        return "colourclip1"

    def tokens_beyond_context(self, prompt: str) -> tuple[int, int] | None:
        words = len(prompt.split())
        return (words, self.context_words) if words > self.context_words else None

    def encode_image(self, img: torch.Tensor, as_displayed: bool = True) -> torch.Tensor:
        if as_displayed:  # as CoralClip: the picture as displayed
            img = displayed(img)
        colour = F.softplus(img.float().mean((2, 3)) * 4) / 4  # [B, 3], positive
        return F.normalize(torch.cat([colour, torch.zeros_like(colour[:, :1])], 1), dim=-1)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            named = [COLOURS[w] for w in prompt.lower().split() if w in COLOURS]
            vec = torch.tensor([sum(c[i] for c in named) for i in range(3)] + [0.0]) \
                if named else torch.tensor([0.0, 0.0, 0.0, 1.0])
            rows.append(vec)
        return F.normalize(torch.stack(rows), dim=-1)
