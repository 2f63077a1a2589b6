"""Training runs as a user starts, watches, stops and resumes them, on the tiny generator and
CLIP with a few steps each (under a second per run): what the edit holds, what the progress
reports say in every phase, what a cancel or a diverging loss leaves, what a per-prompt
checkpoint resumes, how a prompt joining two things is split, and the inputs refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from coral_core.editing.config import LossWeights, TrainConfig
from coral_core.editing.directions import GlobalDirection
from coral_core.editing.selectors import SegmentSelector
from coral_core.editing.trainer import train_edit
from coral_core.errors import CancelledError, InputError
from coral_core.progress import Reporter

# A few steps and a small sample bank, in well under a second; the region choice (the slowest
# phase) and the fit check only where a test asks for them
FAST = dict(prompt="a red circle", steps=4, batch=2, seed=3, prior_samples=16, prior_top=2,
            contest_steps=1, prune_batches=2, num_segments=3, segment_pieces=4,
            check_fit=False, prune_tolerance=0.0,
            # the random generator draws 39 % of its pixels past [-1, 1]: read raw (see
            # test_editing._cfg; test_clip_display.py tests the display)
            clip_sees_display=False,
            # its features are noise, so its clusters are salt and pepper: handed on as
            # outline rings they merge into one or two parts and the region choice would have
            # nothing to choose between (the rule itself: test_catalogue_boundaries.py)
            dissolve_boundaries=False)
REGION = dict(prune_tolerance=0.3)


def _cfg(**kw: Any) -> TrainConfig:
    return TrainConfig(**{**FAST, **kw})


class Recorder:
    """A host's progress callback: every report, in order."""

    def __init__(self, cancel_at: int | None = None) -> None:
        self.reports: list[tuple[int, int, dict[str, Any]]] = []
        self.reporter = Reporter(callback=self.report, poll=self.poll)
        self.cancel_at = cancel_at

    def report(self, step: int, total: int, info: dict[str, Any]) -> None:
        self.reports.append((step, total, info))

    def poll(self) -> None:
        steps = [s for s, _, i in self.reports if "losses" in i]
        if self.cancel_at is not None and len(steps) >= self.cancel_at:
            raise CancelledError("cancelled")

    def phases(self) -> list[str]:
        return [str(i["phase"]) for _, _, i in self.reports if "phase" in i]


def _direction(res) -> torch.Tensor:
    return res.edit.direction.delta.detach().clone()


# ---- what a run gives ---------------------------------------------------------------------------

def test_a_per_image_run_edits_the_seed_images_and_repeats_exactly(G, clip) -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    res = train_edit(G, clip, _cfg())
    assert torch.equal(torch.rand(3), before)  # the caller's random stream is untouched
    edit = res.edit
    assert not res.partial and res.stopped_reason == "" and len(res.history) <= 4
    assert [h["step"] for h in res.history] == sorted(h["step"] for h in res.history)
    seeds = G.mapping_ws(G.z_from_seeds([3, 4]))
    assert edit.latents is not None and torch.allclose(edit.latents, seeds)
    assert edit.mode == "per_image" and edit.rows() == 2 and edit.composite
    assert edit.catalogue is not None and edit.catalogue.pieces == 4
    assert edit.generator_fingerprint == G.fingerprint() and edit.clip_model_id == clip.model_id
    assert edit.info["steps"] == 4 and edit.info["prior"]["samples"] == 16
    again = train_edit(G, clip, _cfg())
    assert torch.equal(_direction(again), _direction(res))
    other = train_edit(G, clip, _cfg(seed=4))
    assert not torch.equal(_direction(other), _direction(res))


@pytest.mark.parametrize("mode", ["per_image", "per_prompt"])
def test_the_catalogue_an_edit_keeps_hands_on_outline_rings_as_configured(G, clip, mode
                                                                          ) -> None:
    for dissolve in (True, False):
        edit = train_edit(G, clip, _cfg(mode=mode, steps=2, dissolve_boundaries=dissolve)).edit
        assert edit.catalogue is not None and edit.catalogue.dissolve is dissolve


def test_given_latents_are_the_images_trained_on(G, clip) -> None:
    ws = G.mapping_ws(G.z_from_seeds([40, 41, 42]))
    res = train_edit(G, clip, _cfg(), latents=ws)
    assert res.edit.latents is not None and torch.equal(res.edit.latents, ws)
    assert res.edit.rows() == 3
    with pytest.raises(ValueError, match="W\\+ latents must have shape"):
        train_edit(G, clip, _cfg(), latents=ws[:, :3])


