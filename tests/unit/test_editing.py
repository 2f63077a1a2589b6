"""Trainer, edit files, apply and visualisation on a tiny random generator and tiny CLIP."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from coral_core.editing.apply import apply_edits, strength_sweep
from coral_core.editing.catalogue import build_catalogue, catalogue_for
from coral_core.editing.edit import Edit
from coral_core.editing.losses import LossWeights, area_betas
from coral_core.editing.trainer import TrainConfig, train_edit
from coral_core.editing.visualize import effective_mask, mask_grid, overlay
from coral_core.errors import EditMismatchError, InputError, ModelFormatError
from coral_core.progress import Reporter
from fabricate import random_generator, tiny_config


def _cfg(**kw) -> TrainConfig:
    # clip_sees_display off: the random generator draws 39 % of its pixels past [-1, 1] (up
    # to 7), where a CLIP reading the displayed picture sees no change; these tests are of the
    # mechanics (test_clip_display.py tests the display)
    base = dict(prompt="a red circle", steps=6, batch=2, seed=1, clip_sees_display=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("variant", ["ss", "can"])
@pytest.mark.parametrize("direction", ["global", "mapper"])
@pytest.mark.parametrize("mode", ["per_image", "per_prompt"])
def test_four_forms_train_save_load_and_reapply(G, clip, tmp_path, variant, direction, mode):
    # one training: an image a held edit leaves short is trained again (test_free_when_short)
    res = train_edit(G, clip, _cfg(variant=variant, direction=direction, mode=mode,
                                   catalogue_dir=tmp_path, free_when_short=False))
    # every step ran, or was taken by the region contest's winner (per image; see
    # test_pruning's test of the credit)
    credited = res.edit.info.get("region_pruning", {}).get("steps_credited_to_the_contest", 0)
    assert not res.partial and len(res.history) + credited == 6
    assert all(np.isfinite(h["total"]) for h in res.history)
    path = res.edit.save(tmp_path / "e.safetensors")
    loaded = Edit.load(path)
    assert (loaded.variant, loaded.direction_form, loaded.mode) == (variant, direction, mode)
    ws = res.edit.latents if mode == "per_image" else \
        G.mapping_ws(G.z_from_seeds([7, 8]), 0.7)
    a = apply_edits(G, ws, [res.edit])
    b = apply_edits(G, ws, [loaded])  # reproducible from the file alone
    assert torch.equal(a.edited, b.edited)
    assert not torch.equal(a.edited, a.original)
    assert all(p.grad is None for p in G.parameters())


def test_per_image_ss_optimisation_lowers_the_clip_loss(G, clip):
    res = train_edit(G, clip, _cfg(steps=40, lr=0.1, batch=1, prior_samples=0))  # from ~0
    first = np.mean([h["clip"] for h in res.history[:3]])
    last = np.mean([h["clip"] for h in res.history[-3:]])
    assert last < first - 0.01


def test_edit_metadata(G, clip, tmp_path):
    res = train_edit(G, clip, _cfg(neutral="a shape", directional=True, max_layer=5))
    path = res.edit.save(tmp_path / "e.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    for key in ("format_version", "prompt", "neutral_prompt", "variant", "direction",
                "generator_fingerprint", "resolution", "num_ws", "clip_model", "catalogue_id"):
        assert meta[key] != "" or key == "catalogue_id"
    info = json.loads(meta["info"])
    assert info["steps"] == 6 and "final_losses" in info and "wall_seconds" in info
    assert "selection" in info and meta["max_layer"] == "5"
    assert meta["generator_fingerprint"] == G.fingerprint()


def test_max_layer_keeps_later_layers_unselected(G, clip):
    res = train_edit(G, clip, _cfg(max_layer=3))
    out = apply_edits(G, res.edit.latents, [res.edit])
    assert all(m is None for m in out.masks[0][3:])
    assert all(m is not None for m in out.masks[0][:3])


def test_supplied_segments(G, clip):
    seg = torch.zeros(2, 2, 32, 32)
    seg[:, 0, :, :16] = 1
    seg[:, 1, :, 16:] = 1
    # free: held, an image that falls short is trained again in a chained edit of its own
    res = train_edit(G, clip, _cfg(along_prior=False), segments=seg)
    assert res.edit.segments is not None and res.edit.catalogue is None
    with torch.no_grad():
        res.edit.selector.logits.zero_()
        res.edit.selector.logits[..., 0] = 20.0
        res.edit.selector.logits[..., 1] = -20.0
    out = apply_edits(G, res.edit.latents, [res.edit], threshold=0.5)
    m = effective_mask(out.masks[0], 32)
    assert m[:, :, :12].min() == 1 and m[:, :, 20:].max() == 0  # bilinear at the border


def test_catalogue_is_cached_and_consistent(G, tmp_path):
    a = catalogue_for(G, 4, tmp_path)
    assert list(tmp_path.glob("catalogue-*.safetensors"))
    b = catalogue_for(G, 4, tmp_path)
    assert torch.equal(a.centres, b.centres)
    with torch.no_grad():
        _, feats = G.synthesize_with_features(G.mapping_ws(G.z_from_seeds([1, 2])))
    seg = a.segments(feats)
    assert seg.shape[1] == 4 and torch.all(seg.sum(1) == 1)
    c = build_catalogue(G, k=4)
    assert torch.equal(c.centres, a.centres)  # deterministic


def test_strength_zero_is_the_original_and_sweep(G, clip):
    res = train_edit(G, clip, _cfg())
    ws = res.edit.latents
    sweep = strength_sweep(G, ws, res.edit, [0.0, 0.5, 1.0])
    original = apply_edits(G, ws, [res.edit]).original
    assert torch.equal(sweep[0], original)
    assert (sweep[1] - original).abs().mean() < (sweep[2] - original).abs().mean()


def test_stacking_edits_and_return_original_false(G, clip):
    a = train_edit(G, clip, _cfg(mode="per_prompt")).edit
    b = train_edit(G, clip, _cfg(mode="per_prompt", prompt="a blue square", seed=2)).edit
    ws = G.mapping_ws(G.z_from_seeds([3, 4]), 0.7)
    one = apply_edits(G, ws, [a]).edited
    both = apply_edits(G, ws, [a, b])
    assert not torch.equal(one, both.edited) and len(both.masks) == 2
    fast = apply_edits(G, ws, [a, b], return_original=False)
    assert fast.original is None
    assert torch.allclose(fast.edited, both.edited, atol=1e-6)


def test_cancel_returns_best_edit_marked_partial(G, clip):
    seen = []

    def callback(step, total, info):
        seen.append(step)
        if step == 3:
            reporter.cancel()

    reporter = Reporter(callback)
    res = train_edit(G, clip, _cfg(steps=50), reporter=reporter)
    assert res.partial and "cancelled" in res.stopped_reason
    assert len(res.history) == 3 and res.edit.info["partial"]


def test_a_host_interrupt_stops_training_within_a_step_between_reports(G, clip):
    """The host's interrupt check (Reporter.poll) runs every step, although the progress is
    reported only every 20 steps: the host's exception stops the run at once."""
    class HostInterrupt(Exception):
        pass

    polls = []

    def poll():
        polls.append(1)
        if len(polls) == 5:
            raise HostInterrupt()

    reported = []
    reporter = Reporter(lambda s, t, info: None if "phase" in info else reported.append(s),
                        every=20, poll=poll)
    with pytest.raises(HostInterrupt):
        train_edit(G, clip, _cfg(steps=60), reporter=reporter)
    assert reported == []  # no step report was drawn before the stop (phases are heartbeats)
    assert len(polls) == 5  # polled at the step boundaries, and nothing ran after


