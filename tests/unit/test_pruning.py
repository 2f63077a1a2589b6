"""Region pruning: the greedy removal rule, and how the trainer applies its decision."""
from __future__ import annotations

import pytest
import torch

from coral_core.editing import region as region_module
from coral_core.editing import run_record
from coral_core.editing import trainer as trainer_module
from coral_core.editing.memory import MemoryPlan
from coral_core.editing.apply import apply_edits
from coral_core.editing.catalogue import resize_segments
from coral_core.editing.config import LossWeights
from coral_core.editing.edit import Edit
from coral_core.editing.losses import clip_loss_per_image
from coral_core.editing.pruning import prune_selection
from coral_core.editing.trainer import TrainConfig, train_edit


def additive_score(gains: torch.Tensor):
    """CLIP loss per row = 1 - sum of the kept (layer, segment) gains (gains [P, L, K])."""
    def score(gate: torch.Tensor) -> torch.Tensor:
        return 1 - (gate * gains).flatten(1).sum(1)
    return score


def by_segment(gains: list[list[float]], layers: int = 2) -> torch.Tensor:
    """[P, L, K] gains, each segment's gain spread evenly over the layers."""
    return torch.tensor(gains)[:, None, :].expand(-1, layers, -1) / layers


def test_removes_the_least_useful_segments_while_the_gain_stays_within_tolerance() -> None:
    gains = by_segment([[0.50, 0.05, 0.00, 0.10],    # one region carries the edit
                        [0.20, 0.20, 0.20, 0.00]])   # three equal parts: all needed
    allowed = torch.ones(2, 2, 4, dtype=torch.bool)
    gate = prune_selection(allowed, additive_score(gains), tolerance=0.3)
    assert gate.shape == (2, 2, 4)
    assert gate[0].amax(0).tolist() == [1, 0, 0, 0]  # 0.50 of 0.65 kept: 77 % >= 70 %
    assert gate[1].amax(0).tolist() == [1, 1, 1, 0]  # dropping a third would keep only 67 %
    assert bool((gate == gate[:, :1]).all())          # whole segments: every layer alike
    # a tighter tolerance keeps more
    tight = prune_selection(allowed, additive_score(gains), tolerance=0.1)
    assert tight[0].amax(0).tolist() == [1, 0, 0, 1]


def test_layers_are_units_too_when_asked() -> None:
    gains = torch.tensor([[[0.02, 0.01], [0.60, 0.00]]])  # layer 0 adds little
    allowed = torch.ones(1, 2, 2, dtype=torch.bool)
    seg_only = prune_selection(allowed, additive_score(gains), tolerance=0.2)
    assert seg_only[0].tolist() == [[1, 0], [1, 0]]
    with_layers = prune_selection(allowed, additive_score(gains), tolerance=0.2, layers=True)
    assert with_layers[0].tolist() == [[0, 0], [1, 0]]


def test_of_two_redundant_segments_one_is_kept() -> None:
    """Either segment alone makes the whole edit (the gain is a max, not a sum)."""
    def score(gate: torch.Tensor) -> torch.Tensor:
        seg = gate.amax(1)
        return 1 - 0.5 * seg[:, :2].amax(1) - 0.01 * seg[:, 2]

    gate = prune_selection(torch.ones(1, 3, 3, dtype=torch.bool), score, tolerance=0.3)
    assert gate[0].amax(0)[:2].sum() == 1 and gate[0].amax(0)[2] == 0


def test_what_was_not_allowed_stays_off_and_gainless_rows_are_left_alone() -> None:
    gains = by_segment([[0.4, 0.1, 0.3], [-0.2, -0.1, 0.0]])
    allowed = torch.tensor([[True, True, False], [True, True, False]])[:, None].expand(-1, 2, -1)
    gate = prune_selection(allowed, additive_score(gains), tolerance=0.5)
    assert gate[0].amax(0).tolist() == [1, 0, 0]   # segment 2 was never selected
    assert gate[1].amax(0).tolist() == [1, 1, 0]   # no gain yet: nothing to measure, kept