def test_a_per_prompt_run_samples_its_own_latents(G, clip) -> None:
    res = train_edit(G, clip, _cfg(mode="per_prompt"))
    assert res.edit.latents is None and res.edit.rows() == 1
    assert res.edit.catalogue is not None and res.edit.catalogue.pieces == 0  # shared ids
    with pytest.raises(InputError, match="samples its own latents"):
        train_edit(G, clip, _cfg(mode="per_prompt"),
                   latents=G.mapping_ws(G.z_from_seeds([1, 2])))
    again = train_edit(G, clip, _cfg(mode="per_prompt"))
    assert torch.equal(_direction(again), _direction(res))
    other = train_edit(G, clip, _cfg(mode="per_prompt", seed=9))
    assert not torch.equal(_direction(other), _direction(res))


def test_the_direction_starts_from_the_prior_of_the_sample_bank(G, clip) -> None:
    """One step at the least learning rate leaves the direction where it started: the seeded
    tiny offset plus the prior times ``prior_scale``."""
    base = dict(steps=1, lr=1e-8)
    without = _direction(train_edit(G, clip, _cfg(prior_samples=0, **base)))
    assert float(without.abs().max()) < 0.1  # the seeded start, 0.01 * N(0, 1)
    once = _direction(train_edit(G, clip, _cfg(prior_scale=1.0, **base)))
    twice = train_edit(G, clip, _cfg(prior_scale=2.0, **base))
    assert torch.allclose(_direction(twice) - without, 2 * (once - without), atol=1e-5)
    assert twice.edit.info["prior"] == {"samples": 16, "top": 2, "scale": 2.0, "form": "mean",
                                        "norm_w_spread": pytest.approx(
                                            float((_direction(twice) - without)[0, 0].norm()),
                                            abs=2e-3)}
    mapper = train_edit(G, clip, _cfg(direction="mapper", **base))
    assert "prior" not in mapper.edit.info


def test_the_learning_rate_is_the_config_s(G, clip) -> None:
    frozen = train_edit(G, clip, _cfg(lr=1e-8, prior_samples=0, steps=2))
    start = GlobalDirection(G.num_ws, G.w_dim, 2, seed=3, scale=G.w_spread())
    assert torch.allclose(_direction(frozen), start.delta.detach(), atol=1e-7)
    moved = train_edit(G, clip, _cfg(lr=0.05, prior_samples=0, steps=2))
    assert not torch.equal(_direction(moved), start.delta.detach())
    assert moved.edit.info["lr"] == {"direction": 0.05, "selector": 0.05}


# ---- supplied segments -------------------------------------------------------------------------

def test_supplied_segments_replace_the_catalogue(G, clip) -> None:
    segs = torch.zeros(2, 2, 16, 16)
    segs[:, 0, :8] = 1.5  # out of range: clamped to 1
    segs[:, 1, 8:] = 1
    res = train_edit(G, clip, _cfg(**REGION), segments=segs)
    assert res.edit.catalogue is None and res.edit.segments is not None
    assert float(res.edit.segments.max()) == 1.0 and res.edit.segments.shape == (2, 2, 16, 16)
    assert res.edit.selector.logits.shape == (2, len(G.conv_layers), 2)  # type: ignore[union-attr]
    one = train_edit(G, clip, _cfg(**REGION), segments=torch.ones(1, 16, 16))  # [B, H, W]: one mask
    assert one.edit.segments is not None and one.edit.segments.shape == (1, 1, 16, 16)
    assert "region_pruning" not in one.edit.info  # one segment: nothing to choose


@pytest.mark.parametrize("segments,fields,expect", [
    (torch.ones(2, 1, 1, 16, 16), {}, "segments must be \\[B, K, H, W\\] masks"),
    (torch.ones(2, 2, 16, 16), {"variant": "can"}, "used by segment selection"),
    (torch.ones(2, 2, 16, 16), {"mode": "per_prompt"}, "segments are per image"),
    (torch.ones(3, 2, 16, 16), {}, "3 segment masks for 2 images"),
])
def test_segments_that_do_not_fit_are_refused(G, clip, segments, fields, expect) -> None:
    with pytest.raises(InputError, match=expect):
        train_edit(G, clip, _cfg(**fields), segments=segments)


# ---- the region choice -------------------------------------------------------------------------

def test_the_region_choice_runs_at_its_step_and_is_recorded(G, clip) -> None:
    rec = Recorder()
    res = train_edit(G, clip, _cfg(steps=5, prune_at=0.5, **REGION), reporter=rec.reporter)
    pruning = res.edit.info["region_pruning"]
    assert pruning["at_step"] == 3 and pruning["tolerance"] == 0.3  # ceil(0.5 * 5)
    assert "region contest and pruning" in rec.phases()
    assert res.edit.info["region_choice_seconds"] >= 0
    assert "region_pruning" not in train_edit(G, clip, _cfg()).edit.info
    assert "region_pruning" not in train_edit(G, clip, _cfg(no_masks=True, **REGION)).edit.info


