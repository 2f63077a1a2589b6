"""Where an image shows what a prompt names: the text read for it, the hidden picture, and the
piece chosen, with a stand-in CLIP whose score of any text is how red the picture is (so the
red piece is "the thing named")."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from coral_core.editing.fit import MIN_REACH
from coral_core.editing.locate import MAX_NAMED_SHARE, hidden, named_pieces, named_text
from coral_core.editing.prior import SampleBank

RES, CELLS = 32, 16  # image pixels, catalogue cells


class RednessClip:
    """Every text embeds as (1, 0); an image as its mean redness against the rest."""

    def encode_text(self, prompts):
        return torch.tensor([[1.0, 0.0]] * len(prompts))

    def encode_image(self, img, as_displayed=True):
        red = (img[:, 0] - img[:, 1:].mean(1)).clamp_min(0).mean((1, 2))
        return F.normalize(torch.stack([red, torch.full_like(red, 0.2)], 1), dim=-1)


def _bank(spread: float) -> SampleBank:
    """Two samples scoring ``spread`` and -``spread`` for any text: with top 1, the text's
    range on the bank is ``spread``."""
    return SampleBank(torch.zeros(2, 4), torch.tensor([[spread, 0.0], [-spread, 0.0]]), "g", "c")


BANK = _bank(0.3)  # a piece is named when hiding it takes away 0.15 or more


def _named(img, segs, prompt="a yellow circle", min_share=0.02, bank=BANK):
    return named_pieces(RednessClip(), img, segs, prompt, min_share, bank, 1)


@pytest.mark.parametrize("prompt, text", [
    ("a yellow circle", "a circle"),
    ("an orange triangle", "a triangle"),  # the article suits the word now after it
    ("a yellow orange", "an orange"),
    ("a face with blond hair", None),  # two things: a face and its hair
    ("a smiling face", "a face"),
    ("long hair", "hair"),
    ("a red circle on a green background", "a circle"),
    ("a green background on a red circle", "a circle"),  # the first clause that has one
    ("a face with a beard", None),     # a detail added: nothing to find
    ("a face with glasses", None),
    ("a green background", None),      # what every picture has
    ("a dog", None),                   # one content word
    ("circle", None),
    ("a red circle with", None),       # ends on a function word
    ("a red circle with.", None),      # ... whatever the punctuation
    ("a face with glasses on a red circle", "a circle"),  # the first clause that has one
    ("a big red circle", None),        # two words say what it should become
])
def test_the_text_read_is_the_thing_without_what_it_should_become(prompt, text) -> None:
    assert named_text(prompt) == text


def _scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A grey picture with a red square (piece 1) and a blue square (piece 2) on the ground
    (piece 0, most of the picture); a one-cell sliver (piece 3) too small to hide."""
    img = torch.full((1, 3, RES, RES), 0.0)
    segs = torch.zeros(1, 4, CELLS, CELLS)
    segs[0, 0] = 1
    for k, (y, x, colour) in enumerate([(2, 2, (1.0, -1.0, -1.0)), (9, 9, (-1.0, -1.0, 1.0))]):
        segs[0, 0, y:y + 4, x:x + 4] = 0
        segs[0, k + 1, y:y + 4, x:x + 4] = 1
        img[0, :, 2 * y:2 * y + 8, 2 * x:2 * x + 8] = torch.tensor(colour)[:, None, None]
    segs[0, 0, 15, 0] = 0
    segs[0, 3, 15, 0] = 1
    return img, segs


def test_the_piece_whose_hiding_lowers_the_score_most_is_named() -> None:
    img, segs = _scene()
    assert _named(img, segs) == [1]


def test_a_prompt_naming_nothing_to_find_names_no_piece() -> None:
    img, segs = _scene()
    assert _named(img, segs, "a green background") == [None]


def test_no_piece_is_named_where_hiding_none_lowers_the_score() -> None:
    img, segs = _scene()
    img[:, 0] = -1.0  # nothing red anywhere
    assert _named(img, segs) == [None]


def test_the_ground_and_slivers_are_never_hidden() -> None:
    img, segs = _scene()
    ground = float(segs[0, 0].mean())
    assert ground >= MAX_NAMED_SHARE
    img[0, 0, 0, 0] = 1.0  # a little red in the ground and in the sliver
    img[0, 0, 30:, 0:2] = 1.0
    img[0, :, 4:12, 4:12] = -1.0  # the red square painted out: no piece holds the red now
    assert _named(img, segs) == [None]
    # the sliver is a candidate once the least share allows it
    assert _named(img, segs, min_share=0.0, bank=_bank(1e-3)) == [3]


def test_each_image_gets_its_own_piece() -> None:
    img, segs = _scene()
    swapped = img.clone()
    swapped[0, :, 4:12, 4:12], swapped[0, :, 18:26, 18:26] = img[0, :, 18:26, 18:26], \
        img[0, :, 4:12, 4:12]
    both = _named(torch.cat([img, swapped]), segs.expand(2, -1, -1, -1))
    assert both == [1, 2]


def test_a_hidden_piece_takes_the_colour_round_it_and_nothing_else_changes() -> None:
    """The red square (cells 2-5, pixels 4-11) and one cell round it (pixels 2-13) take the
    median colour of the two-cell ring beyond (pixels 0-1 and 14-17: the ground's 0.25, not
    the lighter ground further down or the band just round the square)."""
    img, segs = _scene()
    img[0] = torch.where(img[0] == 0, torch.full_like(img[0], 0.25), img[0])
    img[0, :, 20:, :] = 0.5        # the lower ground is lighter, outside the ring
    img[0, :, 0:2, :] = 0.1        # the ring's top row is darker: the median stays 0.25
    img[0, :, 2:4, 2:14] = 0.9     # a band one cell round the square: hidden with it
    out = hidden(img[0], segs[0, 1])
    grown = torch.zeros(RES, RES, dtype=torch.bool)
    grown[2:14, 2:14] = True
    assert torch.equal(out[:, grown], torch.full((3, int(grown.sum())), 0.25))
    assert torch.equal(out[:, ~grown], img[0][:, ~grown])
    assert torch.equal(hidden(img[0], torch.ones(CELLS, CELLS)), img[0])  # no ring: as it was


def test_a_piece_is_named_only_if_hiding_it_takes_away_half_the_text_s_range() -> None:
    img, segs = _scene()
    clip = RednessClip()
    drop = float((clip.encode_image(img) - clip.encode_image(hidden(img[0], segs[0, 1])[None]))
                 @ torch.tensor([1.0, 0.0]))
    wide = drop / MIN_REACH  # the range at which the drop is exactly half of it
    at = _bank(wide * 0.999)
    past = _bank(wide * 1.001)
    assert _named(img, segs, bank=at) == [1]
    assert _named(img, segs, bank=past) == [None]
    assert _named(img, segs, bank=None) == [None]  # nothing to measure by
