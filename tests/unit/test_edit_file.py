"""An edit as a user's file and a user's object: what survives a save and a load, what a file
with damaged or tampered metadata gets (a refusal naming the file and the field), and how an
edit answers for its rows, latents, layers and regions. Edits are built by hand
(``handmade_edits``), so every case runs in milliseconds.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import save_file

from coral_core.editing.apply import apply_edits
from coral_core.editing.edit import MAX_CLAUSES, Edit
from coral_core.errors import EditMismatchError, ModelFormatError
from coral_core.formats.integrity import HASH_KEY, write_safetensors
from handmade_edits import can_edit, catalogue_for, scene_check, ss_edit


@pytest.fixture(scope="module")
def ws(G) -> torch.Tensor:
    return G.mapping_ws(G.z_from_seeds([3, 4]))


def _builders(G, ws) -> dict[str, Callable[[], Edit]]:
    def per_image() -> Edit:
        return ss_edit(G, rows=2, latents=ws.clone(), info={"steps": 7})

    def supplied() -> Edit:
        segs = torch.zeros(1, 2, 8, 8)
        segs[:, 0, :4] = 1
        segs[:, 1, 4:] = 1
        return ss_edit(G, k=2, segments=segs, max_layer=5)

    def gated_can() -> Edit:
        e = can_edit(G, catalogue=catalogue_for(G, k=3, layer=4).with_dissolve(True),
                     composite=True)
        e.selector.cluster_gate = torch.tensor([[1.0, 0.0, 1.0]])
        return e

    def chained() -> Edit:
        return ss_edit(G, "a red circle", then=ss_edit(G, "a green background", seed=1),
                       scene_check=scene_check(8), scene_check_clip="abc123")

    return {
        "ss per prompt": lambda: ss_edit(G, composite=True, only_layers=[2, 3]),
        "ss pieces, max pool": lambda: _with_pool(ss_edit(
            G, k=4, catalogue=catalogue_for(G, k=3).with_pieces(4, 2).with_dissolve(True)),
            "max"),
        "ss per image": per_image,
        "ss supplied segments": supplied,
        "can gated": gated_can,
        "can mapper, no masks": lambda: can_edit(G, mapper=True, no_masks=True),
        "chained with a scene check": chained,
    }


def _with_pool(edit: Edit, pool: str) -> Edit:
    edit.selector.pool = pool  # type: ignore[union-attr]
    return edit


def _same_edit(a: Edit, b: Edit) -> None:
    for name in ("variant", "direction_form", "mode", "prompt", "neutral",
                 "generator_fingerprint", "resolution", "num_ws", "w_dim", "max_layer",
                 "only_layers", "no_masks", "composite", "info", "scene_check_clip"):
        assert getattr(a, name) == getattr(b, name), name
    for x, y in ((a.direction.state_dict(), b.direction.state_dict()),
                 (a.selector.state_dict(), b.selector.state_dict())):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert getattr(a.selector, "pool", None) == getattr(b.selector, "pool", None)
    for name in ("segments", "latents"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y))
    assert (a.catalogue is None) == (b.catalogue is None)
    if a.catalogue is not None and b.catalogue is not None:
        assert a.catalogue.id() == b.catalogue.id() and a.catalogue.absorb == b.catalogue.absorb
        assert a.catalogue.dissolve == b.catalogue.dissolve
    ga, gb = (getattr(e.selector, "cluster_gate", None) for e in (a, b))
    assert (ga is None) == (gb is None) and (ga is None or torch.equal(ga, gb))
    assert (a.scene_check is None) == (b.scene_check is None)
    if a.scene_check is not None and b.scene_check is not None:
        ta, tb = a.scene_check.tensors(), b.scene_check.tensors()
        assert all(torch.allclose(ta[k], tb[k]) for k in ta)
    assert (a.then is None) == (b.then is None)
    if a.then is not None and b.then is not None:
        _same_edit(a.then, b.then)


@pytest.mark.parametrize("kind", ["ss per prompt", "ss pieces, max pool", "ss per image",
                                  "ss supplied segments", "can gated", "can mapper, no masks",
                                  "chained with a scene check"])
def test_an_edit_loads_as_it_was_saved_and_applies_the_same(G, ws, tmp_path: Path,
                                                             kind: str) -> None:
    edit = _builders(G, ws)[kind]()
    path = edit.save(tmp_path / "e.safetensors")
    loaded = Edit.load(path)
    _same_edit(edit, loaded)
    assert not loaded.direction.training and not loaded.selector.training
    assert not any(p.requires_grad for p in loaded.direction.parameters())
    before = apply_edits(G, ws, [edit]).edited
    after = apply_edits(G, ws, [loaded]).edited
    assert torch.equal(before, after)


def test_an_edit_with_non_finite_numbers_or_too_many_clauses_is_not_saved(G, tmp_path) -> None:
    edit = ss_edit(G)
    edit.direction.delta.data[0, 0, 0] = float("nan")
    with pytest.raises(ModelFormatError, match="non-finite.*diverged"):
        edit.save(tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()
    head = ss_edit(G)
    link = head
    for i in range(MAX_CLAUSES - 1):
        link.then = ss_edit(G, f"clause {i}")
        link = link.then
    head.save(tmp_path / "most.safetensors")  # MAX_CLAUSES clauses in all: kept
    link.then = ss_edit(G, "one too many")
    with pytest.raises(ModelFormatError, match=f"at most {MAX_CLAUSES}"):
        head.save(tmp_path / "many.safetensors")


# ---- damaged and tampered files ----------------------------------------------------------------

def _parts(edit: Edit) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The file's metadata and tensors, as ``Edit.save`` writes them (clauses included)."""
    import tempfile

    from coral_core.formats.integrity import read_safetensors

    with tempfile.TemporaryDirectory() as d:
        path = edit.save(Path(d) / "e.safetensors")
        meta, tensors = read_safetensors(path, "edit")
    meta.pop(HASH_KEY)
    return meta, tensors