def test_the_contest_s_winner_is_credited_with_steps(G, clip) -> None:
    """Per image, when every image's regions contested: the winner's own steps count, at most
    half of what is left after the choice (the schedule moves on as if they ran)."""
    cfg = _cfg(steps=6, prune_at=0.3, contest_steps=3, **REGION)  # the choice at step 2
    res = train_edit(G, clip, cfg)
    pruning = res.edit.info["region_pruning"]
    assert pruning["removed"].get("contest")  # two segments or more on each image
    assert pruning["steps_credited_to_the_contest"] == 2  # (6 - 2) // 2, under 3
    assert [h["step"] for h in res.history] == [1, 2, 5, 6]
    one = train_edit(G, clip, _cfg(steps=6, prune_at=0.3, contest_steps=1, **REGION))
    assert [h["step"] for h in one.history] == [1, 2, 4, 5, 6]  # the winner's one step
    off = train_edit(G, clip, _cfg(steps=6, prune_at=0.3, contest_steps=3,
                                   credit_contest=False, **REGION))
    assert "steps_credited_to_the_contest" not in off.edit.info["region_pruning"]
    assert len(off.history) == 6


def test_a_hardened_selection_is_baked_into_the_saved_weights(G, clip, tmp_path) -> None:
    res = train_edit(G, clip, _cfg(steps=3, prune_at=0.3, **REGION))
    selector = res.edit.selector
    assert isinstance(selector, SegmentSelector) and selector.gate is None
    weights = selector.weights()
    assert bool(((weights == 0) | (weights > 0)).all())
    from coral_core.editing.edit import Edit

    loaded = Edit.load(res.edit.save(tmp_path / "e.safetensors"))
    assert torch.equal(loaded.selector.weights(), weights)  # type: ignore[union-attr]


# ---- progress, cancel and divergence ------------------------------------------------------------

def test_every_phase_reports_progress(G, clip, tmp_path: Path) -> None:
    rec = Recorder()  # a fresh cache folder: the catalogue and the sample bank are built
    res = train_edit(G, clip, _cfg(steps=4, progress_every=2, check_fit=True,
                                   catalogue_dir=tmp_path), reporter=rec.reporter)
    phases = rec.phases()
    assert phases[0] == "segment catalogue"
    assert any(p.startswith("sample bank") and p.endswith("16/16") for p in phases)
    steps = [(s, t, i) for s, t, i in rec.reports if "losses" in i]
    assert [s for s, _, _ in steps] == [h["step"] for h in res.history]
    assert [i["losses"] for _, _, i in steps] == res.history
    assert all(t == 4 for _, t, _ in steps)
    previews = [s for s, _, i in steps if i.get("preview") is not None]
    assert previews == [s for s in (2, 4) if s in [h["step"] for h in res.history]]
    assert all(i["masks"] is not None for _, _, i in steps if i.get("preview") is not None)
    assert all("mask_area" in i for _, _, i in steps)


def test_a_prompt_longer_than_the_clip_reads_is_said_before_the_run(G, clip) -> None:
    rec = Recorder()
    long_prompt = "a red circle " + "very " * 100
    train_edit(G, clip, _cfg(prompt=long_prompt, steps=1), reporter=rec.reporter)
    first = rec.reports[0]
    assert first[0] == 0 and first[2]["phase"] == "prompt"
    assert "the rest is ignored" in first[2]["warning"]
    assert not any("warning" in i for _, _, i in Recorder().reports)


def test_a_cancel_keeps_the_best_edit_so_far(G, clip) -> None:
    rec = Recorder(cancel_at=2)
    res = train_edit(G, clip, _cfg(steps=6), reporter=rec.reporter)
    assert res.partial and res.stopped_reason == "cancelled after step 2"
    assert len(res.history) == 2 and res.edit.info["partial"]
    assert res.edit.info["stopped_reason"] == "cancelled after step 2"
    full = train_edit(G, clip, _cfg(steps=6))
    assert not torch.equal(_direction(full), _direction(res))
    with pytest.raises(CancelledError):  # during the set-up: nothing to keep
        train_edit(G, clip, _cfg(steps=6), reporter=Recorder(cancel_at=0).reporter)
    reporter = Reporter()
    reporter.callback = lambda step, total, info: reporter.cancel()  # at the last set-up report
    with pytest.raises(InputError, match="stopped before any step completed"):
        train_edit(G, clip, _cfg(steps=6, prior_samples=0), reporter=reporter)