def test_progress_reports_losses_areas_and_previews(G, clip):
    got = []
    train_edit(G, clip, _cfg(steps=4, progress_every=2, along_prior=False),  # one training
               reporter=Reporter(lambda s, t, info: got.append(info)))
    got = [info for info in got if "phase" not in info]  # heartbeats of the long phases apart
    assert len(got) == 4
    assert set(got[0]["losses"]) >= {"clip", "l2", "area", "tv", "total"}
    assert len(got[0]["mask_area"]) == len(G.conv_layers)
    assert got[0]["preview"] is None and got[1]["preview"].shape == (2, 3, 32, 32)


def test_nan_loss_stops_and_keeps_last_good(G, clip, monkeypatch):
    """Losses rise over steps 1-3 (so the *best* is step 1's untrained edit), then turn NaN at
    step 4: the result must be the last good state (trained for two steps), not the best."""
    import coral_core.editing.objective as objective

    real, calls = objective.clip_loss, []

    def rising_then_nan(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 4 else loss + 10.0 * len(calls)

    monkeypatch.setattr(objective, "clip_loss", rising_then_nan)
    weights = LossWeights(clip_on_edit=0.0)
    res = train_edit(G, clip, _cfg(steps=10, lr=0.05, weights=weights))
    assert res.partial and "loss became nan at step 4" in res.stopped_reason
    calls.clear()
    untrained = train_edit(G, clip, _cfg(steps=1, lr=1e-8, weights=weights))
    direction = res.edit.direction.delta
    assert torch.isfinite(direction).all()
    assert not torch.allclose(direction, untrained.edit.direction.delta, atol=1e-6)


def test_per_prompt_checkpoint_resumes_only_the_same_interrupted_run(G, clip, tmp_path):
    ckpt = tmp_path / "run.ckpt.pt"
    cfg = _cfg(mode="per_prompt", steps=6, checkpoint=ckpt, checkpoint_every=2)
    reporter = Reporter(lambda step, total, info: reporter.cancel()
                        if step == 4 and "phase" not in info else None)
    first = train_edit(G, clip, cfg, reporter=reporter)
    assert first.partial and ckpt.is_file()
    # another generator of the same shape must not pick the run up
    other = random_generator(tiny_config(conv_clamp=None), seed=9)
    fresh = train_edit(other, clip, _cfg(mode="per_prompt", steps=6, checkpoint=ckpt,
                                         checkpoint_every=100))
    assert [h["step"] for h in fresh.history] == [1, 2, 3, 4, 5, 6]
    reporter2 = Reporter(lambda step, total, info: reporter2.cancel()
                         if step == 4 and "phase" not in info else None)
    train_edit(G, clip, cfg, reporter=reporter2)  # interrupted again at step 4
    res = train_edit(G, clip, cfg)
    assert [h["step"] for h in res.history] == [5, 6]
    assert res.edit.info["steps"] == 6 and res.edit.info["resumed_from_step"] == 4
    assert not ckpt.exists()  # a completed run leaves nothing to resume by mistake


def test_a_truncated_checkpoint_does_not_block_training(G, clip, tmp_path):
    ckpt = tmp_path / "run.ckpt.pt"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    res = train_edit(G, clip, _cfg(mode="per_prompt", steps=2, checkpoint=ckpt))
    assert len(res.history) == 2 and not res.partial


def test_bad_inputs(G, clip, tmp_path):
    with pytest.raises(InputError, match="empty"):
        train_edit(G, clip, _cfg(prompt="  "))
    with pytest.raises(ValueError, match=r"\[B, 8, 32\]"):
        train_edit(G, clip, _cfg(), latents=torch.zeros(1, 5, 32))
    with pytest.raises(InputError, match="neutral"):
        train_edit(G, clip, _cfg(directional=True))
    edit = train_edit(G, clip, _cfg()).edit
    other = random_generator(tiny_config(conv_clamp=None), seed=5)
    with pytest.raises(EditMismatchError, match="trained for generator"):
        apply_edits(other, edit.latents, [edit])
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelFormatError, match="x.safetensors"):
        Edit.load(tmp_path / "x.safetensors")
    with pytest.raises(EditMismatchError, match="per-image edit holds 2"):
        apply_edits(G, G.mapping_ws(G.z_from_seeds([1, 2, 3])), [edit])