def _refusal(tmp_path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    path = write_safetensors(tmp_path / "tampered.safetensors", tensors, meta)
    with pytest.raises(ModelFormatError) as err:
        Edit.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    return message.replace(str(path), "<file>")  # (the folder's name holds the test's name)


def _loads(tmp_path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> Edit:
    return Edit.load(write_safetensors(tmp_path / "fine.safetensors", tensors, meta))


META_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("not an edit", {"format": "coral-catalogue"}, "not a CoralStyleCLIP edit"),
    ("a future version", {"format_version": "3"}, "version '3' is not supported"),
    ("a variant", {"variant": "sss"}, "variant='sss' is not one of"),
    ("a direction form", {"direction": "local"}, "direction='local' is not one of"),
    ("a mode", {"mode": "per_batch"}, "mode='per_batch' is not one of"),
    ("a size that is no number", {"w_dim": "32px"}, "non-integer size"),
    ("no W+ entries", {"num_ws": "0"}, "outside what any StyleGAN2 has"),
    ("65 W+ entries", {"num_ws": "65"}, "outside what any StyleGAN2 has"),
    ("no w width", {"w_dim": "0"}, "outside what any StyleGAN2 has"),
    ("too wide a w", {"w_dim": "8193"}, "outside what any StyleGAN2 has"),
    ("a 3 px image", {"resolution": "3"}, "outside what any StyleGAN2 has"),
    ("a 4097 px image", {"resolution": "4097"}, "outside what any StyleGAN2 has"),
    ("max_layer 0", {"max_layer": "0"}, "max_layer = '0'; expected an integer from 1 to 8"),
    ("max_layer past the W+ entries", {"max_layer": "9"}, "max_layer"),
    ("max_layer true", {"max_layer": "true"}, "max_layer"),
    ("max_layer 1.5", {"max_layer": "1.5"}, "max_layer"),
    ("only_layers empty", {"only_layers": "[]"}, "only_layers"),
    ("only_layers 0", {"only_layers": "[0, 2]"}, "only_layers"),
    ("only_layers past the W+ entries", {"only_layers": "[9]"}, "only_layers"),
    ("only_layers true", {"only_layers": "[true]"}, "only_layers"),
    ("only_layers not a list", {"only_layers": "3"}, "only_layers"),
    ("only_layers too long", {"only_layers": json.dumps([1] * 65)}, "only_layers"),
    ("info a list", {"info": "[1, 2]"}, "info is a list; expected a table"),
    ("a pool", {"segment_pool": "median"}, "segment_pool = 'median'"),
    ("pieces no number", {"catalogue_pieces": "four"}, "catalogue_pieces is not an integer"),
    ("pieces not the selector's", {"catalogue_pieces": "5"}, "selector has 3 segments but "
                                                             "its catalogue gives 5"),
    ("negative pieces", {"catalogue_pieces": "-3"}, "catalogue gives"),
    ("too many pieces", {"catalogue_pieces": "4097"}, "catalogue gives"),
    ("absorb past its bound", {"catalogue_absorb": "4097"}, "catalogue_absorb"),
    ("catalogue layer past the W+ entries", {"catalogue_layer": "9"}, "catalogue_layer"),
    ("clauses empty", {"clauses": "[]"}, "clauses is not a list of 1-7 tables"),
    ("clauses not text", {"clauses": json.dumps([{"prompt": 3}])}, "clauses"),
    ("clauses not tables", {"clauses": json.dumps(["a"])}, "clauses"),
    ("too many clauses", {"clauses": json.dumps([{}] * MAX_CLAUSES)}, "clauses"),
]


@pytest.mark.parametrize("what,change,expect", META_CASES, ids=[c[0] for c in META_CASES])
def test_tampered_metadata_is_refused_naming_the_field(G, tmp_path: Path, what: str,
                                                       change: dict[str, Any],
                                                       expect: str) -> None:
    meta, tensors = _parts(ss_edit(G, max_layer=4, only_layers=[1, 2]))
    meta.update(change)
    assert expect in _refusal(tmp_path, meta, tensors)


@pytest.mark.parametrize("key", ["variant", "direction", "mode", "prompt", "neutral_prompt",
                                 "generator_fingerprint", "resolution", "num_ws", "w_dim"])
def test_a_file_missing_a_required_field_is_refused(G, tmp_path: Path, key: str) -> None:
    meta, tensors = _parts(ss_edit(G))
    del meta[key]
    assert f"lacks ['{key}']" in _refusal(tmp_path, meta, tensors)


def test_the_bounds_themselves_are_accepted(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G))
    meta.update(max_layer="8", only_layers="[1, 8]", catalogue_layer="8",
                catalogue_absorb="4096")
    edit = _loads(tmp_path, meta, tensors)
    assert edit.max_layer == 8 and edit.only_layers == [1, 8]
    assert edit.catalogue is not None and edit.catalogue.layer == 8
    assert edit.catalogue.absorb == 4096
    meta.update(max_layer="1", only_layers="null", catalogue_absorb="")
    edit = _loads(tmp_path, meta, tensors)
    assert edit.max_layer == 1 and edit.only_layers is None and edit.catalogue.absorb == 0
    meta.update(only_layers=json.dumps(list(range(1, 9)) * 8))  # 64 entries: the bound
    assert len(_loads(tmp_path, meta, tensors).only_layers or []) == 64
    del meta["segment_pool"]  # edits before the pool existed: area
    assert _loads(tmp_path, meta, tensors).selector.pool == "area"  # type: ignore[union-attr]


def test_sizes_at_their_bounds_pass_the_size_check(G, tmp_path: Path) -> None:
    """64 W+ entries, 8192 wide, 4 and 4096 px are sizes a StyleGAN2 may have: such a file
    is refused only because its tensors do not fit, not for its sizes."""
    meta, tensors = _parts(ss_edit(G))
    for change in ({"num_ws": "64"}, {"w_dim": "8192"}, {"resolution": "4"},
                   {"resolution": "4096"}, {"num_ws": "1"}, {"w_dim": "1"}):
        m = dict(meta, **change)
        try:
            message = str(_loads(tmp_path, m, tensors))
        except ModelFormatError as exc:
            message = str(exc)
        assert "outside what any StyleGAN2 has" not in message, change


