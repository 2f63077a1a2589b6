"""Outline rings and border strips in the segment catalogue: thin clusters where two parts meet
are handed to the parts beside them, cell by cell, so that no edit stops short of an edge;
thin parts inside one part, and every solid part, are left as they are."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from coral_core.editing.catalogue import SegmentCatalogue, dissolve_boundaries
from coral_core.editing.presets import preset_config

BG, DISC, RING, EYE = 0, 1, 2, 3


def _sim_for(ids: torch.Tensor, k: int, lean: dict[int, torch.Tensor] | None = None
             ) -> torch.Tensor:
    """Similarities [1, k, h, w]: 1 to a cell's own cluster, 0.5 to any other, and for the
    cells marked in ``lean`` (cluster -> mask) 0.8 to that cluster."""
    sim = 0.5 + 0.5 * F.one_hot(ids, k).permute(2, 0, 1).float()
    for cluster, mask in (lean or {}).items():
        sim[cluster][mask] = 0.8
    return sim[None]


def _disc_with_ring(size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A background, a solid square 'disc' in the middle and a two-cell ring between them:
    the ring's outer cells lean to the background, its inner cells to the disc."""
    ids = torch.full((size, size), BG)
    ids[3:13, 3:13] = RING
    ids[5:11, 5:11] = DISC
    outer = torch.zeros(size, size, dtype=torch.bool)
    outer[3:13, 3:13] = True
    outer[4:12, 4:12] = False
    inner = (ids == RING) & ~outer
    return ids, outer, inner


def test_a_ring_between_two_parts_is_shared_out_by_likeness() -> None:
    ids, outer, inner = _disc_with_ring()
    out = dissolve_boundaries(ids[None], _sim_for(ids, 4, {BG: outer, DISC: inner}))[0]
    assert not bool((out == RING).any())
    assert bool((out[outer] == BG).all()) and bool((out[inner] == DISC).all())
    keep = ids != RING
    assert torch.equal(out[keep], ids[keep])  # the parts themselves do not move


def test_an_eye_inside_a_face_stays_its_own_part() -> None:
    ids = torch.full((16, 16), BG)
    ids[3:13, 3:13] = DISC  # the background round it: three cells wide, a part
    ids[6:8, 5:10] = EYE  # thin (two cells high) but inside one part only
    out = dissolve_boundaries(ids[None], _sim_for(ids, 4))[0]
    assert torch.equal(out, ids)


def test_a_strip_along_the_picture_s_border_joins_the_part_beside_it() -> None:
    ids = torch.full((12, 12), BG)
    ids[:, 0:2] = RING          # two cells wide down the left border: a frame, not a part
    ids[0:3, 2] = RING          # with a bulge that gives it one cell of inside
    out = dissolve_boundaries(ids[None], _sim_for(ids, 3))[0]
    assert bool((out == BG).all())


def test_a_solid_part_at_the_border_stays() -> None:
    ids = torch.full((12, 12), BG)
    ids[0:5, 0:5] = DISC
    out = dissolve_boundaries(ids[None], _sim_for(ids, 3))[0]
    assert torch.equal(out, ids)


def test_rings_side_by_side_go_together() -> None:
    ids = torch.full((16, 16), BG)
    ids[3:13, 3:13] = RING
    ids[4:12, 4:12] = EYE  # a second one-cell ring, of another cluster, inside the first
    ids[5:11, 5:11] = DISC
    out = dissolve_boundaries(ids[None], _sim_for(ids, 4))[0]
    assert set(out.unique().tolist()) == {BG, DISC}


@settings(max_examples=60, deadline=None)
@given(st.integers(6, 12), st.integers(2, 4), st.data())
def test_only_thin_cells_move_and_only_to_a_part_that_was_there(side, k, data) -> None:
    cells = data.draw(st.lists(st.integers(0, k - 1), min_size=side * side,
                               max_size=side * side))
    ids = torch.tensor(cells).view(1, side, side)
    sim = torch.rand(1, k, side, side, generator=torch.Generator().manual_seed(side * k))
    out = dissolve_boundaries(ids, sim)
    assert out.shape == ids.shape and out.dtype == ids.dtype
    assert set(out.unique().tolist()) <= set(ids.unique().tolist())
    moved = out != ids
    if bool(moved.any()):
        # a moved cell took a cluster from a cell that did not move (a solid part)
        kept = set(ids[~moved].tolist()) if bool((~moved).any()) else set()
        assert set(out[moved].tolist()) <= kept
    assert torch.equal(dissolve_boundaries(ids, sim), out)  # deterministic


def test_the_catalogue_dissolves_when_asked_and_says_so_in_its_id() -> None:
    centres = F.normalize(torch.eye(3, 4), dim=1)
    cat = SegmentCatalogue(centres, layer=1, fingerprint="fp")
    ids = torch.full((12, 12), 0)
    ids[:, 0:2] = 2  # a frame along the left border
    feats = [F.one_hot(ids, 4).permute(2, 0, 1)[None].float()]
    plain = cat.segments(feats)
    dissolved = cat.with_dissolve(True).segments(feats)
    assert float(plain[0, 2].sum()) == 24 and float(dissolved[0, 2].sum()) == 0
    assert plain.shape == dissolved.shape == (1, 3, 12, 12)
    assert torch.equal(dissolved[0, 0], torch.ones(12, 12))  # the frame joined the background
    assert cat.with_dissolve(True).id() == cat.id() + "-D"
    assert cat.with_dissolve(True).with_pieces(4, 3).dissolve
    assert cat.with_pieces(4, 3).with_dissolve(True).id() == cat.id() + "-P4-A3-D"


def test_the_library_dissolves_and_the_paper_preset_does_not() -> None:
    assert preset_config(prompt="a red hat").dissolve_boundaries is True
    assert preset_config("paper", prompt="a red hat").dissolve_boundaries is False
