"""The segment catalogue as edits see it: connected pieces for any cluster map (checked
against a plain flood fill), fragments and border strips joining a neighbour, the
catalogue's identity, its file and cache, and how features become segments."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coral_core.editing.catalogue import (CATALOGUE_RESOLUTION, SegmentCatalogue,
                                          absorb_fragments, catalogue_for, connected_pieces,
                                          default_cache_dir, default_layer)
from coral_core.errors import EditMismatchError


def _flood_sizes(cluster_map: list[list[int]]) -> list[int]:
    """Sizes of the 8-connected pieces of equal labels, largest first (the test's oracle)."""
    h, w = len(cluster_map), len(cluster_map[0])
    seen = [[False] * w for _ in range(h)]
    sizes = []
    for y in range(h):
        for x in range(w):
            if seen[y][x]:
                continue
            stack, size, label = [(y, x)], 0, cluster_map[y][x]
            seen[y][x] = True
            while stack:
                cy, cx = stack.pop()
                size += 1
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and not seen[ny][nx] \
                                and cluster_map[ny][nx] == label:
                            seen[ny][nx] = True
                            stack.append((ny, nx))
            sizes.append(size)
    return sorted(sizes, reverse=True)


def _one_hot(cluster_map: list[list[int]], k: int) -> torch.Tensor:
    labels = torch.tensor(cluster_map)
    return torch.nn.functional.one_hot(labels, k).permute(2, 0, 1)[None].float()


@settings(max_examples=120, deadline=None)
@given(st.integers(2, 7), st.integers(1, 3), st.integers(1, 8), st.data())
def test_pieces_are_the_connected_parts_of_each_cluster_largest_first(side, k, limit, data):
    cluster_map = [[data.draw(st.integers(0, k - 1)) for _ in range(side)]
                   for _ in range(side)]
    pieces = connected_pieces(_one_hot(cluster_map, k), limit)
    assert pieces.shape == (1, limit, side, side)
    assert torch.equal(pieces.sum(1), torch.ones(1, side, side))  # each pixel in one slot
    sizes = [int(s) for s in pieces.flatten(2).sum(2)[0].tolist()]
    expected = _flood_sizes(cluster_map)
    kept = expected[:limit - 1] + [sum(expected[limit - 1:])] if len(expected) >= limit \
        else expected + [0] * (limit - len(expected))
    assert sizes == kept
    labels = torch.tensor(cluster_map)
    for slot in range(min(limit - 1, len(expected))):  # a piece lies in one cluster
        assert len(labels[pieces[0, slot] > 0].unique()) == 1


def test_cells_touching_only_at_a_corner_are_one_piece() -> None:
    cluster_map = [[1, 0, 0],
                   [0, 1, 0],
                   [0, 0, 1]]
    pieces = connected_pieces(_one_hot(cluster_map, 2), 4)
    assert pieces.flatten(2).sum(2)[0].tolist() == [6, 3, 0, 0]
    assert pieces[0, 1].diagonal().tolist() == [1, 1, 1]


def test_equal_pieces_are_ordered_by_position_every_time() -> None:
    cluster_map = [[1, 0, 1],
                   [0, 0, 0],
                   [1, 0, 1]]
    pieces = connected_pieces(_one_hot(cluster_map, 2), 6)
    assert pieces.flatten(2).sum(2)[0].tolist() == [5, 1, 1, 1, 1, 0]
    # ties go by the piece's label (its largest cell index), lower first: top left first
    assert [int(pieces[0, s].flatten().nonzero()[0]) for s in range(1, 5)] == [0, 2, 6, 8]
    batch = torch.cat([_one_hot(cluster_map, 2)] * 2)
    assert torch.equal(connected_pieces(batch, 6)[1], pieces[0])


def test_a_fragment_joins_the_neighbour_it_shares_most_border_with() -> None:
    labels = torch.tensor([[1, 1, 1, 1],
                           [1, 1, 2, 2],
                           [2, 7, 2, 2],
                           [2, 2, 2, 2]])
    out = absorb_fragments(labels, min_cells=2)
    assert int(out[2, 1]) == 2  # 7 touches 1 on two cells, 2 on six
    assert int((out == 7).sum()) == 0


def test_fragments_merge_smallest_first_and_ties_go_to_the_lower_label() -> None:
    labels = torch.tensor([[5, 5, 9, 9],
                           [5, 5, 9, 9],
                           [5, 3, 9, 9],
                           [5, 5, 9, 9]])
    # 3 (one cell, inside 5's side) joins 5; then nothing smaller than 2 cells is left
    assert absorb_fragments(labels, 2).unique().tolist() == [5, 9]
    tie = torch.tensor([[4, 4, 4, 4, 4],
                        [4, 4, 4, 4, 4],
                        [4, 8, 6, 8, 8],
                        [8, 8, 8, 8, 8],
                        [8, 8, 8, 8, 8]])
    merged = absorb_fragments(tie, 2)
    assert int(merged[2, 2]) == 8  # 6 touches 4 on three cells and 8 on five
    # an equal count of shared cells goes to the lower label
    even = torch.tensor([[4, 4, 4], [4, 6, 8], [8, 8, 8]])
    assert int(absorb_fragments(even, 2)[1, 1]) == 4


def test_a_thin_strip_along_the_border_joins_its_neighbour_but_a_solid_part_stays() -> None:
    labels = torch.ones(8, 8, dtype=torch.long)
    labels[2:6, 7] = 2                # one cell wide along the right border: no interior
    labels[2:5, 0:3] = 3              # 3x3 at the left border: it has an interior
    out = absorb_fragments(labels, min_cells=2)
    assert int((out == 2).sum()) == 0 and int((out == 3).sum()) == 9


def test_a_piece_of_exactly_the_minimum_size_stays() -> None:
    labels = torch.ones(6, 6, dtype=torch.long)
    labels[2, 2:4] = 4                # two cells, away from the border
    labels[4, 4] = 5                  # one cell
    out = absorb_fragments(labels, min_cells=2)
    assert int((out == 4).sum()) == 2 and int((out == 5).sum()) == 0


def test_a_picture_of_one_piece_is_left_alone() -> None:
    labels = torch.full((4, 4), 3)
    assert torch.equal(absorb_fragments(labels, 100), labels)


def _catalogue(k: int = 3, fingerprint: str = "fp") -> SegmentCatalogue:
    centres = torch.nn.functional.normalize(torch.eye(k, 4), dim=1)
    return SegmentCatalogue(centres, layer=2, fingerprint=fingerprint)


def test_a_catalogue_s_id_names_what_changes_its_segments() -> None:
    cat = _catalogue()
    assert cat.id().startswith("fp-L2-K3-") and cat.id() == _catalogue().id()
    assert cat.with_pieces(12).id() == cat.id() + "-P12"
    assert cat.with_pieces(12, absorb=3).id() == cat.id() + "-P12-A3"
    assert cat.with_pieces(0, absorb=3).id() == cat.id()  # absorb acts on pieces only
    moved = SegmentCatalogue(cat.centres.flip(0), 2, "fp")
    assert moved.id() != cat.id()
    assert cat.count == 3 and cat.with_pieces(12).count == 12 and cat.k == 3


def test_features_become_one_hot_segments_by_the_nearest_centre() -> None:
    cat = _catalogue(k=3)
    f = torch.zeros(1, 4, 2, 2)
    f[0, 0, 0, 0] = 2.0          # along centre 0 (length does not matter)
    f[0, 1, 0, 1] = 0.1          # along centre 1
    f[0, 2, 1, :] = 1.0          # along centre 2
    f[0, 3, 1, 1] = 0.5          # and a little off it
    seg = cat.segments([torch.zeros(1, 4, 2, 2), f])  # the catalogue reads layer 2
    assert seg.argmax(1)[0].tolist() == [[0, 1], [2, 2]]
    assert torch.equal(seg.sum(1), torch.ones(1, 2, 2))
    pieces = cat.with_pieces(4).segments([torch.zeros(1, 4, 2, 2), f])
    assert pieces.shape == (1, 4, 2, 2)


def test_the_catalogue_file_round_trips_and_the_cache_refuses_another_generator(
        tmp_path) -> None:
    G = SimpleNamespace(fingerprint=lambda: "fp", img_resolution=64,
                        conv_layers=[SimpleNamespace(index=i, resolution=r)
                                     for i, r in enumerate((4, 8, 8, 16, 16, 32, 32, 64), 1)])
    assert default_layer(G) == 7  # the last conv layer at 32 px
    path = tmp_path / "catalogue-fp-L7-K3.safetensors"
    cat = SegmentCatalogue(_catalogue().centres, 7, "fp")
    cat.save(path)
    loaded = catalogue_for(G, 3, tmp_path)
    assert torch.equal(loaded.centres, cat.centres) and loaded.layer == 7
    SegmentCatalogue(cat.centres, 7, "other").save(path)
    with pytest.raises(EditMismatchError, match="another generator"):
        catalogue_for(G, 3, tmp_path)
    small = SimpleNamespace(img_resolution=16, conv_layers=G.conv_layers[:5])
    assert CATALOGUE_RESOLUTION == 32 and default_layer(small) == 5


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CORAL_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("CORAL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "coralstyleclip" / "catalogues"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "coralstyleclip" / "catalogues"


def test_segments_shrink_by_area_or_by_presence_and_grow_by_nearest() -> None:
    from coral_core.editing.catalogue import resize_segments

    seg = torch.zeros(1, 1, 4, 4)
    seg[..., 0, 0] = 1.0
    assert resize_segments(seg, 4) is seg
    area = resize_segments(seg, 2)
    assert area[0, 0].tolist() == [[0.25, 0.0], [0.0, 0.0]]
    assert torch.equal(area, resize_segments(seg, 2, "area"))
    assert resize_segments(seg, 2, "max")[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    grown = resize_segments(seg, 8, "max")  # growing: every pool copies cells
    assert grown[0, 0, :2, :2].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert float(grown.sum()) == 4.0 and torch.equal(grown, resize_segments(seg, 8))
    wide = torch.zeros(1, 3, 6, 6)
    assert resize_segments(wide, 3).shape == (1, 3, 3, 3)


def test_pieces_merge_their_fragments_when_asked() -> None:
    seg = torch.zeros(1, 2, 8, 8)
    seg[0, 0] = 1
    seg[0, 0, 0, 7] = 0
    seg[0, 1, 0, 7] = 1          # a one-cell corner fragment of cluster 1
    seg[0, 0, 3:6, 3:6] = 0
    seg[0, 1, 3:6, 3:6] = 1      # a real part of cluster 1
    merged = connected_pieces(seg, 3, absorb=2)
    assert merged.flatten(2).sum(2)[0].tolist() == [55, 9, 0]
    strip = torch.zeros(1, 2, 8, 8)
    strip[0, 0] = 1
    strip[0, 0, 2:6, 7] = 0
    strip[0, 1, 2:6, 7] = 1      # a thin strip on the border: merged even at absorb 1
    assert connected_pieces(strip, 3, absorb=1).flatten(2).sum(2)[0].tolist() == [64, 0, 0]
    assert connected_pieces(strip, 3).flatten(2).sum(2)[0].tolist() == [60, 4, 0]
    half = torch.full((1, 2, 4, 4), 0.5)  # no cluster holds these cells: none is a member
    assert connected_pieces(half, 2).flatten(2).sum(2)[0].tolist() == [16, 0]


def test_a_fragment_joins_the_piece_it_borders_most_not_the_largest() -> None:
    labels = torch.tensor([[1, 1, 1, 1, 1, 1],
                           [1, 1, 1, 1, 1, 1],
                           [1, 1, 1, 1, 1, 1],
                           [1, 1, 1, 2, 2, 2],
                           [1, 1, 1, 2, 9, 2],
                           [1, 1, 1, 2, 2, 2]])
    assert int(absorb_fragments(labels, 2)[4, 4]) == 2
    two = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]])  # one piece and a fragment
    assert absorb_fragments(two, 2).unique().tolist() == [1]