TENSOR_CASES: list[tuple[str, str]] = [
    ("a direction of the wrong shape", "direction tensor does not match its metadata"),
    ("a direction missing", "direction tensor does not match its metadata"),
    ("selector logits of two dimensions", "without [rows, layers, K] selector logits"),
    ("no catalogue and no segments", "neither a catalogue nor segments"),
    ("selector K not the catalogue's", "selector has 4 segments but its catalogue gives 3"),
    ("a NaN", "tensor 'catalogue.centres' holds NaN"),
    ("an infinity", "holds NaN or infinite values"),
    ("a clause's tensors nobody describes", "tensors of clauses ['clause1']"),
]


@pytest.mark.parametrize("what,expect", TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_tensors_that_disagree_with_the_metadata_are_refused(G, tmp_path: Path, what: str,
                                                             expect: str) -> None:
    meta, tensors = _parts(ss_edit(G))
    if what == "a direction of the wrong shape":
        tensors["direction.delta"] = torch.zeros(1, G.num_ws, G.w_dim + 1)
    elif what == "a direction missing":
        del tensors["direction.delta"]
    elif what == "selector logits of two dimensions":
        tensors["selector.logits"] = tensors["selector.logits"][0]
    elif what == "no catalogue and no segments":
        del tensors["catalogue.centres"]
    elif what == "selector K not the catalogue's":
        tensors["selector.logits"] = torch.zeros(1, len(G.conv_layers), 4)
    elif what == "a NaN":
        tensors["catalogue.centres"][0, 0] = float("nan")
    elif what == "an infinity":
        tensors["direction.delta"][0, 0, 0] = float("inf")
    else:
        tensors["clause1.direction.delta"] = tensors["direction.delta"].clone()
    assert expect in _refusal(tmp_path, meta, tensors)


def test_a_direction_that_does_not_fit_its_module_is_refused(G, tmp_path: Path) -> None:
    meta, tensors = _parts(can_edit(G, mapper=True))
    first = next(k for k in tensors if k.startswith("direction.") and tensors[k].ndim == 2)
    tensors[first] = torch.zeros(tensors[first].shape[0] + 1, tensors[first].shape[1])
    assert "direction tensors do not fit its metadata" in _refusal(tmp_path, meta, tensors)


def test_edits_saved_before_w_units_and_spread_apply_with_unit_scales(G, ws, tmp_path) -> None:
    meta, tensors = _parts(ss_edit(G))
    del tensors["direction.scale"]
    old = _loads(tmp_path, meta, tensors)
    assert torch.equal(old.direction.scale, torch.ones(G.w_dim))  # type: ignore[union-attr]
    meta, tensors = _parts(can_edit(G, mapper=True))
    tensors.pop("direction.spread", None)
    mapper = _loads(tmp_path, meta, tensors)
    assert torch.equal(mapper.direction.spread, torch.ones(G.w_dim))  # type: ignore[union-attr]


@pytest.mark.parametrize("damage,expect", [
    ("gate of the wrong width", "cluster gate does not fit its catalogue"),
    ("gate without a catalogue", "cluster gate does not fit its catalogue"),
    ("channels not numbers", "can_channels"),
    ("too many heads", "can_channels"),
])
def test_a_damaged_attention_edit_is_refused(G, tmp_path: Path, damage: str,
                                             expect: str) -> None:
    edit = can_edit(G, catalogue=catalogue_for(G, k=3))
    edit.selector.cluster_gate = torch.ones(1, 3)  # type: ignore[union-attr]
    meta, tensors = _parts(edit)
    if damage == "gate of the wrong width":
        tensors["cluster_gate"] = torch.ones(1, 4)
    elif damage == "gate without a catalogue":
        del tensors["catalogue.centres"]
    elif damage == "channels not numbers":
        meta["can_channels"] = '["32"]'
    else:
        meta["can_channels"] = json.dumps([8] * (G.num_ws + 1))
    assert expect in _refusal(tmp_path, meta, tensors)


SCENE_CASES = ["no stats", "text of two dimensions", "parts of another width", "too many parts",
               "part stats of another length", "a clause index that is no integer",
               "a negative clause index", "coefficients of another size", "no CLIP named",
               "a CLIP name with a slash", "an unknown piece"]


@pytest.mark.parametrize("damage", SCENE_CASES)
def test_a_scene_check_that_does_not_fit_together_is_refused(G, tmp_path: Path,
                                                             damage: str) -> None:
    meta, tensors = _parts(ss_edit(G, scene_check=scene_check(8, parts=3),
                                   scene_check_clip="abc123"))
    t = "scene_check."
    if damage == "no stats":
        del tensors[t + "stats"]
    elif damage == "text of two dimensions":
        tensors[t + "text"] = tensors[t + "text"][None]
    elif damage == "parts of another width":
        tensors[t + "parts"] = torch.zeros(3, 9)
    elif damage == "too many parts":
        tensors[t + "parts"] = torch.zeros(65, 8)
        tensors[t + "part_stats"] = torch.zeros(65, 3)
        tensors[t + "part_coefs"] = torch.zeros(65, 65)
    elif damage == "part stats of another length":
        tensors[t + "part_stats"] = torch.zeros(2, 3)
    elif damage == "a clause index that is no integer":
        tensors[t + "part_stats"][0, 2] = 0.5
    elif damage == "a negative clause index":
        tensors[t + "part_stats"][0, 2] = -1
    elif damage == "coefficients of another size":
        tensors[t + "part_coefs"] = torch.zeros(3, 2)
    elif damage == "no CLIP named":
        meta["scene_check_clip"] = ""
    elif damage == "a CLIP name with a slash":
        meta["scene_check_clip"] = "../abc"
    else:
        tensors[t + "extra"] = torch.zeros(1)
    assert "scene check does not fit together" in _refusal(tmp_path, meta, tensors)


def test_a_scene_check_at_its_bounds_and_without_coefficients_loads(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G, scene_check=scene_check(8, parts=3),
                                   scene_check_clip="a" * 64))
    t = "scene_check."
    del tensors[t + "part_coefs"]  # edits saved before it
    tensors[t + "part_stats"][:, 2] = torch.tensor([0.0, 63.0, 1.0])
    check = _loads(tmp_path, meta, tensors).scene_check
    assert check is not None and check.part_coefs is None
    assert check.part_clauses.tolist() == [0.0, 63.0, 1.0]
    tensors[t + "parts"] = torch.zeros(0, 8)
    tensors[t + "part_stats"] = torch.zeros(0, 3)
    assert _loads(tmp_path, meta, tensors).scene_check.parts.shape == (0, 8)
    meta["scene_check_clip"] = "a" * 65
    assert "scene check" in _refusal(tmp_path, meta, tensors)