def test_area_weightings(G):
    uniform = area_betas(G, LossWeights(area_weighting="uniform"))
    res = area_betas(G, LossWeights(area_weighting="resolution"))
    inv = area_betas(G, LossWeights(area_weighting="inverse_resolution"))
    spread = area_betas(G, LossWeights())  # the default
    assert uniform == [1.0] * 7 and res[0] < res[-1] and inv[0] > inv[-1]
    # spread: in proportion to 1 / resolution, mean 1 (so depth does not change its meaning)
    resolutions = [c.resolution for c in G.conv_layers]
    assert abs(sum(spread) / len(spread) - 1) < 1e-9
    assert all(abs(b * r - spread[0] * resolutions[0]) < 1e-9
               for b, r in zip(spread, resolutions))
    with pytest.raises(InputError):
        area_betas(G, LossWeights(area_layer_weights=[1.0]))


def test_visualisation(G, clip):
    edit = train_edit(G, clip, _cfg()).edit
    out = apply_edits(G, edit.latents, [edit])
    grid = mask_grid(G, out.masks[0])
    assert grid.dtype == np.uint8 and grid.shape[2] == 3 and grid.shape[1] == 7 * 96
    m = effective_mask(out.masks[0], 32)
    assert m.shape == (2, 32, 32) and 0 <= float(m.min()) and float(m.max()) <= 1
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    ov = overlay(img, torch.ones(32, 32))
    assert ov[..., 0].min() > 100 and ov[..., 2].max() == 0