def test_a_solid_part_at_the_border_is_found_wherever_it_sits() -> None:
    for top in range(0, 4):
        labels = torch.ones(8, 8, dtype=torch.long)
        labels[top:top + 3, 0:3] = 3  # 3x3, touching the left border
        assert int((absorb_fragments(labels, 2) == 3).sum()) == 9, top
    for name, cells in (("top", (0, slice(2, 6))), ("bottom", (7, slice(2, 6))),
                        ("left", (slice(2, 6), 0)), ("right", (slice(2, 6), 7))):
        labels = torch.ones(8, 8, dtype=torch.long)
        labels[cells] = 4
        assert int((absorb_fragments(labels, 2) == 4).sum()) == 0, name


def test_a_catalogue_id_keeps_its_form_for_the_files_that_name_it() -> None:
    import re

    assert re.fullmatch(r"fp-L2-K3-[0-9a-f]{12}", _catalogue().id())


def test_segments_always_have_one_channel_per_cluster_and_pieces_absorb() -> None:
    cat = _catalogue(k=3)
    f = torch.zeros(1, 4, 4, 4)
    f[0, 0] = 1.0  # every pixel nearest centre 0
    seg = cat.segments([torch.zeros(1, 4, 4, 4), f])
    assert seg.shape == (1, 3, 4, 4) and float(seg[0, 0].sum()) == 16
    f[0, 0, 0, 3], f[0, 1, 0, 3] = 0.0, 1.0  # a one-cell corner of cluster 1
    pieces = cat.with_pieces(3, absorb=2).segments([torch.zeros(1, 4, 4, 4), f])
    assert pieces.flatten(2).sum(2)[0].tolist() == [16, 0, 0]


def test_a_catalogue_is_built_once_per_generator_and_then_read(G, tmp_path, monkeypatch) -> None:
    from coral_core.editing import catalogue as module

    built = []
    real = module.build_catalogue

    def counting(*args, **kw):
        built.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(module, "build_catalogue", counting)
    first = catalogue_for(G, 3, tmp_path)
    assert built == [{"k": 3, "layer": default_layer(G)}] and first.k == 3
    files = list(tmp_path.glob("catalogue-*.safetensors"))
    assert [f.name for f in files] == [f"catalogue-{G.fingerprint()}-L{default_layer(G)}"
                                       "-K3.safetensors"]
    again = catalogue_for(G, 3, tmp_path)
    assert len(built) == 1 and torch.equal(again.centres, first.centres)
    monkeypatch.setenv("CORAL_CACHE_DIR", str(tmp_path / "env"))
    catalogue_for(G, 3)
    assert len(built) == 2 and list((tmp_path / "env").glob("catalogue-*"))
    def refuse(self, path):
        raise OSError("read-only")

    monkeypatch.setattr(SegmentCatalogue, "save", refuse)
    assert catalogue_for(G, 2, tmp_path / "ro").k == 2  # a cache it cannot write: a rebuild