def test_an_edit_without_its_hash_loads_only_as_a_version_one_file(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "v2.safetensors"),
              metadata=meta)
    with pytest.raises(ModelFormatError, match="without its content hash"):
        Edit.load(tmp_path / "v2.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "v1.safetensors"),
              metadata=dict(meta, format_version="1"))
    assert Edit.load(tmp_path / "v1.safetensors").prompt == "a red circle"


# ---- an edit's answers ------------------------------------------------------------------------

def test_rows_count_the_images_of_a_per_image_edit(G) -> None:
    assert ss_edit(G).rows() == 1
    assert ss_edit(G, rows=3).rows() == 3
    assert can_edit(G).rows() == 1 and can_edit(G, mapper=True).rows() == 1
    mapped = ss_edit(G, rows=2)
    mapped.direction = can_edit(G, mapper=True).direction
    assert mapped.rows() == 2  # the selector's rows, when the direction is shared


def test_a_per_image_edit_keeps_to_its_latents(G, ws) -> None:
    edit = ss_edit(G, rows=2, latents=ws.clone())
    assert edit.check_latents(ws) is False
    assert edit.check_latents(ws + 5e-6) is False  # the same latents, after a round trip
    with pytest.raises(EditMismatchError, match="trained on 2 particular latents"):
        edit.check_latents(ws + 1e-3)
    with pytest.raises(EditMismatchError, match="transfer"):
        edit.check_latents(ws[:1])
    assert edit.check_latents(ws + 1e-3, transfer=True) is True
    assert ss_edit(G).check_latents(ws) is False  # per prompt: any latents
    with pytest.raises(EditMismatchError, match="holds 2 directions but 3 latents"):
        edit.check_batch(3)
    edit.check_batch(2)
    ss_edit(G).check_batch(5)


def test_one_row_of_a_per_image_edit_is_that_image_s_edit(G, ws) -> None:
    segs = torch.rand(2, 3, 8, 8)
    edit = ss_edit(G, rows=2, segments=segs, latents=ws.clone())
    for bad in (-1, 2):
        with pytest.raises(EditMismatchError, match=f"has 2 rows; index {bad} is out of range"):
            edit.row(bad)
    one = edit.row(1)
    assert one.rows() == 1
    assert torch.equal(one.direction.delta, edit.direction.delta[1:2])  # type: ignore[union-attr]
    assert torch.equal(one.selector.logits, edit.selector.logits[1:2])  # type: ignore[union-attr]
    assert one.latents is not None and torch.equal(one.latents, ws[1:2])
    assert one.segments is not None and torch.equal(one.segments, segs[1:2])
    assert torch.equal(edit.direction.delta, ss_edit(G, rows=2).direction.delta)  # untouched
    single = ss_edit(G)
    assert single.row(0) is single
    alone = apply_edits(G, ws[1:2], [one]).edited
    both = apply_edits(G, ws, [edit]).edited
    assert torch.allclose(alone, both[1:2], atol=1e-5)


def test_one_row_keeps_segments_shared_by_every_image(G, ws) -> None:
    segs = torch.rand(1, 3, 8, 8)
    one = ss_edit(G, rows=2, segments=segs).row(1)
    assert one.segments is not None and torch.equal(one.segments, segs)


def test_the_direction_reaches_every_image(G, ws) -> None:
    edit = ss_edit(G)
    delta = edit.delta(ws)
    assert delta.shape == ws.shape and torch.equal(delta[0], delta[1])
    per_image = ss_edit(G, rows=2)
    assert not torch.equal(per_image.delta(ws)[0], per_image.delta(ws)[1])
    with pytest.raises(EditMismatchError):
        per_image.delta(ws[:1])


def test_an_edit_refuses_another_generator_naming_both(G) -> None:
    from fabricate import random_generator, tiny_config

    other = random_generator(tiny_config(conv_clamp=None), seed=5)
    with pytest.raises(EditMismatchError) as err:
        ss_edit(G).check_generator(other, source="my.safetensors")
    message = str(err.value)
    assert message.startswith("my.safetensors:")
    assert G.fingerprint() in message and other.fingerprint() in message
    ss_edit(G).check_generator(G)


def test_how_far_the_plain_pass_must_run(G) -> None:
    layers = len(G.conv_layers)
    assert ss_edit(G, catalogue=catalogue_for(G, layer=3)).feature_layers_needed(G) == 3
    assert ss_edit(G, segments=torch.rand(1, 3, 8, 8)).feature_layers_needed(G) == 0
    assert can_edit(G).feature_layers_needed(G) == layers
    assert can_edit(G, max_layer=2).feature_layers_needed(G) == 2
    gated = can_edit(G, max_layer=2, catalogue=catalogue_for(G, layer=5))
    assert gated.feature_layers_needed(G) == 2  # no gate: the catalogue is not read
    gated.selector.cluster_gate = torch.ones(1, 3)  # type: ignore[union-attr]
    assert gated.feature_layers_needed(G) == 5
    deep = can_edit(G, max_layer=6, catalogue=catalogue_for(G, layer=5))
    deep.selector.cluster_gate = torch.ones(1, 3)  # type: ignore[union-attr]
    assert deep.feature_layers_needed(G) == 6


