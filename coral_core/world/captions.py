"""Captions at several levels of detail, as structured specs that can be checked against a
scene, so contrastive training knows every caption that is true of an image."""
from __future__ import annotations

import random
from dataclasses import dataclass

from .scene import BG_NAMES, MAX_OBJECTS, OBJ_NAMES, SHAPES, SceneBatch


@dataclass(frozen=True)
class CaptionSpec:
    """"There is a <colour> <shape> [on a <bg> background]"; None fields match anything."""

    colour: str | None = None
    shape: str | None = None
    background: str | None = None
    second: tuple[str, str] | None = None  # a second (colour, shape), for two-object captions

    def text(self) -> str:
        """The caption in words ("a red circle and a blue square on an orange background")."""
        def obj(colour: str | None, shape: str | None) -> str:
            return with_article(f"{colour} {shape or 'shape'}" if colour else shape or "shape")

        parts = []
        if self.colour or self.shape:
            parts.append(obj(self.colour, self.shape))
        if self.second:
            parts.append("and " + obj(*self.second))
        if self.background:
            bg = with_article(f"{self.background} background")
            parts.append(f"on {bg}" if parts else bg)
        return " ".join(parts)

    def true_of(self, scenes: SceneBatch, i: int) -> bool:
        if self.background and BG_NAMES[int(scenes.background[i])] != self.background:
            return False
        objs = [(OBJ_NAMES[int(scenes.colour[i, k])], SHAPES[int(scenes.shape[i, k])])
                for k in range(MAX_OBJECTS) if bool(scenes.present[i, k])]

        def has(colour: str | None, shape: str | None) -> bool:
            return any((colour is None or c == colour) and (shape is None or s == shape)
                       for c, s in objs)

        if (self.colour or self.shape) and not has(self.colour, self.shape):
            return False
        return not (self.second and not has(*self.second))


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption_for(scenes: SceneBatch, i: int, rng: random.Random) -> CaptionSpec:
    """One random true caption of scene i, at a random level of detail: colour, shape, background,
    colour+shape, colour+background, colour+shape+background, two objects, two objects+background.
    The levels that name a colour together with a place are what teach binding, because the
    twin scenes of ``scene.swap_*`` make the same words false."""
    ks = [k for k in range(MAX_OBJECTS) if bool(scenes.present[i, k])]
    k = rng.choice(ks)
    colour, shape = OBJ_NAMES[int(scenes.colour[i, k])], SHAPES[int(scenes.shape[i, k])]
    bg = BG_NAMES[int(scenes.background[i])]
    level = rng.randrange(8)
    if level == 0:
        return CaptionSpec(colour=colour)
    if level == 1:
        return CaptionSpec(shape=shape)
    if level == 2:
        return CaptionSpec(background=bg)
    if level == 3:
        return CaptionSpec(colour=colour, shape=shape)
    if level == 4:
        return CaptionSpec(colour=colour, background=bg)
    if level == 5 or len(ks) == 1:
        return CaptionSpec(colour=colour, shape=shape, background=bg)
    other = ks[1 - ks.index(k)]
    second = (OBJ_NAMES[int(scenes.colour[i, other])], SHAPES[int(scenes.shape[i, other])])
    return CaptionSpec(colour=colour, shape=shape, second=second,
                       background=bg if level == 7 else None)


def full_caption(scenes: SceneBatch, i: int) -> str:
    ks = [k for k in range(MAX_OBJECTS) if bool(scenes.present[i, k])]
    objs = [(OBJ_NAMES[int(scenes.colour[i, k])], SHAPES[int(scenes.shape[i, k])]) for k in ks]
    second = objs[1] if len(objs) > 1 else None
    return CaptionSpec(objs[0][0], objs[0][1], BG_NAMES[int(scenes.background[i])],
                       second).text()


ATTRIBUTE_PROMPTS = {
    "object colour": [with_article(f"{c} shape") for c in OBJ_NAMES],
    "object shape": [with_article(s) for s in SHAPES],
    "background colour": [with_article(f"{b} background") for b in BG_NAMES],
}


def words_of(texts: list[str]) -> list[str]:
    """Every word of ``texts`` as the prompt checks read words (lower-cased, without
    punctuation: fit.bare_words), sorted."""
    from ..editing.fit import bare_words

    return sorted({w for t in texts for w in bare_words(t.split())} - {""})


def vocabulary() -> list[str]:
    """Every word a caption of this world can hold: the demo CLIP's whole vocabulary (its
    folder lists it, ``CoralClip.vocabulary``)."""
    texts = [CaptionSpec(c, s, b, (c, s)).text() for c in OBJ_NAMES for s in SHAPES
             for b in BG_NAMES]
    texts += [CaptionSpec(colour=c).text() for c in OBJ_NAMES]
    texts += [p for prompts in ATTRIBUTE_PROMPTS.values() for p in prompts]
    return words_of(texts)