def per_image_score(gains: torch.Tensor):
    """CLIP loss per row and image = 1 - sum of the kept segments' gains on that image
    (gains [P, N, K]: segment k's gain on image n; every layer alike)."""
    def score(gate: torch.Tensor) -> torch.Tensor:
        return 1 - torch.einsum("pk,pnk->pn", gate.amax(1), gains)
    return score


def test_a_per_prompt_edit_keeps_a_segment_that_some_pictures_need() -> None:
    """Segment 1 is the background of picture 2 only (the catalogue's cool-background
    cluster); segment 2 is an object the CLIP rewards a little on every picture. By the mean
    alone both go; with the per-image guard the first stays, because without it picture 2
    keeps none of its gain, while the object's segment still goes."""
    gains = torch.tensor([[[0.6, 0.0, 0.05], [0.6, 0.0, 0.05], [0.0, 0.6, 0.05],
                           [0.6, 0.0, 0.05], [0.6, 0.0, 0.05]]])  # [P=1, N=5, K=3]
    allowed = torch.ones(1, 2, 3, dtype=torch.bool)
    mean_only = prune_selection(allowed, per_image_score(gains), tolerance=0.3)
    assert mean_only[0].amax(0).tolist() == [1, 0, 0]
    guarded = prune_selection(allowed, per_image_score(gains), tolerance=0.3, image_keep=0.3)
    assert guarded[0].amax(0).tolist() == [1, 1, 0]
    # a picture the edit barely moves (lacking what the prompt names) guards nothing
    faint = torch.tensor([[[0.6, 0.0, 0.0], [0.6, 0.0, 0.0], [0.6, 0.0, 0.0],
                           [0.0, 0.04, 0.0]]])
    assert prune_selection(allowed, per_image_score(faint), tolerance=0.3,
                           image_keep=0.3)[0].amax(0).tolist() == [1, 0, 0]