def test_supplied_segments_must_match_the_batch(G, ws) -> None:
    _, feats = G.synthesize_with_features(ws)
    shared = ss_edit(G, segments=torch.rand(1, 3, 8, 8))
    assert shared.segments_for(feats).shape == (2, 3, 8, 8)
    own = ss_edit(G, segments=torch.rand(2, 3, 8, 8))
    assert torch.equal(own.segments_for(feats), own.segments)
    with pytest.raises(EditMismatchError, match="segments for 3 images but 2 latents"):
        ss_edit(G, segments=torch.rand(3, 3, 8, 8)).segments_for(feats)


def _layer_weights(G, layer: int, segment: int, k: int = 2) -> torch.Tensor:
    """Selector weights choosing one segment at one layer (1-based), nothing else."""
    w = torch.zeros(1, len(G.conv_layers), k)
    w[0, layer - 1, segment] = 1.0
    return w


def test_the_composite_region_counts_only_the_layers_the_edit_may_use(G, ws) -> None:
    segs = torch.zeros(1, 2, 8, 8)
    segs[:, 0, :, :4] = 1
    segs[:, 1, :, 4:] = 1
    _, feats = G.synthesize_with_features(ws)
    edit = ss_edit(G, k=2, segments=segs, weights=_layer_weights(G, 3, 0), composite=True)
    region = edit.region(G, feats)
    assert region is not None and region.shape == (2, 1, G.img_resolution, G.img_resolution)
    half = G.img_resolution // 2
    assert float(region[..., :half].min()) > 0.99 and float(region[..., half:].max()) < 0.01
    for fields in ({"only_layers": [2, 4]}, {"max_layer": 2}):
        hidden = replace(edit, **fields)
        outside = hidden.region(G, feats)
        assert outside is not None and float(outside.max()) < 0.01, fields
    assert float(replace(edit, max_layer=3).region(G, feats)[..., :half].min()) > 0.99
    assert float(replace(edit, only_layers=[3]).region(G, feats)[..., :half].min()) > 0.99
    assert replace(edit, composite=False).region(G, feats) is None
    assert replace(edit, no_masks=True).region(G, feats) is None


def test_an_attention_edit_s_region_is_its_kept_clusters(G, ws) -> None:
    _, feats = G.synthesize_with_features(ws)
    cat = catalogue_for(G, k=3, layer=4)
    edit = can_edit(G, catalogue=cat, composite=True)
    assert edit.region(G, feats) is None  # no gate: the region is everywhere
    edit.selector.cluster_gate = torch.tensor([[0.0, 1.0, 0.0]])  # type: ignore[union-attr]
    region = edit.region(G, feats)
    segs = cat.segments(feats)
    expect = torch.nn.functional.interpolate(segs[:, 1:2], size=G.img_resolution)
    assert region is not None and torch.allclose(region, expect)
    assert replace(edit, catalogue=None).region(G, feats) is None


def test_masks_follow_the_edit_s_layer_options(G, ws) -> None:
    _, feats = G.synthesize_with_features(ws)
    edit = ss_edit(G, weights=torch.full((1, len(G.conv_layers), 3), 0.4))
    masks = edit.masks(G, feats)
    assert all(m is not None and torch.allclose(m, torch.full_like(m, 0.4)) for m in masks)
    assert all(m is None or float(m.max()) == 0 for m in edit.masks(G, feats, threshold=0.5))
    only = replace(edit, only_layers=[2]).masks(G, feats)
    assert [m is not None for m in only] == [i == 1 for i in range(len(G.conv_layers))]
    full = replace(edit, no_masks=True).masks(G, feats)
    assert all(m is not None and float(m.min()) == 1 for m in full)
    capped = replace(edit, max_layer=3).masks(G, feats)
    assert all(m is None or float(m.max()) == 0 for m in capped[3:])
    can = can_edit(G, catalogue=catalogue_for(G, k=3))
    can.selector.cluster_gate = torch.zeros(1, 3)  # type: ignore[union-attr]
    assert all(m is None or float(m.max()) == 0 for m in can.masks(G, feats))
    can.selector.cluster_gate = torch.ones(1, 3)  # type: ignore[union-attr]
    assert all(m is not None and float(m.max()) > 0 for m in can.masks(G, feats))


def test_the_summary_says_what_a_user_needs(G) -> None:
    edit = ss_edit(G, info={"steps": 5, "warnings": ["w"], "private": 1},
                   then=ss_edit(G, "a green background"))
    summary = edit.summary()
    assert summary == {"prompt": "a red circle", "variant": "ss", "direction": "global",
                       "mode": "per_prompt", "steps": 5, "warnings": ["w"],
                       "clauses": ["a red circle", "a green background"]}
    assert "clauses" not in ss_edit(G).summary()
    assert [e.prompt for e in edit.chain()] == ["a red circle", "a green background"]


# ---- what a user reads ---------------------------------------------------------------------------

def test_refusals_read_in_full(G, ws, tmp_path: Path) -> None:
    """The whole sentence a user gets, for the refusals they meet most."""
    from fabricate import random_generator, tiny_config

    other = random_generator(tiny_config(conv_clamp=None), seed=5)
    with pytest.raises(EditMismatchError) as err:
        ss_edit(G).check_generator(other)
    assert str(err.value) == (
        f"edit: this edit was trained for generator {G.fingerprint()} (32px, 8 W+ entries) but "
        f"the loaded generator is {other.fingerprint()} (32px, 8); load the generator the edit "
        "was made with")
    with pytest.raises(EditMismatchError) as err:
        ss_edit(G, rows=2, latents=ws.clone()).check_latents(ws + 1)
    assert str(err.value) == (
        "this per-image edit was trained on 2 particular latents and these are different ones; "
        "apply it to the latents it was trained on, train a per-prompt edit, or ask to "
        "transfer it (--transfer / the Apply node's 'transfer per-image edit' switch)")
    with pytest.raises(EditMismatchError) as err:
        ss_edit(G, rows=2).check_batch(3)
    assert str(err.value) == ("per-image edit holds 2 directions but 3 latents were given; "
                              "pass the same number of latents, or train a per-prompt edit")
    meta, tensors = _parts(ss_edit(G))
    cases = [
        (dict(meta, format="x"), tensors,
         "not a CoralStyleCLIP edit (no 'coral-edit' metadata)"),
        (dict(meta, format_version="9"), tensors,
         "edit format version '9' is not supported (this version reads 1, 2); update "
         "ComfyUI-CoralStyleCLIP"),
        (dict(meta, segment_pool="x"), tensors,
         "edit metadata segment_pool = 'x'; expected 'area' or 'max'"),
        (meta, dict(tensors, **{"clause2.x": torch.zeros(1)}),
         "tensors of clauses ['clause2'] that the edit's metadata does not describe"),
    ]
    for m, t, expect in cases:
        assert _refusal(tmp_path, m, t) == f"<file>: {expect}"