def test_a_cancel_restores_the_lowest_loss_seen(G, clip) -> None:
    """The edit returned after a cancel is the state whose loss was lowest: re-running that
    many steps and keeping the best by hand gives the same direction."""
    rec = Recorder(cancel_at=3)
    res = train_edit(G, clip, _cfg(steps=6, lr=0.5), reporter=rec.reporter)
    totals = [h["total"] for h in res.history]
    best = totals.index(min(totals)) + 1
    short = train_edit(G, clip, _cfg(steps=6, lr=0.5), reporter=Recorder(cancel_at=best).reporter)
    if best == len(totals):  # the last state seen: equal to a run cancelled there
        assert torch.equal(_direction(short), _direction(res))
    assert res.partial


def test_a_diverging_run_stops_and_returns_its_last_good_edit(G, clip, monkeypatch) -> None:
    """The loss turns NaN at step 3: the run stops there, partial, with the state that step 2
    started from (its loss was the last finite one), which the file can hold."""
    from coral_core.editing import trainer

    calls = []
    real = trainer.CoralObjective.__call__

    def diverging(self, *args, **kwargs):
        loss = real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) >= 3:
            loss.terms["total"] = float("nan")
        return loss

    cfg = _cfg(steps=6)
    one_step = train_edit(G, clip, _cfg(steps=1))  # step 1's update
    monkeypatch.setattr(trainer.CoralObjective, "__call__", diverging)
    res = train_edit(G, clip, cfg)
    assert res.partial and res.stopped_reason == "loss became nan at step 3"
    assert len(res.history) == 2
    assert torch.allclose(_direction(res), _direction(one_step), atol=1e-6)



# ---- per-prompt checkpoints --------------------------------------------------------------------

