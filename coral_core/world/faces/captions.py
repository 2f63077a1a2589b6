"""Portrait captions at several levels of detail, as specs that can be checked against a face,
so contrastive training knows every caption in a batch that is true of an image."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..captions import with_article, words_of
from .scene import ATTRIBUTE_NAMES, VALUES, FaceBatch

BALD = VALUES["hair_style"].index("bald")


@dataclass(frozen=True)
class FaceCaption:
    """A caption as the attribute values it states (an attribute absent matches anything)."""

    facts: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        return dict(self.facts).get(name)

    def text(self) -> str:
        f = dict(self.facts)
        adjectives, details = [], []
        if f.get("mouth") == "smiling":
            adjectives.append("smiling")
        elif f.get("mouth") == "neutral":
            details.append("a neutral expression")
        if f.get("hair_style") == "bald":
            adjectives.append("bald")
        hair = [w for w in (f.get("hair_style"), f.get("hair_colour")) if w and w != "bald"]
        if hair:
            details.append(" ".join(hair) + " hair")
        if "beard" in f:
            details.append("a beard" if f["beard"] == "beard" else "no beard")
        if "glasses" in f:
            details.append("glasses" if f["glasses"] == "glasses" else "no glasses")
        if "eyes" in f:
            details.append(f"{f['eyes']} eyes")
        if "skin" in f:
            details.append(f"{f['skin']} skin")
        background = f.get("background")
        if not adjectives and not details:
            return with_article(f"{background} background") if background else "a face"
        text = with_article(" ".join(adjectives + ["face"]))
        if details:
            text += " with " + (details[0] if len(details) == 1 else
                                ", ".join(details[:-1]) + " and " + details[-1])
        if background:
            text += f" on {with_article(background + ' background')}"
        return text


def caption(**facts: str) -> FaceCaption:
    return FaceCaption(tuple(sorted(facts.items())))


def facts_of(faces: FaceBatch, i: int) -> dict[str, str]:
    """Every attribute of face i that a picture shows (hair colour only when there is hair)."""
    facts = faces.describe(i)
    if facts["hair_style"] == "bald":
        del facts["hair_colour"]
    return facts


def caption_for(faces: FaceBatch, i: int, rng: random.Random,
                focus: tuple[str, ...] = ()) -> FaceCaption:
    """One random true caption of face i naming one to four of its attributes (one of them
    from ``focus`` when given)."""
    facts = facts_of(faces, i)
    names = list(facts)
    k = rng.choice((1, 1, 1, 2, 2, 3, 4))
    chosen = rng.sample(names, k)
    named = [a for a in focus if a in facts]
    if named and not set(named) & set(chosen):
        chosen[0] = rng.choice(named)
    if "hair_colour" in chosen and "hair_style" not in chosen and rng.random() < 0.3:
        chosen.append("hair_style")
    return caption(**{n: facts[n] for n in chosen})


def truth_matrix(specs: list[FaceCaption], faces: FaceBatch) -> torch.Tensor:
    """truth[i, j] = caption j is true of face i (vectorised)."""
    dev = faces.background.device
    ok = torch.ones(len(faces), len(specs), dtype=torch.bool, device=dev)
    for name in ATTRIBUTE_NAMES:
        want = torch.tensor([-1 if s.get(name) is None else VALUES[name].index(s.get(name))
                             for s in specs], device=dev)
        have = getattr(faces, name)[:, None]
        ok &= (want[None] < 0) | (have == want[None])
        if name == "hair_colour":  # a colour of hair is only true where there is hair
            ok &= (want[None] < 0) | (faces.hair_style[:, None] != BALD)
    return ok.float()


def attribute_prompts() -> dict[str, list[str]]:
    """One prompt per value of every attribute (zero-shot classification, the judge's names)."""
    return {name: [caption(**{name: v}).text() for v in VALUES[name]]
            for name in ATTRIBUTE_NAMES}


def vocabulary() -> list[str]:
    """Every word a portrait caption can hold: the face CLIP's whole vocabulary (its folder
    lists it, ``CoralClip.vocabulary``)."""
    texts = [caption(**{name: v}).text() for name in ATTRIBUTE_NAMES for v in VALUES[name]]
    texts += [caption(mouth="neutral", hair_style="long", beard="none", glasses="none",
                      background="red").text()]
    return words_of(texts)