def test_a_damaged_scene_check_and_gate_are_described_in_full(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G, scene_check=scene_check(8), scene_check_clip="abc"))
    del tensors["scene_check.stats"]
    assert _refusal(tmp_path, meta, tensors).endswith(
        "the edit's scene check does not fit together (expected scene_check.text [D], parts "
        "[P<=64, D], stats [2], part_stats [P, 3], optionally part_coefs [P, P], and a CLIP "
        "fingerprint in scene_check_clip)")
    edit = can_edit(G, catalogue=catalogue_for(G, k=3))
    edit.selector.cluster_gate = torch.ones(1, 3)  # type: ignore[union-attr]
    meta, tensors = _parts(edit)
    tensors["cluster_gate"] = torch.ones(1, 2)
    assert _refusal(tmp_path, meta, tensors).endswith(
        "the edit's cluster gate does not fit its catalogue ([1, K] with the catalogue's K "
        "clusters expected)")


def test_a_file_that_is_no_safetensors_names_the_edit(tmp_path: Path) -> None:
    path = tmp_path / "e.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ModelFormatError) as err:
        Edit.load(path)
    assert str(err.value) == (f"{path}: the safetensors header claims 8 bytes but the file "
                              "holds 2: truncated or not an edit")


def test_fields_of_the_wrong_type_become_one_refusal_naming_the_file(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G))
    del tensors["selector.logits"]
    message = _refusal(tmp_path, meta, tensors)
    assert "selector logits" in message
    meta, tensors = _parts(ss_edit(G))
    tensors["selector.logits"] = torch.zeros(1, 5, 3)  # five layers: this generator has seven
    assert "selector logits of 7 layers" in _refusal(tmp_path, meta, tensors)


def test_selector_tensors_that_do_not_fit_are_refused_not_raised(G, tmp_path: Path) -> None:
    meta, tensors = _parts(can_edit(G))
    meta["can_channels"] = json.dumps([16] * 7)
    message = _refusal(tmp_path, meta, tensors)
    assert "selector tensors do not fit its metadata" in message and "size mismatch" in message
    meta["can_channels"] = json.dumps([32] * 6)
    assert "can_channels lists 6 layers; a generator of 8 W+ entries has 7 conv layers" in \
        _refusal(tmp_path, meta, tensors)
    meta, tensors = _parts(can_edit(G, mapper=True))
    first = next(k for k in tensors if k.startswith("direction.") and tensors[k].ndim == 2)
    tensors[first] = torch.zeros(1, 1)
    assert "size mismatch" in _refusal(tmp_path, meta, tensors)


@pytest.mark.parametrize("key,raw", [("max_layer", "[1"), ("only_layers", "[1,"),
                                     ("info", "{"), ("clauses", "[{")])
def test_metadata_that_is_no_json_is_refused_naming_the_file(G, tmp_path: Path, key: str,
                                                             raw: str) -> None:
    meta, tensors = _parts(ss_edit(G))
    meta[key] = raw
    message = _refusal(tmp_path, meta, tensors)
    assert f"edit metadata {key}" in message


def test_metadata_json_is_bounded_in_depth(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G))
    meta["info"] = json.dumps({"a": [[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]})  # depth 16: kept
    assert _loads(tmp_path, meta, tensors).info["a"]
    meta["info"] = json.dumps({"a": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]})  # 17
    assert "edit metadata info" in _refusal(tmp_path, meta, tensors)


def test_metadata_json_is_bounded_in_size(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G))
    meta["info"] = json.dumps({"a": "x" * (1024 * 1024 - 9)})  # exactly 1 MiB: kept
    assert len(meta["info"]) == 1024 * 1024
    assert _loads(tmp_path, meta, tensors).info["a"]
    meta["info"] = json.dumps({"a": "x" * (1024 * 1024 - 8)})
    assert "edit metadata info is 1048577 bytes" in _refusal(tmp_path, meta, tensors)


def test_a_long_bad_value_is_quoted_cut_short(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G))
    meta["only_layers"] = json.dumps(list(range(100)))
    message = _refusal(tmp_path, meta, tensors)
    assert repr(meta["only_layers"][:80]) in message and repr(meta["only_layers"][:81]) \
        not in message


def test_older_files_without_optional_fields_load_with_their_defaults(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G, catalogue=catalogue_for(G, k=3), clip_model_id="c"))
    for key in ("info", "clip_model", "catalogue_pieces", "catalogue_absorb",
                "catalogue_dissolve", "scene_check_clip", "only_layers", "max_layer"):
        meta.pop(key, None)
    edit = _loads(tmp_path, meta, tensors)
    assert edit.info == {} and edit.clip_model_id == "" and edit.scene_check_clip == ""
    assert edit.catalogue is not None and edit.catalogue.pieces == 0
    assert edit.catalogue.absorb == 0 and edit.only_layers is None and edit.max_layer is None
    assert not edit.catalogue.dissolve  # older edits apply as they were trained
    meta["only_layers"] = ""
    assert _loads(tmp_path, meta, tensors).only_layers is None
    meta["only_layers"] = "[3]"
    assert _loads(tmp_path, meta, tensors).only_layers == [3]