def test_row_of_a_per_image_edit_applies_alone(G, clip):
    edit = train_edit(G, clip, _cfg()).edit  # 2 images
    both = apply_edits(G, edit.latents, [edit]).edited
    second = edit.row(1)
    assert second.rows() == 1 and second.latents.shape[0] == 1
    alone = apply_edits(G, second.latents, [second]).edited
    # up to float noise: a batch of one runs other conv kernels than a batch of two
    assert torch.allclose(alone[0], both[1], atol=1e-4)
    with pytest.raises(EditMismatchError, match="out of range"):
        edit.row(5)


def test_identity_loss_optional_and_loaded_from_a_real_layout_file(G, clip, tmp_path):
    from coral_core.editing.identity import IRSE50, load_irse50

    res = train_edit(G, clip, _cfg(weights=LossWeights(identity=0.1)))
    assert "identity loss off" in res.edit.info["notes"][0]
    net = IRSE50()
    assert len(net.state_dict()) >= 390  # the layout of model_ir_se50.pth (397 keys)
    torch.save(net.state_dict(), tmp_path / "model_ir_se50.pth")
    loaded = load_irse50(tmp_path / "model_ir_se50.pth")
    x = torch.rand(2, 3, 112, 112)
    assert torch.allclose(loaded(x), net.eval()(x), atol=1e-6)
    res = train_edit(G, clip, _cfg(steps=2, weights=LossWeights(identity=0.1),
                                   identity_model=tmp_path / "model_ir_se50.pth"))
    assert "notes" not in res.edit.info and res.history[-1]["identity"] >= 0
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ModelFormatError, match="IR-SE50"):
        load_irse50(tmp_path / "bad.pth")


def test_select_then_edit_freezes_the_region_after_its_share_of_the_steps(G, clip):
    """Phase one learns the region under the directional loss; phase two moves only the
    direction: the selector's weights at the end are those at the split."""
    # region pruning off: it would take its decision at another step in each run
    cfg = _cfg(steps=8, neutral="a blue circle", directional=True, select_then_edit=0.5,
               prune_tolerance=0)
    res = train_edit(G, clip, cfg)
    split = _cfg(steps=4, neutral="a blue circle", directional=True, prune_tolerance=0)
    half = train_edit(G, clip, split)
    # the first four steps are the same run (same seed, same losses), then the selector stops
    assert torch.allclose(res.edit.selector.logits, half.edit.selector.logits, atol=1e-6)
    assert not torch.allclose(res.edit.direction.delta, half.edit.direction.delta)
    with pytest.raises(InputError, match="directional"):
        train_edit(G, clip, _cfg(steps=2, select_then_edit=0.5))