def test_a_per_prompt_run_resumes_from_its_checkpoint_and_clears_it(G, clip,
                                                                    tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    cfg = _cfg(mode="per_prompt", steps=4, checkpoint=ckpt, checkpoint_every=2)
    stopped = train_edit(G, clip, cfg, reporter=Recorder(cancel_at=3).reporter)
    assert stopped.partial and ckpt.is_file()  # written at step 2, kept for the resume
    resumed = train_edit(G, clip, cfg)
    assert resumed.edit.info["resumed_from_step"] == 2 and resumed.edit.info["steps"] == 4
    assert [h["step"] for h in resumed.history] == [3, 4]
    assert not ckpt.exists()  # complete: nothing to resume
    whole = train_edit(G, clip, cfg)
    assert "resumed_from_step" not in whole.edit.info
    assert torch.allclose(_direction(resumed), _direction(whole), atol=1e-5)


def test_a_per_image_run_writes_no_checkpoint(G, clip, tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    train_edit(G, clip, _cfg(steps=2, checkpoint=ckpt, checkpoint_every=1),
               reporter=Recorder(cancel_at=1).reporter)
    assert not ckpt.exists()


# ---- prompts that join two things --------------------------------------------------------------

def test_a_prompt_joining_two_things_is_learned_one_edit_per_thing(G, clip) -> None:
    prompt = "a red circle on a green background"
    res = train_edit(G, clip, _cfg(prompt=prompt, steps=2, mode="per_prompt"))
    assert [e.prompt for e in res.edit.chain()] == ["a red circle", "a green background"]
    assert res.edit.info["clauses"] == ["a red circle", "a green background"]
    assert len(res.history) == 4
    whole = train_edit(G, clip, _cfg(prompt=prompt, steps=2, split_clauses=False))
    assert whole.edit.then is None and whole.edit.prompt == prompt
    neutral = train_edit(G, clip, _cfg(prompt=prompt, steps=1, neutral="a blue circle"))
    assert neutral.edit.then is None
    many = "a red circle and a blue square and a cyan triangle and a grey star and a pink sky"
    assert train_edit(G, clip, _cfg(prompt=many, steps=1, batch=1)).edit.then is None  # 5
    four = "a red circle and a blue square and a cyan triangle and a grey star"
    assert len(train_edit(G, clip, _cfg(prompt=four, steps=1, batch=1)).edit.chain()) == 4
    repeated = train_edit(G, clip, _cfg(prompt="a red circle and a red circle", steps=1))
    assert repeated.edit.then is None  # one thing, named twice


def test_a_cancel_between_clauses_keeps_the_clauses_done(G, clip, tmp_path: Path) -> None:
    """Each clause keeps its own checkpoint beside the one asked for; a finished clause's is
    cleared, the cancelled one's kept for the resume."""
    rec = Recorder(cancel_at=3)
    ckpt = tmp_path / "c.ckpt"
    res = train_edit(G, clip, _cfg(prompt="a red circle on a green background", steps=2,
                                   mode="per_prompt", checkpoint=ckpt, checkpoint_every=1),
                     reporter=rec.reporter)
    assert res.partial and res.edit.info["clauses"] == ["a red circle", "a green background"]
    assert [e.prompt for e in res.edit.chain()] == ["a red circle", "a green background"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt.clause1"]
    early = train_edit(G, clip, _cfg(prompt="a red circle on a green background", steps=3),
                       reporter=Recorder(cancel_at=2).reporter)
    assert early.partial and early.edit.info["clauses"] == ["a red circle"]
    assert early.edit.then is None


# ---- what the edit keeps ------------------------------------------------------------------------

def test_what_each_form_keeps_for_apply(G, clip) -> None:
    can = train_edit(G, clip, _cfg(variant="can", **REGION))
    assert can.edit.info["region_pruning"]["at_step"] == 3  # CAN prunes over the clusters
    gated = can.edit.selector.cluster_gate is not None  # type: ignore[union-attr]
    assert (can.edit.catalogue is not None) == gated and can.edit.composite == gated
    plain_can = train_edit(G, clip, _cfg(variant="can"))
    assert plain_can.edit.catalogue is None and not plain_can.edit.composite
    assert not train_edit(G, clip, _cfg(steps=1, no_masks=True)).edit.composite
    assert not train_edit(G, clip, _cfg(steps=1, composite=False)).edit.composite
    kept = train_edit(G, clip, _cfg(steps=1, max_layer=5, only_layers=[2, 3, 4]))
    assert kept.edit.max_layer == 5 and kept.edit.only_layers == [2, 3, 4]


def test_a_per_prompt_edit_carries_its_scene_check(G, clip) -> None:
    res = train_edit(G, clip, _cfg(mode="per_prompt", check_fit=True, prior_top=2,
                                   prior_samples=16))
    if res.edit.info.get("prompt_fit", {}).get("aimless"):
        pytest.skip("the tiny CLIP sees nothing of the prompt")
    assert res.edit.scene_check is not None and res.edit.scene_check_clip == clip.fingerprint()
    small = train_edit(G, clip, _cfg(mode="per_prompt", check_fit=True, prior_top=8,
                                     prior_samples=16))
    assert small.edit.scene_check is None and small.edit.scene_check_clip == ""
    off = train_edit(G, clip, _cfg(mode="per_prompt"))
    assert off.edit.scene_check is None


def test_the_identity_loss_is_off_with_a_note_without_its_file(G, clip) -> None:
    res = train_edit(G, clip, _cfg(steps=1, weights=LossWeights(identity=0.1)))
    assert res.edit.info["notes"] == ["identity loss off: no IR-SE50 file (model_ir_se50.pth) "
                                      "was given"]
    assert "notes" not in train_edit(G, clip, _cfg(steps=1)).edit.info


def test_a_prompt_the_clip_cannot_see_trains_nothing_and_says_so(G, clip) -> None:
    res = train_edit(G, clip, _cfg(check_fit=True, prompt="a red circle"))
    fit = res.edit.info["prompt_fit"]
    if fit.get("aimless"):
        assert res.history == [] and float(_direction(res).abs().max()) == 0
        assert "finds nothing like it" in res.edit.info["warnings"][0]


def test_the_learning_rate_ramps_down_over_the_last_quarter() -> None:
    from coral_core.editing.trainer import _cosine_rampdown

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = _cosine_rampdown(opt, 8)
    rates = []
    for _ in range(8):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[:7] == [1.0] * 7
    assert rates[7] == pytest.approx(0.5)  # t = 7/8: half way down the quarter's cosine
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


# ---- with a CLIP whose answers are known -----------------------------------------------------------

@pytest.fixture(scope="module")
def colour_clip():
    from colour_clip import ColourClip

    return ColourClip()


def _blue_share(images: torch.Tensor, clip) -> torch.Tensor:
    return clip.encode_image(images)[:, 2]


def _colour_cfg(tmp_path: Path, **kw: Any) -> TrainConfig:
    """The fit check on (absent check off: "a picture" names nothing this CLIP reads), over a
    bank of 64 samples, in a fresh cache folder."""
    return _cfg(**{"check_fit": True, "check_absent": False, "prior_samples": 64,
                   "prior_top": 4, "steps": 6, "catalogue_dir": tmp_path, **kw})


def test_an_edit_moves_the_pictures_towards_what_the_prompt_names(G, colour_clip,
                                                                  tmp_path: Path) -> None:
    from coral_core.editing.apply import apply_edits

    res = train_edit(G, colour_clip, _colour_cfg(tmp_path, prompt="a blue picture"))
    fit = res.edit.info["prompt_fit"]
    assert fit["relative_range"] >= 0.25 and fit["already"] == [False, False]
    assert all(0.5 <= r <= 1.5 for r in fit["reach"])  # as far as the bank's best pictures
    assert "warnings" not in res.edit.info and len(res.history) == 6
    out = apply_edits(G, res.edit.latents, [res.edit])
    assert bool((_blue_share(out.edited, colour_clip) >
                 _blue_share(out.original, colour_clip) + 0.02).all())
    assert res.edit.scene_check is None  # per image: its scenes were checked here


def test_a_prompt_the_clip_cannot_see_changes_nothing_and_says_why(G, colour_clip,
                                                                   tmp_path: Path) -> None:
    from coral_core.editing.apply import apply_edits

    res = train_edit(G, colour_clip, _colour_cfg(tmp_path, prompt="qwzx blorp"))
    assert res.history == [] and res.edit.info["prompt_fit"]["relative_range"] == 0.0
    assert res.edit.info["warnings"][0].startswith(
        "prompt 'qwzx blorp': the CLIP finds nothing like it in this generator's pictures")
    out = apply_edits(G, res.edit.latents, [res.edit])
    assert torch.equal(out.edited, out.original)
    mapper = train_edit(G, colour_clip, _colour_cfg(tmp_path, prompt="qwzx blorp",
                                                    direction="mapper"))
    assert mapper.history == []


def test_an_edit_that_overshoots_leaves_that_picture_as_it_was(G, colour_clip,
                                                               tmp_path: Path) -> None:
    from coral_core.editing.apply import apply_edits

    res = train_edit(G, colour_clip, _colour_cfg(tmp_path, prompt="a red picture"))
    reach = res.edit.info["prompt_fit"]["reach"]
    far = [i for i, r in enumerate(reach) if r > 1.5]
    assert far, reach  # seed 3's second picture goes 2.9 times the way
    assert any(w.startswith(f"prompt 'a red picture': the edit of image(s) "
                            f"{', '.join(map(str, far))} moved the CLIP")
               for w in res.edit.info["warnings"])
    out = apply_edits(G, res.edit.latents, [res.edit])
    for i in range(2):
        assert torch.equal(out.edited[i], out.original[i]) == (i in far)


def test_a_per_prompt_edit_s_fit_reads_the_bank_only(G, colour_clip, tmp_path: Path) -> None:
    res = train_edit(G, colour_clip, _colour_cfg(tmp_path, prompt="a blue picture",
                                                 mode="per_prompt"))
    fit = res.edit.info["prompt_fit"]
    assert fit["already"] == [] and "reach" not in fit and fit["relative_range"] >= 0.25
    assert res.edit.scene_check is not None and res.edit.scene_check_clip == "colourclip1"
    assert torch.allclose(res.edit.scene_check.text, colour_clip.encode_text(
        ["a blue picture"])[0])
    small = train_edit(G, colour_clip, _colour_cfg(tmp_path, prompt="a blue picture",
                                                   mode="per_prompt", prior_samples=8))
    assert small.edit.scene_check is None  # 8 samples: no best group of 4 apart from the rest
    blind = train_edit(G, colour_clip, _colour_cfg(tmp_path, prompt="qwzx blorp",
                                                   mode="per_prompt"))
    assert blind.history == []


def test_without_masks_or_a_bank_there_is_no_fit_check(G, colour_clip, tmp_path: Path) -> None:
    for fields in ({"no_masks": True}, {"prior_samples": 0}):
        res = train_edit(G, colour_clip, _colour_cfg(tmp_path, prompt="qwzx blorp",
                                                     mode="per_prompt", **fields))
        assert "prompt_fit" not in res.edit.info and res.edit.scene_check is None, fields
        assert len(res.history) == 6


def test_the_directional_loss_trains_from_the_neutral_prompt(G, colour_clip,
                                                             tmp_path: Path) -> None:
    from coral_core.editing.apply import apply_edits

    res = train_edit(G, colour_clip, _colour_cfg(tmp_path, prompt="a blue picture",
                                                 neutral="a red picture", directional=True,
                                                 check_fit=False))
    assert res.edit.info["directional"] and res.edit.neutral == "a red picture"
    out = apply_edits(G, res.edit.latents, [res.edit])
    assert bool((_blue_share(out.edited, colour_clip) >
                 _blue_share(out.original, colour_clip)).all())


def test_segments_count_against_the_latents_given(G, clip) -> None:
    ws = G.mapping_ws(G.z_from_seeds([60, 61, 62]))
    segs = torch.zeros(3, 2, 16, 16, dtype=torch.float64)
    segs[:, 0] = -0.5  # out of range: clamped to 0
    segs[:, 1] = 1
    res = train_edit(G, clip, _cfg(steps=1), latents=ws, segments=segs)
    assert res.edit.segments is not None and res.edit.segments.dtype == torch.float32
    assert float(res.edit.segments[:, 0].max()) == 0.0
    with pytest.raises(InputError) as err:
        train_edit(G, clip, _cfg(steps=1), latents=ws, segments=segs[:2])
    assert str(err.value) == "2 segment masks for 3 images"
    with pytest.raises(InputError) as err:
        train_edit(G, clip, _cfg(variant="can"), segments=segs)
    assert str(err.value) == "supplied segments are used by segment selection (variant 'ss')"
    with pytest.raises(InputError) as err:
        train_edit(G, clip, _cfg(mode="per_prompt"), segments=segs)
    assert str(err.value) == ("supplied segments are per image; use the catalogue for "
                              "per-prompt edits")


def test_truncation_pulls_the_seed_latents_towards_the_average(G, clip) -> None:
    res = train_edit(G, clip, _cfg(steps=1, truncation=0.5))
    expect = G.mapping_ws(G.z_from_seeds([3, 4]), 0.5)
    assert res.edit.latents is not None and torch.allclose(res.edit.latents, expect)


def test_a_resumed_run_after_the_region_choice_keeps_it(G, clip, tmp_path: Path) -> None:
    """The checkpoint holds the region choice's gate; the resumed run neither chooses again nor
    relearns the hardened selection, and ends where the whole run does; a per-prompt run's
    contest is not credited with steps (its checkpoints keep no credit)."""
    ckpt = tmp_path / "run.ckpt"
    cfg = _cfg(mode="per_prompt", steps=4, prune_at=0.25, checkpoint=ckpt, checkpoint_every=2,
               **REGION)
    stopped = train_edit(G, clip, cfg, reporter=Recorder(cancel_at=3).reporter)
    assert stopped.partial and ckpt.is_file()
    resumed = train_edit(G, clip, cfg)
    assert "region_pruning" not in resumed.edit.info  # chosen before the checkpoint
    whole = train_edit(G, clip, cfg)
    assert len(whole.history) == 4 and whole.edit.info["region_pruning"]["at_step"] == 1
    assert torch.allclose(_direction(resumed), _direction(whole), atol=1e-5)
    assert torch.equal(resumed.edit.selector.weights(), whole.edit.selector.weights())


def test_select_then_edit_freezes_the_selection_for_the_last_steps(G, clip) -> None:
    rec = Recorder()
    train_edit(G, clip, _cfg(steps=4, select_then_edit=0.5, progress_every=1, directional=True,
                             neutral="a blue circle"),
               reporter=rec.reporter)
    masks = [i["masks"] for _, _, i in rec.reports if i.get("masks") is not None]
    assert len(masks) == 4

    def same(a, b) -> bool:
        return all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a, b))

    assert not same(masks[1], masks[2])  # step 2 still moved the selection
    assert same(masks[2], masks[3])  # from step 3 on (past half) it is frozen


def test_a_cancel_returns_the_state_of_the_lowest_loss(G, clip) -> None:
    """Per prompt (no schedule): the state at the start of step k is the edit of a run of k-1
    steps, so the returned edit can be named exactly."""
    cfg = dict(mode="per_prompt", steps=8, lr=0.3)
    res = train_edit(G, clip, _cfg(**cfg), reporter=Recorder(cancel_at=4).reporter)
    totals = [h["total"] for h in res.history]
    best = totals.index(min(totals)) + 1
    if best == 1:
        pytest.skip("the first state was the best: nothing to tell apart")
    shorter = train_edit(G, clip, _cfg(**{**cfg, "steps": best - 1}))
    assert torch.allclose(_direction(res), _direction(shorter), atol=1e-6)


def test_an_edit_that_changes_nothing_visible_is_flagged(G, clip) -> None:
    res = train_edit(G, clip, _cfg(steps=2, lr=1e-8, prior_samples=0))
    assert any("changes 0.00 % of the pixels visibly" in w for w in res.edit.info["warnings"])
    assert res.edit.info["memory_options"] and res.edit.info["setup_seconds"] >= 0


def test_an_attention_edit_without_the_composite_keeps_no_region(G, clip) -> None:
    res = train_edit(G, clip, _cfg(variant="can", composite=False, **REGION))
    assert not res.edit.composite


def test_a_long_prompt_warning_says_how_long(G, colour_clip) -> None:
    rec = Recorder()
    prompt = " ".join(["blue"] * 20)
    train_edit(G, colour_clip, _cfg(prompt=prompt, steps=1, prior_samples=0),
               reporter=rec.reporter)
    assert rec.reports[0][2]["warning"] == ("the CLIP reads 16 tokens and the prompt has 20; "
                                            "the rest is ignored")


def test_clause_warnings_are_gathered_on_the_first_edit(G, colour_clip, tmp_path: Path) -> None:
    res = train_edit(G, colour_clip, _colour_cfg(tmp_path, prompt="qwzx blorp and a blue picture",
                                                 steps=2))
    assert [e.prompt for e in res.edit.chain()] == ["qwzx blorp", "a blue picture"]
    assert res.edit.info["warnings"][0].startswith("prompt 'qwzx blorp': the CLIP finds nothing")
    assert len(res.history) == 2  # the unseen clause trains nothing


def test_a_mapper_edit_is_not_judged_for_reach(G, colour_clip, tmp_path: Path) -> None:
    res = train_edit(G, colour_clip, _colour_cfg(tmp_path, prompt="a blue picture",
                                                 direction="mapper"))
    assert "reach" not in res.edit.info["prompt_fit"]


def test_a_checkpoint_of_another_run_is_not_resumed(G, clip, tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    cfg = _cfg(mode="per_prompt", steps=4, checkpoint=ckpt, checkpoint_every=2)
    train_edit(G, clip, cfg, reporter=Recorder(cancel_at=3).reporter)
    assert ckpt.is_file()
    other = train_edit(G, clip, _cfg(mode="per_prompt", steps=4, checkpoint=ckpt,
                                     checkpoint_every=2, prompt="a blue square"))
    assert "resumed_from_step" not in other.edit.info and len(other.history) == 4


def test_the_direction_is_in_units_of_the_generator_s_spread(G, clip) -> None:
    """The prior's offset, in W units, enters the direction divided by the w spread."""
    from coral_core.editing.prior import retrieval_prior, sample_bank_for

    base = dict(steps=1, lr=1e-8)
    res = train_edit(G, clip, _cfg(prior_scale=1.0, **base))
    without = _direction(train_edit(G, clip, _cfg(prior_samples=0, **base)))
    scale = res.edit.direction.scale  # type: ignore[union-attr]
    assert torch.allclose(scale, G.w_spread())
    bank = sample_bank_for(G, clip, 16)
    offset = retrieval_prior(bank, clip.encode_text(["a red circle"]), 2, "mean")
    assert torch.allclose((_direction(res) - without)[0] * scale, offset.expand(G.num_ws, -1),
                          atol=1e-4)


def test_a_mapper_per_image_edit_takes_part_in_the_region_choice(G, clip) -> None:
    res = train_edit(G, clip, _cfg(direction="mapper", steps=6, prune_at=0.3, **REGION))
    assert res.edit.info["region_pruning"]["at_step"] == 2


def test_the_directional_loss_changes_what_is_learned(G, colour_clip, tmp_path: Path) -> None:
    fields = dict(prompt="a blue picture", neutral="a red picture", check_fit=False)
    directional = train_edit(G, colour_clip, _colour_cfg(tmp_path, directional=True, **fields))
    plain = train_edit(G, colour_clip, _colour_cfg(tmp_path, **fields))
    assert not torch.allclose(_direction(directional), _direction(plain), atol=1e-4)


def test_a_large_bank_reports_its_progress_with_an_estimate(G, clip, tmp_path: Path) -> None:
    rec = Recorder()
    train_edit(G, clip, _cfg(steps=1, prior_samples=128, catalogue_dir=tmp_path),
               reporter=rec.reporter)
    bank = [(s, i["phase"]) for s, _, i in rec.reports
            if str(i.get("phase", "")).startswith("sample bank")]
    assert all(s == 0 for s, _ in bank)
    assert any(p.startswith("sample bank 64/128, about ") and p.endswith(" left")
               for _, p in bank), bank


def test_a_run_that_ends_before_its_first_checkpoint_finishes_cleanly(G, clip,
                                                                      tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    res = train_edit(G, clip, _cfg(mode="per_prompt", steps=2, checkpoint=ckpt,
                                   checkpoint_every=5))
    assert not res.partial and not ckpt.exists()
    assert 0 <= res.edit.info["region_choice_seconds"] <= res.edit.info["wall_seconds"]


def test_the_named_pieces_are_found_per_image_and_recorded(G, clip, monkeypatch) -> None:
    import coral_core.editing.trainer as trainer

    asked: list[str] = []

    def named(clip, images, segs, prompt, min_share, bank, top, as_displayed=True):
        asked.append(prompt)
        return [0, None][:images.shape[0]]

    monkeypatch.setattr(trainer, "named_pieces", named)
    res = train_edit(G, clip, _cfg(steps=4, prune_at=0.5, **REGION))
    assert asked == ["a red circle"]
    assert res.edit.info["region_pruning"]["named_pieces"] == [0, None]
    contest = res.edit.info["region_pruning"]["removed"].get("contest") or []
    assert [(r["winner"], r.get("named")) for r in contest if r["row"] == 0] == [(0, True)]
    train_edit(G, clip, _cfg(steps=4, prune_at=0.5, locate_named=False, **REGION))
    train_edit(G, clip, _cfg(steps=4, prune_at=0.5, mode="per_prompt", **REGION))
    assert asked == ["a red circle"]  # neither switched off nor per prompt asks