def test_the_catalogue_layer_is_a_conv_layer(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G))
    meta["catalogue_layer"] = "0"
    assert "catalogue_layer = '0'; expected an integer from 1 to 8" in \
        _refusal(tmp_path, meta, tensors)
    meta["catalogue_layer"] = "1"
    assert _loads(tmp_path, meta, tensors).catalogue.layer == 1


def test_pieces_up_to_their_bound_load(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G))
    meta["catalogue_pieces"] = "4096"
    tensors["selector.logits"] = torch.zeros(1, len(G.conv_layers), 4096)
    assert _loads(tmp_path, meta, tensors).catalogue.pieces == 4096


def test_the_scene_check_s_bounds(G, tmp_path: Path) -> None:
    t = "scene_check."
    meta, tensors = _parts(ss_edit(G, scene_check=scene_check(8, parts=2),
                                   scene_check_clip="a"))  # a one-character fingerprint
    assert _loads(tmp_path, meta, tensors).scene_check_clip == "a"
    for width, fits in ((1, True), (8192, True), (8193, False)):
        tensors[t + "text"] = torch.ones(width)
        tensors[t + "parts"] = torch.zeros(0, 5)  # no parts: their width is not read
        tensors[t + "part_stats"] = torch.zeros(0, 3)
        tensors[t + "part_coefs"] = torch.zeros(0, 0)
        if fits:
            assert _loads(tmp_path, meta, tensors).scene_check.text.numel() == width
        else:
            assert "scene check" in _refusal(tmp_path, meta, tensors)
    tensors[t + "text"] = torch.ones(8)
    tensors[t + "parts"] = torch.zeros(64, 8)
    tensors[t + "part_stats"] = torch.zeros(64, 3)
    tensors[t + "part_coefs"] = torch.zeros(64, 64)
    assert _loads(tmp_path, meta, tensors).scene_check.parts.shape == (64, 8)
    tensors[t + "part_stats"][0, 2] = 64  # a clause index past the parts' bound
    assert "scene check" in _refusal(tmp_path, meta, tensors)


def test_can_channels_bounds(G, tmp_path: Path) -> None:
    meta, tensors = _parts(can_edit(G))
    for bad in ([8193] * 7, [0] * 7, [32] * 9):
        meta["can_channels"] = json.dumps(bad)
        assert "edit metadata can_channels = " in _refusal(tmp_path, meta, tensors), bad
    meta["can_channels"] = json.dumps([32] * 9)
    assert "expected a list of 1-8 integers from 1 to 8192" in _refusal(tmp_path, meta, tensors)
    meta["can_channels"] = json.dumps([1] * 7)  # within bounds: refused for its tensors
    assert "selector tensors do not fit" in _refusal(tmp_path, meta, tensors)
    del meta["can_channels"]
    assert "edit metadata can_channels = 'None'; expected a list" in \
        _refusal(tmp_path, meta, tensors)


def test_too_many_pieces_are_refused_even_when_the_selector_agrees(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G))
    meta["catalogue_pieces"] = "4097"
    tensors["selector.logits"] = torch.zeros(1, len(G.conv_layers), 4097)
    assert "catalogue gives 4097" in _refusal(tmp_path, meta, tensors)


def test_unknown_clauses_are_named_three_at_most(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G))
    for i in range(2, 6):
        tensors[f"clause{i}.x"] = torch.zeros(1)
    assert "tensors of clauses ['clause2', 'clause3', 'clause4'] that" in \
        _refusal(tmp_path, meta, tensors)


def test_a_loaded_edit_names_its_clip_and_learns_nothing_more(G, tmp_path: Path) -> None:
    edit = Edit.load(ss_edit(G, clip_model_id="ViT-B-32/openai").save(tmp_path / "e.safetensors"))
    assert edit.clip_model_id == "ViT-B-32/openai"
    assert not any(p.requires_grad for p in edit.selector.parameters())


def test_a_scene_check_without_its_clip_s_name_is_refused(G, tmp_path: Path) -> None:
    meta, tensors = _parts(ss_edit(G, scene_check=scene_check(8), scene_check_clip="abc"))
    del meta["scene_check_clip"]
    assert "scene check does not fit together" in _refusal(tmp_path, meta, tensors)


def test_a_selector_refusal_quotes_torch_cut_short(G, tmp_path: Path) -> None:
    meta, tensors = _parts(can_edit(G))
    meta["can_channels"] = json.dumps([9] * 7)
    message = _refusal(tmp_path, meta, tensors)
    head = "<file>: the edit's selector tensors do not fit its metadata ("
    assert message.startswith(head) and message.endswith(")")
    assert len(message) == len(head) + 300 + 1


def test_the_file_s_metadata_tells_a_reader_what_the_edit_is(G, tmp_path: Path) -> None:
    """What a tool reading the header sees (the info panel of a model browser)."""
    from coral_core.formats.integrity import read_safetensors

    can = can_edit(G, clip_model_id="ViT-B-32/openai", info={"where": tmp_path})
    meta, _ = read_safetensors(can.save(tmp_path / "can.safetensors"), "edit")
    assert meta["clip_model"] == "ViT-B-32/openai"
    assert json.loads(meta["info"]) == {"where": str(tmp_path)}
    assert (meta["catalogue_id"], meta["catalogue_layer"], meta["catalogue_pieces"],
            meta["catalogue_absorb"], meta["segment_pool"]) == ("", "", "", "", "")
    assert meta["no_masks"] == "" and meta["composite"] == ""
    assert json.loads(meta["can_channels"]) == [32, 32, 32, 16, 16, 8, 8]
    ss = ss_edit(G, no_masks=True, composite=True,
                 catalogue=catalogue_for(G, k=3).with_pieces(3, 2))
    meta, tensors = read_safetensors(ss.save(tmp_path / "ss.safetensors"), "edit")
    assert meta["catalogue_id"] == ss.catalogue.id() and meta["catalogue_layer"] == "2"
    assert meta["no_masks"] == "1" and meta["composite"] == "1"
    assert json.loads(meta["can_channels"]) == []
    assert all(v.dtype == torch.float32 for v in tensors.values())