def _halves(b: int, res: int) -> torch.Tensor:
    seg = torch.zeros(b, 3, res, res)
    seg[:, 0, :, : res // 2] = 1
    seg[:, 1, :, res // 2:] = 1
    return seg  # segment 2 is empty


def test_trainer_switches_pruned_segments_off_for_good(G, clip, monkeypatch, tmp_path) -> None:
    calls = []

    def remove_segment_one(allowed, score, tolerance, layers, image_keep=0.0):
        full = score(torch.ones_like(allowed, dtype=torch.float32))
        none = score(torch.zeros_like(allowed, dtype=torch.float32))
        calls.append((allowed.clone(), tolerance, full, none))
        gate = allowed.float()
        gate[:, :, 1:] = 0  # also "removes" segment 2, which no image shows
        return gate

    monkeypatch.setattr(region_module, "prune_selection", remove_segment_one)
    # the region contest off: this test is about the greedy removal (contest: see below); the
    # absent-object check too (the tiny random models draw nothing of "a red circle"); the
    # direction free (held, a short image trains again: a second pruning)
    cfg = TrainConfig(prompt="a red circle", steps=6, batch=2, seed=3, prune_at=0.5,
                      prune_tolerance=0.25, mask_init=0.9, contest_steps=0, check_absent=False,
                      along_prior=False)
    ws = G.mapping_ws(G.z_from_seeds([3, 4]))
    res = train_edit(G, clip, cfg, latents=ws, segments=_halves(2, G.img_resolution))
    assert len(calls) == 1 and calls[0][1] == 0.25
    allowed, _, full, none = calls[0]
    # the two non-empty halves were selected (masks start at 0.9); all layers stay allowed;
    # the empty segment cannot be judged on these images, so it is not a candidate
    assert allowed.shape == (2, len(G.conv_layers), 3) and bool(allowed[:, :, :2].all())
    assert not bool(allowed[:, :, 2].any())
    assert full.shape == none.shape == (2,)  # one CLIP loss per image row
    # with every segment off the blend is G(w) bit for bit: the score is the original's loss
    img_o = G.synthesize(ws, noise=G.make_noise(2, "const"))
    expected = clip_loss_per_image(clip, img_o, clip.encode_text([cfg.prompt]))
    assert torch.allclose(none, expected, atol=1e-5)
    removed = res.edit.info["region_pruning"]
    assert removed["at_step"] == 3 and removed["tolerance"] == 0.25
    assert removed["removed"] == {"segments": [[0, 1], [1, 1]], "layers": [], "judged_images": 2}
    weights = torch.sigmoid(res.edit.selector.logits)
    assert float(weights[..., 1].max()) == 0            # off at every layer, in every row
    assert float(weights[..., 0].max()) > 0.5           # the kept half still selected
    # a segment absent from the images judged is left as training left it (here untouched)
    assert torch.allclose(weights[..., 2], torch.full_like(weights[..., 2], 0.9), atol=1e-4)
    # the saved edit applies the same way: every layer's mask is empty over the pruned half
    loaded = Edit.load(res.edit.save(tmp_path / "pruned.safetensors"))
    masks = [m for m in apply_edits(G, ws, [loaded]).masks[0] if m is not None]
    assert masks and all(float(m[..., m.shape[-1] // 2:].max()) < 1e-9 for m in masks)
    assert max(float(m[..., : m.shape[-1] // 2].max()) for m in masks) > 0.5


def test_pruning_off_keeps_the_papers_selection(G, clip) -> None:
    res = train_edit(G, clip, TrainConfig(prompt="a red circle", steps=3, batch=1, seed=2,
                                          prune_tolerance=0))
    assert "region_pruning" not in res.edit.info


def test_checkpoint_keeps_the_pruning_decision(G, clip, tmp_path) -> None:
    from coral_core.editing.selectors import SegmentSelector

    cfg = TrainConfig(prompt="a red circle", mode="per_prompt", checkpoint=tmp_path / "c.pt")
    direction = trainer_module._make_direction(G, cfg, 1)
    selector = SegmentSelector(len(G.conv_layers), 4)
    selector.gate = torch.tensor([[[1.0, 0.0, 1.0, 0.0]]]).expand(1, len(G.conv_layers), 4)
    opt = torch.optim.Adam(list(direction.parameters()) + list(selector.parameters()))
    run_record.save_checkpoint(cfg, "run", direction, selector, opt, 7)
    fresh = SegmentSelector(len(G.conv_layers), 4)
    assert run_record.resume(cfg, "run", direction, fresh, opt) == 7
    assert fresh.gate is not None and torch.equal(fresh.gate, selector.gate)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_pruning_settings_are_refused(G, clip, bad) -> None:
    from coral_core.errors import InputError

    with pytest.raises(InputError, match="prune"):
        train_edit(G, clip, TrainConfig(prompt="x", steps=1, prune_tolerance=bad))


def test_connected_pieces_split_one_cluster_into_its_objects() -> None:
    from coral_core.editing.catalogue import connected_pieces

    seg = torch.zeros(1, 2, 8, 8)
    seg[0, 0] = 1
    seg[0, 0, 1:3, 1:3] = 0       # object A, 4 pixels
    seg[0, 0, 4:7, 4:7] = 0       # object B, 9 pixels, same cluster as A
    seg[0, 0, 0, 7] = 0           # a one-pixel speck
    seg[0, 1] = 1 - seg[0, 0]
    pieces = connected_pieces(seg, 5)
    sizes = pieces.flatten(2).sum(2)[0].tolist()
    assert sizes == [50, 9, 4, 1, 0]          # background, B, A, speck: largest first
    assert torch.equal(pieces.sum(1), torch.ones(1, 8, 8))  # every pixel in exactly one
    assert bool(pieces[0, 1, 4:7, 4:7].all()) and bool(pieces[0, 2, 1:3, 1:3].all())
    # beyond the limit the smallest pieces share the last slot
    capped = connected_pieces(seg, 3)
    assert capped.flatten(2).sum(2)[0].tolist() == [50, 9, 5]
    assert torch.equal(connected_pieces(seg, 5), pieces)  # deterministic


def test_per_image_edits_use_pieces_and_their_files_say_so(G, clip, tmp_path) -> None:
    from coral_core.errors import ModelFormatError
    from coral_core.formats.integrity import read_safetensors, write_safetensors

    # free: a held edit splits the pieces where the prior acts and saves the split segments
    # instead (test_prior_region.py)
    cfg = TrainConfig(prompt="a red circle", steps=2, batch=2, seed=1, segment_pieces=7,
                      catalogue_dir=tmp_path, along_prior=False)
    edit = train_edit(G, clip, cfg).edit
    assert edit.catalogue is not None and edit.catalogue.pieces == 7
    assert edit.selector.logits.shape[-1] == 7
    path = edit.save(tmp_path / "pieces.safetensors")
    loaded = Edit.load(path)
    assert loaded.catalogue is not None and loaded.catalogue.pieces == 7
    a, b = apply_edits(G, edit.latents, [edit]), apply_edits(G, loaded.latents, [loaded])
    # same pieces, masks and direction bit for bit; the images agree to float rounding (up to
    # 3e-6 was seen once the direction starts from the prior, not yet traced to its source)
    assert all(x is None and y is None or torch.equal(x, y) for x, y in zip(a.masks[0],
                                                                          b.masks[0]))
    assert torch.allclose(a.edited, b.edited, atol=1e-5)
    meta, tensors = read_safetensors(path, "edit", require_hash=False)
    meta = dict(meta, catalogue_pieces="5")
    meta.pop("content_sha256", None)
    write_safetensors(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(ModelFormatError, match="bad.safetensors.*7 segments.*gives 5"):
        Edit.load(tmp_path / "bad.safetensors")
    # per prompt: one segment id must mean the same part on every image, so no pieces
    per_prompt = train_edit(G, clip, TrainConfig(prompt="a red circle", steps=1, batch=2,
                                                 mode="per_prompt", catalogue_dir=tmp_path))
    assert per_prompt.edit.catalogue is not None and per_prompt.edit.catalogue.pieces == 0


def test_attention_edits_prune_over_the_catalogue_clusters(G, clip, monkeypatch, tmp_path):
    """CAN has no segments of its own: pruning limits its masks to kept catalogue clusters,
    and the edit file carries the gate and the catalogue, so applying does the same."""
    from coral_core.errors import ModelFormatError
    from coral_core.formats.integrity import read_safetensors, write_safetensors

    def keep_first_present(allowed, score, tolerance, layers, image_keep=0.0):
        assert allowed.shape[:2] == (1, 1) and not layers  # clusters are CAN's only units
        gate = torch.zeros_like(allowed, dtype=torch.float32)
        gate[0, 0, int(allowed[0, 0].float().argmax())] = 1
        return gate

    monkeypatch.setattr(region_module, "prune_selection", keep_first_present)
    cfg = TrainConfig(prompt="a red circle", variant="can", mode="per_prompt", steps=4,
                      batch=2, seed=5, catalogue_dir=tmp_path)
    edit = train_edit(G, clip, cfg).edit
    gate = edit.selector.cluster_gate
    assert gate is not None and edit.catalogue is not None and gate.shape == (1, edit.catalogue.k)
    loaded = Edit.load(edit.save(tmp_path / "can.safetensors"))
    assert loaded.selector.cluster_gate is not None
    assert torch.equal(loaded.selector.cluster_gate, gate)
    ws = G.mapping_ws(G.z_from_seeds([11, 12]))
    a, b = apply_edits(G, ws, [edit]), apply_edits(G, ws, [loaded])
    assert torch.equal(a.edited, b.edited)
    # every mask is zero wherever a removed cluster lies
    with torch.no_grad():
        _, feats = G.synthesize_with_features(ws, noise=G.make_noise(2, "const"))
    clusters = edit.catalogue.segments(feats)
    removed = (clusters * (1 - gate)[:, :, None, None]).sum(1, keepdim=True)
    checked = 0
    for m in a.masks[0]:
        if m is not None:
            off = resize_segments(removed, m.shape[-1]) >= 1
            assert float((m * off).abs().max()) == 0
            checked += int(off.sum())
    assert checked > 0  # some removed cluster is on these images
    meta, tensors = read_safetensors(tmp_path / "can.safetensors", "edit", require_hash=False)
    meta.pop("content_sha256", None)
    tensors["cluster_gate"] = torch.ones(1, edit.catalogue.k + 1)
    write_safetensors(tmp_path / "bad_can.safetensors", tensors, meta)
    with pytest.raises(ModelFormatError, match="bad_can.safetensors.*cluster gate"):
        Edit.load(tmp_path / "bad_can.safetensors")


@pytest.mark.parametrize("composite", [True, False])
def test_a_pruned_attention_edit_keeps_the_picture_outside_its_clusters(
        G, clip, monkeypatch, tmp_path, composite):
    """CAN's final composite: applied, an edit limited to some clusters changes no pixel
    outside them (their edges snapped to the picture), as SS's does outside its segments;
    with the composite off it is the paper's blend alone."""
    def keep_first_present(allowed, score, tolerance, layers, image_keep=0.0):
        gate = torch.zeros_like(allowed, dtype=torch.float32)
        gate[0, 0, int(allowed[0, 0].float().argmax())] = 1
        return gate

    monkeypatch.setattr(region_module, "prune_selection", keep_first_present)
    # the random generator's clusters kept as they are (test_trainer_runs.FAST says why)
    cfg = TrainConfig(prompt="a red circle", variant="can", mode="per_prompt", steps=4,
                      batch=2, seed=5, catalogue_dir=tmp_path, composite=composite,
                      dissolve_boundaries=False)
    edit = Edit.load(train_edit(G, clip, cfg).edit.save(tmp_path / "can.safetensors"))
    assert edit.composite is composite
    ws = G.mapping_ws(G.z_from_seeds([11, 12]))
    res = apply_edits(G, ws, [edit])
    assert res.original is not None
    with torch.no_grad():
        _, feats = G.synthesize_with_features(ws, noise=G.make_noise(2, "const"))
    region = edit.region(G, feats, res.original)
    if not composite:
        assert region is None
        return
    assert region is not None and region.shape == (2, 1, G.img_resolution, G.img_resolution)
    outside = (region == 0).expand_as(res.edited)
    assert bool(outside.any()) and bool((region > 0).any())
    assert torch.equal(res.edited[outside], res.original[outside])


@pytest.mark.parametrize("on", [True, False])
def test_a_pruned_attention_edit_trains_on_what_apply_will_give(G, clip, monkeypatch,
                                                                  tmp_path, on) -> None:
    """From the pruning step on, CAN's training composites over the kept clusters, the region
    apply will use (its edges snapped to the picture): the CLIP sees no change outside them
    and the even-change term reads the change inside; before pruning, and with
    ``can_trains_on_composite`` off, the paper's blend everywhere and no even-change term."""
    def keep_first_present(allowed, score, tolerance, layers, image_keep=0.0):
        gate = torch.zeros_like(allowed, dtype=torch.float32)
        gate[0, 0, int(allowed[0, 0].float().argmax())] = 1
        return gate

    monkeypatch.setattr(region_module, "prune_selection", keep_first_present)
    seen: list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]] = []
    call = trainer_module.CoralObjective.__call__

    def spy(self, direction, ws, masks, noise, original, *args, **kwargs):
        loss = call(self, direction, ws, masks, noise, original, *args, **kwargs)
        region = kwargs.get("region")
        seen.append((None if region is None else region.detach().clone(),
                     loss.edited.detach().clone(), original.detach().clone()))
        return loss

    monkeypatch.setattr(trainer_module.CoralObjective, "__call__", spy)
    cfg = TrainConfig(prompt="a red circle", variant="can", mode="per_prompt", steps=4,
                      batch=2, seed=5, catalogue_dir=tmp_path, prune_at=0.5,
                      dissolve_boundaries=False, can_trains_on_composite=on,
                      # the random generator's change is uneven: open the term's gate
                      weights=LossWeights(even_change_below=1.0))
    result = train_edit(G, clip, cfg)
    prune_step = 2
    evens = [r["even"] for r in result.history]
    assert all(region is None for region, _, _ in seen[:prune_step - 1])
    assert evens[:prune_step - 1] == [0.0] * (prune_step - 1)
    after = seen[prune_step - 1:]
    if not on:
        assert all(region is None for region, _, _ in after)
        assert all(e == 0.0 for e in evens[prune_step - 1:])
        return
    assert all(region is not None for region, _, _ in after)
    assert any(e > 0 for e in evens[prune_step - 1:])
    assert any(bool((region > 0).any()) for region, _, _ in after if region is not None)
    for region, edited, original in after:
        assert region is not None and bool((region == 0).any())
        outside = (region == 0).expand_as(edited)
        assert torch.equal(edited[outside], original[outside])


@pytest.mark.parametrize("directional", [True, False])
def test_a_neutral_prompt_makes_pruning_judge_by_the_directional_loss(G, clip, monkeypatch,
                                                                       directional) -> None:
    """With a neutral prompt, candidate regions are scored by where the change points (from
    the neutral text to the prompt), not by how well the picture matches the prompt: with
    nothing switched on nothing changes, so the directional loss is exactly 1."""
    seen = {}

    def record(allowed, score, tolerance, layers, image_keep=0.0):
        seen["none"] = score(torch.zeros_like(allowed, dtype=torch.float32))
        seen["full"] = score(allowed.float())
        return allowed.float()

    monkeypatch.setattr(region_module, "prune_selection", record)
    ws = G.mapping_ws(G.z_from_seeds([5, 6]))
    cfg = TrainConfig(prompt="a red circle", neutral="a blue circle", steps=4, batch=2,
                      seed=5, prune_at=0.5, mask_init=0.9, prune_directional=directional)
    train_edit(G, clip, cfg, latents=ws, segments=_halves(2, G.img_resolution))
    img_o = G.synthesize(ws, noise=G.make_noise(2, "const"))
    plain = clip_loss_per_image(clip, img_o, clip.encode_text([cfg.prompt]))
    if directional:
        assert torch.allclose(seen["none"], torch.ones(2), atol=1e-6)
        assert not torch.allclose(seen["none"], plain, atol=1e-3)
        assert not torch.allclose(seen["full"], seen["none"], atol=1e-4)  # it did move
    else:
        assert torch.allclose(seen["none"], plain, atol=1e-5)


def test_large_regions_contest_the_edit_each_with_its_own_direction(G) -> None:
    """A region wins by what it can do alone after its own short re-optimisation, not by how
    it scores under the direction trained with every region on: the loss asks for a brighter
    left half only, so of the two halves the left one wins, the right one is switched off, the
    edit carries on with the winner's direction, and the selector's gate is as it was."""

    from coral_core.editing.selectors import SegmentSelector

    ws = G.mapping_ws(G.z_from_seeds([3]))
    noise = G.make_noise(1, "const")
    res = G.img_resolution
    target = G.synthesize(ws, noise=noise).detach().clone()
    target[..., : res // 2] += 0.5

    def image_loss(img: torch.Tensor) -> torch.Tensor:
        return (img - target).square().mean((1, 2, 3))

    layers = len(G.conv_layers)
    cfg = TrainConfig(prompt="x", contest_steps=6)
    direction = trainer_module._make_direction(G, cfg, 1)
    start = direction.delta.detach().clone()
    selector = SegmentSelector(layers, 3, rows=1, init=0.9)
    allowed = torch.zeros(1, layers, 3, dtype=torch.bool)
    allowed[:, :, :2] = True
    def judge(segs, check=None):
        return region_module.RegionJudge(G, cfg, ws, noise, [], segs, image_loss,
                                         MemoryPlan(recompute=False, bf16=False), check)

    kept, report = region_module.contest_regions(judge(_halves(1, res)), selector, direction,
                                                 allowed)
    assert report is not None and len(report) == 1
    assert sorted(report[0]["pieces"]) == [0, 1] and report[0]["winner"] == 0
    left, right = (report[0]["losses"][report[0]["pieces"].index(k)] for k in (0, 1))
    assert left < right
    assert bool(kept[0, :, 0].all()) and not bool(kept[0, :, 1:].any())
    assert not torch.equal(direction.delta.detach(), start)  # the winner's direction
    assert selector.gate is None

    # a region under 2 % of the picture does not contest: nothing is decided here
    tiny = _halves(1, res)
    tiny[:, 1] = 0
    tiny[:, 1, 0, -1] = 1
    same, none = region_module.contest_regions(judge(tiny), selector, direction, allowed)
    assert none is None and torch.equal(same, allowed)

    # a cancel during the contest propagates and leaves the selector's gate as it was
    from coral_core.errors import CancelledError

    def cancel() -> None:
        raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        region_module.contest_regions(judge(_halves(1, res), cancel), selector, direction,
                                      allowed)
    assert selector.gate is None


def test_corner_fragments_join_their_neighbour_and_small_parts_stay() -> None:
    from coral_core.editing.catalogue import connected_pieces

    seg = torch.zeros(1, 3, 32, 32)
    seg[0, 0] = 1
    seg[0, 0, 0, 0] = 0
    seg[0, 1, 0, 0] = 1              # a one-cell corner fragment of another cluster
    seg[0, 0, 10:12, 10:13] = 0
    seg[0, 2, 10:12, 10:13] = 1      # a six-cell part (an iris at this grid)
    seg[0, 0, 5:25, 31] = 0
    seg[0, 2, 5:25, 31] = 1          # a one-cell-wide strip along the right border
    pieces = connected_pieces(seg, 4, absorb=3)
    assert float(pieces[0, 0].sum()) == 32 * 32 - 6  # the background took corner and strip
    assert float(pieces[0, 1].sum()) == 6             # the part stays its own piece
    apart = connected_pieces(seg, 4)
    assert float(apart[0, 0].sum()) == 32 * 32 - 27   # off: as before


def test_a_per_prompt_edit_is_pruned_on_several_batches(G, clip, monkeypatch, tmp_path) -> None:
    """Per prompt, pruning judges ``prune_batches`` batches (the step's and fresh ones): its
    score for a gate is each judged image's loss (the row's is their mean), a cluster any of
    them shows is a candidate, and the training batches themselves are the same as with one
    judged batch. (Every image is judged here: ``fit_scenes_only`` off.)"""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(allowed, score, tolerance, layers, image_keep=0.0):
        seen.append((allowed.clone(), score(torch.zeros_like(allowed, dtype=torch.float32))))
        return allowed.float()

    monkeypatch.setattr(region_module, "prune_selection", record)
    common = dict(prompt="a red circle", variant="can", mode="per_prompt", steps=4, batch=2,
                  seed=5, catalogue_dir=tmp_path, prune_at=0.5, fit_scenes_only=False)
    one = train_edit(G, clip, TrainConfig(**common, prune_batches=1))
    three = train_edit(G, clip, TrainConfig(**common, prune_batches=3))
    assert one.edit.info["region_pruning"]["removed"]["judged_images"] == 2
    assert three.edit.info["region_pruning"]["removed"]["judged_images"] == 6
    # training's own batches are untouched: the steps up to the region choice match
    assert [r["total"] for r in one.history[:2]] == [r["total"] for r in three.history[:2]]
    # with every cluster off the edit is G(w): the score is the mean unedited loss over all
    # three batches (the step's two images and two fresh pairs from their own seed)
    (allowed_1, none_1), (allowed_3, none_3) = seen
    assert none_1.shape == (1, 2) and none_3.shape == (1, 6)  # one loss per judged image
    none_1, none_3 = none_1.mean(1), none_3.mean(1)
    assert bool((allowed_3 >= allowed_1).all())  # more batches show at least as many clusters
    assert not torch.allclose(none_1, none_3)
    target = clip.encode_text([common["prompt"]])
    gen = torch.Generator().manual_seed(5 + trainer_module.PRUNE_SEED_OFFSET)
    losses: list[torch.Tensor] = []
    for _ in range(2):
        z = torch.randn(2, G.z_dim, generator=gen)
        with torch.no_grad():
            img = G.synthesize(G.mapping_ws(z, TrainConfig(**common).truncation),
                               noise=G.make_noise(2, "const"))
        losses.append(clip_loss_per_image(clip, img, target).mean())
    step_batch = 3 * float(none_3) - sum(float(v) for v in losses)
    assert step_batch == pytest.approx(float(none_1), abs=1e-4)


@pytest.mark.parametrize("rows", [1, 2])
def test_the_contest_winner_s_steps_count_towards_the_budget(G, clip, rows) -> None:
    """The contest's winner has trained ``contest_steps`` steps on its own region: the run
    skips as many of its remaining steps and says so; without the credit (or with a row that
    had no contest) every step runs."""
    import dataclasses

    ws = G.mapping_ws(G.z_from_seeds(list(range(3, 3 + rows))))
    segs = _halves(rows, G.img_resolution)
    if rows == 2:
        segs[1] = 0
        segs[1, 0] = 1  # the second image is one region: nothing contests there
    cfg = TrainConfig(prompt="a red circle", steps=10, batch=rows, seed=3, prune_at=0.5,
                      contest_steps=3, mask_init=0.9, check_fit=False, prior_samples=0)
    credited = train_edit(G, clip, cfg, latents=ws, segments=segs)
    full = train_edit(G, clip, dataclasses.replace(cfg, credit_contest=False), latents=ws,
                      segments=segs)
    assert len(full.history) == 10
    assert "contest" in credited.edit.info["region_pruning"]["removed"]
    if rows == 1:
        steps = [r["step"] for r in credited.history]
        # 6-7 count as the winner's contest steps (3 were run; at most half of the 5 left)
        assert steps == [1, 2, 3, 4, 5, 8, 9, 10]
        assert credited.edit.info["region_pruning"]["steps_credited_to_the_contest"] == 2
        # the steps before the region choice are the same run
        assert [r["total"] for r in credited.history[:4]] == \
            [r["total"] for r in full.history[:4]]
    else:
        assert len(credited.history) == 10
        assert "steps_credited_to_the_contest" not in credited.edit.info["region_pruning"]


def test_a_scene_weighted_out_adds_nothing_to_the_clip_term(G, clip) -> None:
    """Per prompt, a training sample the scene check finds unfit (weight 0) must not pull the
    edit: the weighted CLIP term of a pair is the first image's alone, whatever the second."""
    from coral_core.editing.directions import GlobalDirection
    from coral_core.editing.objective import CoralObjective

    cfg = TrainConfig(prompt="a red square", mode="per_prompt", variant="can")
    target = clip.encode_text([cfg.prompt])
    objective = CoralObjective(G, clip, cfg, target, None, None)
    direction = GlobalDirection(G.num_ws, G.w_dim, scale=G.w_spread())
    ws = G.mapping_ws(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(3)))
    noise = G.make_noise(2, "const")
    masks = [None] * len(G.conv_layers)
    pair = objective(direction, ws, masks, noise, G.synthesize(ws, noise=noise), None, 0.0,
                     image_weights=torch.tensor([1.0, 0.0]))
    alone = objective(direction, ws[:1], masks, [n[:1] for n in noise],
                      G.synthesize(ws[:1], noise=[n[:1] for n in noise]), None, 0.0)
    assert pair.terms["clip"] == pytest.approx(alone.terms["clip"], abs=1e-5)
    every = objective(direction, ws, masks, noise, G.synthesize(ws, noise=noise), None, 0.0)
    assert every.terms["clip"] != pytest.approx(alone.terms["clip"], abs=1e-5)


def test_pruning_judges_only_the_scenes_the_edit_may_act_on() -> None:
    """Per prompt, a judged image the scene check finds unfit does not count; if none fits,
    every image does (there must be something to judge by)."""
    from types import SimpleNamespace

    judged = region_module.RegionJudge.judged
    ws = torch.zeros(3, 1)
    assert judged(SimpleNamespace(fits=torch.tensor([1.0, 0.0, 1.0]), ws=ws)).tolist() == [
        True, False, True]
    assert judged(SimpleNamespace(fits=torch.zeros(3), ws=ws)).tolist() == [True] * 3
    assert judged(SimpleNamespace(fits=None, ws=ws)).tolist() == [True] * 3