def test_tensors_are_written_as_float32_whatever_they_were(G, tmp_path: Path) -> None:
    from coral_core.formats.integrity import read_safetensors

    edit = ss_edit(G)
    edit.direction.double()
    edit.selector.half()
    _, tensors = read_safetensors(edit.save(tmp_path / "e.safetensors"), "edit")
    assert {str(v.dtype) for v in tensors.values()} == {"torch.float32"}


def test_a_diverged_edit_names_up_to_three_tensors(G, tmp_path: Path) -> None:
    edit = ss_edit(G, latents=G.mapping_ws(G.z_from_seeds([1])),
                   segments=torch.rand(1, 3, 8, 8))
    edit.direction.delta.data.fill_(float("nan"))
    edit.selector.logits.data.fill_(float("inf"))  # type: ignore[union-attr]
    edit.latents.fill_(float("nan"))  # type: ignore[union-attr]
    edit.segments.fill_(float("nan"))  # type: ignore[union-attr]
    with pytest.raises(ModelFormatError) as err:
        edit.save(tmp_path / "e.safetensors")
    assert str(err.value).count("'") == 6  # three names quoted


def test_an_edit_of_too_many_clauses_says_how_many(G, tmp_path: Path) -> None:
    head = ss_edit(G)
    link = head
    for i in range(MAX_CLAUSES):
        link.then = ss_edit(G, f"clause {i}")
        link = link.then
    with pytest.raises(ModelFormatError, match=f"an edit of {MAX_CLAUSES + 1} clauses; at most "
                                               f"{MAX_CLAUSES} are kept"):
        head.save(tmp_path / "many.safetensors")


def test_three_clauses_load_in_order_and_clause_zero_is_no_clause(G, tmp_path: Path) -> None:
    edit = ss_edit(G, "a", then=ss_edit(G, "b", then=ss_edit(G, "c")))
    loaded = Edit.load(edit.save(tmp_path / "e.safetensors"))
    assert [e.prompt for e in loaded.chain()] == ["a", "b", "c"]
    meta, tensors = _parts(edit)
    tensors["clause0.direction.delta"] = tensors["direction.delta"].clone()
    assert "tensors of clauses ['clause0']" in _refusal(tmp_path, meta, tensors)
    meta, tensors = _parts(edit)
    clauses = json.loads(meta["clauses"])
    clauses[1]["variant"] = "xx"
    meta["clauses"] = json.dumps(clauses)
    assert "variant='xx'" in _refusal(tmp_path, meta, tensors)


def test_rows_of_a_three_image_edit_and_their_gradients(G) -> None:
    ws3 = G.mapping_ws(G.z_from_seeds([5, 6, 7]))
    edit = ss_edit(G, rows=3, latents=ws3.clone(), segments=torch.rand(3, 3, 8, 8))
    one = edit.row(1)
    assert one.direction.delta.shape[0] == 1 and not one.direction.delta.requires_grad
    logits = one.selector.logits  # type: ignore[union-attr]
    assert logits.shape[0] == 1 and not logits.requires_grad
    assert one.latents is not None and one.latents.shape[0] == 1
    assert one.segments is not None and one.segments.shape[0] == 1


def test_the_region_snaps_to_the_picture_s_edges(G, ws) -> None:
    """Segments come from a coarse grid; the composite region follows the original picture's
    colour edge instead (one pixel off the grid's here)."""
    segs = torch.zeros(1, 2, 8, 8)
    segs[:, 0, :, :4] = 1
    segs[:, 1, :, 4:] = 1
    weights = torch.zeros(1, len(G.conv_layers), 2)
    weights[0, 2, 0] = 1.0
    edit = ss_edit(G, k=2, segments=segs, weights=weights, composite=True)
    _, feats = G.synthesize_with_features(ws)
    picture = torch.ones(2, 3, 32, 32)
    picture[..., :15] = -1.0  # the colour edge at column 15, the grid's at 16
    snapped = edit.region(G, feats, picture)
    blocky = edit.region(G, feats)
    assert snapped is not None and blocky is not None
    assert float(blocky[..., 15].min()) == 1.0 and float(snapped[..., 15].max()) < 0.5
    assert float(snapped[..., :15].min()) > 0.99


@pytest.mark.parametrize("layer,fields,selected", [
    (1, {}, True), (7, {}, True), (7, {"max_layer": 2}, False), (1, {"max_layer": 1}, True),
    (7, {"only_layers": [1, 2]}, False)])
def test_the_region_reads_every_allowed_layer_and_no_other(G, ws, layer, fields,
                                                           selected) -> None:
    segs = torch.ones(1, 1, 8, 8)
    weights = torch.zeros(1, len(G.conv_layers), 1)
    weights[0, layer - 1, 0] = 1.0
    edit = ss_edit(G, k=1, segments=segs, weights=weights, composite=True, **fields)
    _, feats = G.synthesize_with_features(ws)
    region = edit.region(G, feats)
    assert region is not None and (float(region.max()) == 1.0) == selected


def test_segments_for_the_wrong_batch_say_how_many_images(G, ws) -> None:
    _, feats = G.synthesize_with_features(ws)
    with pytest.raises(EditMismatchError, match="segments for 3 images"):
        ss_edit(G, k=2, segments=torch.rand(3, 2, 8, 8)).segments_for(feats)


def test_the_summary_keeps_every_field_a_user_reads(G) -> None:
    info = {"selection": [[1, 0]], "final_losses": {"total": 1.0}, "mask_area": [0.5],
            "steps": 5, "wall_seconds": 2.0, "partial": False, "warnings": [], "other": 1}
    summary = ss_edit(G, info=info).summary()
    assert summary == {"prompt": "a red circle", "variant": "ss", "direction": "global",
                       "mode": "per_prompt", **{k: v for k, v in info.items() if k != "other"}}
