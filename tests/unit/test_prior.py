"""The CLIP-retrieval prior: its arithmetic, its cached sample bank, and the trainer's start."""
from __future__ import annotations

import pytest
import torch

from coral_core.editing import prior as prior_module
from coral_core.editing.memory import images_per_chunk
from coral_core.editing.config import PRIOR_FORMS
from coral_core.editing.prior import SampleBank, retrieval_prior, sample_bank_for
from coral_core.editing.trainer import TrainConfig, train_edit
from coral_core.errors import InputError


def test_mean_prior_is_the_best_ranked_samples_minus_the_mean_of_all() -> None:
    ws = torch.tensor([[0.0, 1], [10, 12], [0, 2], [10, 14], [0, 1], [1, 0]])  # w_dim 2
    text = torch.tensor([1.0, 0.0])
    emb = torch.tensor([[0.1, 1], [0.9, 0], [0.2, 1], [0.8, 0], [0.0, 1], [0.3, 1]])
    bank = SampleBank(ws, emb, "g", "c")
    got = retrieval_prior(bank, text, top=2, form="mean")  # samples 1 and 3 score highest
    want = ws[[1, 3]].mean(0) - ws.mean(0)
    assert torch.allclose(got, want)
    # the prompt decides the direction: the other end of the ranking points the other way
    assert float(retrieval_prior(bank, -text, top=2, form="mean") @ got) < 0
    # asking for more than the bank holds uses every sample: no direction at all, either form
    for form in PRIOR_FORMS:
        assert torch.allclose(retrieval_prior(bank, text, top=100, form=form), torch.zeros(2))


def _confounded_bank() -> tuple[SampleBank, torch.Tensor]:
    """w = (the prompt's attribute, another attribute), each 0 or 1, four samples of each
    pair; the CLIP sees both (and what every picture shares), and its text for the prompt
    also leans to the other attribute, so the best-ranked samples all have both."""
    g = torch.Generator().manual_seed(0)
    pairs = [(a, c) for a in (0.0, 1.0) for c in (0.0, 1.0) for _ in range(4)]
    ws = torch.tensor(pairs)
    emb = torch.tensor([[a, c, 1.0] for a, c in pairs]) + 0.01 * torch.randn(16, 3, generator=g)
    return SampleBank(ws, emb / emb.norm(dim=1, keepdim=True), "g", "c"), \
        torch.tensor([1.0, 0.5, 0.0])


def test_matched_prior_moves_the_prompt_s_attribute_and_not_what_it_is_ranked_with() -> None:
    bank, text = _confounded_bank()
    matched = retrieval_prior(bank, text, top=4, form="matched")
    mean = retrieval_prior(bank, text, top=4, form="mean")
    assert torch.allclose(mean, torch.tensor([0.5, 0.5]), atol=1e-6)  # carries the other
    assert torch.allclose(matched, torch.tensor([1.0, 0.0]), atol=1e-6)  # only the prompt's
    # the text's length does not matter, only its direction
    assert torch.allclose(retrieval_prior(bank, 3 * text, top=4, form="matched"), matched)
    with pytest.raises(ValueError, match="prior form 'median'"):
        retrieval_prior(bank, text, top=4, form="median")


def test_matched_partners_come_from_the_pictures_that_score_low_for_the_prompt() -> None:
    """More pictures with both attributes than the best group holds: the ones left out look
    exactly like the best but are no partner (their difference would be no change at all)."""
    bank, text = _confounded_bank()
    extra = SampleBank(torch.cat([bank.ws, bank.ws[-4:]]),
                       torch.cat([bank.embeddings, bank.embeddings[-4:]]), "g", "c")
    assert torch.allclose(retrieval_prior(extra, text, top=4, form="matched"),
                          torch.tensor([1.0, 0.0]), atol=1e-6)


def test_an_unknown_prior_form_is_refused_before_training(G) -> None:
    with pytest.raises(InputError, match="prior_form must be one of"):
        TrainConfig(prompt="a red circle", prior_form="median").validate(G)


def test_bank_is_cached_per_generator_and_clip(G, clip, tmp_path, monkeypatch) -> None:
    first = sample_bank_for(G, clip, 8, tmp_path)
    assert first.ws.shape == (8, G.w_dim) and first.embeddings.shape[0] == 8
    files = list(tmp_path.glob("bank-*.safetensors"))
    assert len(files) == 1 and clip.fingerprint() in files[0].name
    # embeddings are the CLIP's of the generator's own pictures of those w
    with torch.no_grad():
        img = G.synthesize(first.ws[:2, None].expand(-1, G.num_ws, -1),
                           noise=G.make_noise(2, "const"))
        assert torch.allclose(clip.encode_image(img), first.embeddings[:2], atol=1e-5)

    def no_rebuild(*_a, **_k):
        raise AssertionError("a cached bank was rebuilt")
    monkeypatch.setattr(prior_module, "build_sample_bank", no_rebuild)
    again = sample_bank_for(G, clip, 8, tmp_path)
    assert torch.equal(again.ws, first.ws) and torch.equal(again.embeddings, first.embeddings)
    # a corrupt cache entry is rebuilt, never trusted or fatal
    monkeypatch.undo()
    files[0].write_bytes(b"not a safetensors file")
    rebuilt = sample_bank_for(G, clip, 8, tmp_path)
    assert torch.equal(rebuilt.ws, first.ws)


def test_another_clip_gets_its_own_bank(G, clip, tmp_path) -> None:
    import copy

    other = copy.deepcopy(clip)
    with torch.no_grad():
        next(other.model.parameters()).add_(0.5)
    other._fingerprint = None  # the copy's parameters changed: hash them anew
    assert other.fingerprint() != clip.fingerprint()
    sample_bank_for(G, clip, 4, tmp_path)
    sample_bank_for(G, other, 4, tmp_path)
    assert len(list(tmp_path.glob("bank-*.safetensors"))) == 2


def test_training_starts_from_the_prior(G, clip, tmp_path) -> None:
    """With a vanishing learning rate the trained direction is where training started: the
    scaled prior (in w-spread units, on every W+ entry) plus the usual tiny random start; a
    free direction starts from the mean form unless another is asked for."""
    common = dict(prompt="a red circle", steps=1, batch=1, seed=4, lr=1e-8,
                  catalogue_dir=tmp_path, prior_samples=16, prior_top=4, prior_scale=3.0,
                  along_prior=False)
    without = train_edit(G, clip, TrainConfig(**{**common, "prior_samples": 0})).edit
    assert "prior" not in without.info
    bank = sample_bank_for(G, clip, 16, tmp_path)
    text = clip.encode_text(["a red circle"])
    for asked, form in ((None, "mean"), ("matched", "matched")):
        with_prior = train_edit(G, clip, TrainConfig(**common, prior_form=asked)).edit
        expected = 3.0 * retrieval_prior(bank, text, 4, form) / G.w_spread()
        moved = with_prior.direction.delta - without.direction.delta
        assert torch.allclose(moved, expected.expand_as(moved), atol=1e-5)
        assert float(expected.norm()) > 0
        info = with_prior.info["prior"]
        assert info["samples"] == 16 and info["scale"] == 3 and info["form"] == form
        assert info["norm_w_spread"] == pytest.approx(float(expected.norm()), rel=1e-3)


def _cosines_to(delta: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """[rows, num_ws] cosine of each W+ entry's offset with ``axis``."""
    return torch.nn.functional.cosine_similarity(delta, axis.expand_as(delta), dim=-1)


def test_held_rows_stay_on_the_axis_and_free_rows_move_as_they_like() -> None:
    from coral_core.editing.directions import GlobalDirection

    d = GlobalDirection(num_ws=3, w_dim=4, rows=2, init_std=1.0)
    axis = torch.tensor([3.0, 0, 4, 0])
    d.axis, d.held = axis / 5, torch.tensor([True, False])
    free_before = d.delta[1].detach().clone()
    want = (d.delta[0].detach() @ (axis / 5))[:, None] * (axis / 5)
    d.hold_to_axis()
    assert torch.allclose(d.delta[0], want)  # each entry keeps its own gain along the axis
    assert torch.equal(d.delta[1], free_before)
    rival = GlobalDirection(num_ws=3, w_dim=4, rows=2)
    rival.hold_like(d)
    rival.hold_to_axis()
    assert _cosines_to(rival.delta[:1], axis).abs().min() > 0.999
    d.held = torch.tensor([False, False])  # nobody held: nothing moves
    before = d.delta.detach().clone()
    d.hold_to_axis()
    assert torch.equal(d.delta, before)


def test_a_direction_is_free_until_both_its_axis_and_its_held_rows_are_set() -> None:
    """A new direction (every edit but a held one) is never projected: with neither, with
    only an axis or with only held rows, holding leaves it exactly as it was."""
    from coral_core.editing.directions import GlobalDirection

    for axis, held in ((None, None), (torch.tensor([1.0, 0, 0]), None),
                       (None, torch.tensor([True]))):
        d = GlobalDirection(num_ws=2, w_dim=3, rows=1, init_std=1.0)
        if axis is not None:
            d.axis = axis
        if held is not None:
            d.held = held
        before = d.delta.detach().clone()
        d.hold_to_axis()
        assert torch.equal(d.delta, before)


def test_an_edit_held_to_the_prior_scales_it_per_entry_and_a_free_one_does_not(
        G, clip, tmp_path) -> None:
    """What the saved edit shows: held, every W+ entry's offset lies along the prior (the
    optimiser chose each entry's gain); free (along_prior off), the offsets turn away."""
    common = dict(prompt="a red circle", steps=6, batch=1, seed=4, lr=0.2, prune_at=1.0,
                  catalogue_dir=tmp_path, prior_samples=16, prior_top=4, check_fit=False,
                  along_prior=True)
    held = train_edit(G, clip, TrainConfig(**common)).edit
    free = train_edit(G, clip, TrainConfig(**{**common, "along_prior": False})).edit
    bank = sample_bank_for(G, clip, 16, tmp_path)
    # held, the axis is the matched form (the prompt's change alone); free, the mean form
    assert (held.info["prior"]["form"], free.info["prior"]["form"]) == ("matched", "mean")
    axis = retrieval_prior(bank, clip.encode_text(["a red circle"]), 4, "matched") / \
        G.w_spread()
    assert _cosines_to(held.direction.delta, axis).abs().min() > 0.999
    gains = held.direction.delta[0] @ (axis / axis.norm())
    assert float(gains.max() - gains.min()) > 1e-3  # not one shared scale
    assert _cosines_to(free.direction.delta, axis).abs().min() < 0.99
    assert held.info["prior"]["held_to_prior"] is True
    assert "held_to_prior" not in free.info["prior"]


def test_the_region_choice_frees_the_images_the_prior_cannot_take_far_enough() -> None:
    """Held until the region choice; then an image whose edit got under ``free_below`` of
    the way to the bank's best samples (MIN_REACH when short images are not trained again)
    is freed, the others stay held, and the summary says which."""
    from types import SimpleNamespace

    from coral_core.editing.directions import GlobalDirection
    from coral_core.editing.fit import MIN_REACH
    from coral_core.editing.trainer import _free_short_rows

    def held_run(reached: list[float], **cfg: object) -> SimpleNamespace:
        d = GlobalDirection(num_ws=2, w_dim=3, rows=len(reached))
        d.axis, d.held = torch.tensor([1.0, 0, 0]), torch.ones(len(reached), dtype=torch.bool)
        fit = SimpleNamespace(aimless=False, reach=lambda _t, _e: reached,
                              past_best=lambda _t, _e: [0.0] * len(reached))
        return SimpleNamespace(direction=d, fit=fit, target=torch.zeros(1, 3), prior={},
                               prune_step=60, reading=None,
                               clip=SimpleNamespace(encode_image=lambda img: img),
                               cfg=SimpleNamespace(**{"free_when_short": True,
                                                      "free_below": 0.9, **cfg}))

    step = SimpleNamespace(edited=torch.zeros(3, 3))
    run = held_run([0.89, 0.9, 2.0])
    assert _free_short_rows(run, step) is True
    assert run.direction.held.tolist() == [False, True, True]
    assert run.prior["freed_at_region_choice"] == [0]
    assert run.prior["reach_trace"] == {"60": [0.89, 0.9, 2.0]}  # the reach at the choice
    # not trained again when short: only an image under MIN_REACH is freed
    run = held_run([MIN_REACH - 0.01, MIN_REACH, 0.89], free_when_short=False)
    assert _free_short_rows(run, step) is True
    assert run.direction.held.tolist() == [False, True, True]
    run = held_run([0.95, 0.9])
    assert _free_short_rows(run, step) is False and bool(run.direction.held.all())
    assert run.prior["freed_at_region_choice"] == []
    # no fit check (nothing to measure the way by) or an aimless prompt: everyone stays held
    for fit in (None, SimpleNamespace(aimless=True)):
        run = held_run([0.0, 0.0, 0.0])
        run.fit = fit
        assert _free_short_rows(run, step) is False
        assert bool(run.direction.held.all()) and "freed_at_region_choice" not in run.prior


def test_bad_prior_settings_are_refused(G, clip) -> None:
    with pytest.raises(InputError, match="prior_top"):
        train_edit(G, clip, TrainConfig(prompt="x", steps=1, prior_samples=8, prior_top=9))
    with pytest.raises(InputError, match="prior_samples"):
        train_edit(G, clip, TrainConfig(prompt="x", steps=1, prior_samples=1))


def test_render_chunks_shrink_with_the_generator_width_and_the_budget() -> None:
    from fabricate import random_generator, tiny_config

    small = random_generator(tiny_config(img_resolution=32))
    assert images_per_chunk(small) == 64  # tiny layers: the overhead cap
    wide = random_generator(tiny_config(img_resolution=64, channel_base=8192, channel_max=256))
    wider = random_generator(tiny_config(img_resolution=128, channel_base=16384,
                                         channel_max=256))
    per_64 = images_per_chunk(wide, budget=256 << 20)
    per_128 = images_per_chunk(wider, budget=256 << 20)
    assert 1 <= per_128 < per_64 < 64  # larger renders take more memory each
    assert images_per_chunk(wide, budget=1) == 1  # never zero
    assert images_per_chunk(wide, budget=512 << 20) == pytest.approx(2 * per_64, abs=1)
    # the estimate covers a chunk's real peak: 64 images at once of a 256-px config-f model
    # took 12.5 GB; under the default budget its chunk is small enough for a laptop
    from coral_core.commands.bench import config_f_generator

    f256 = config_f_generator(256, torch.device("cpu"))
    assert 2 <= images_per_chunk(f256) <= 8
    assert 1 <= images_per_chunk(f256, passes=3) < images_per_chunk(f256)


def test_bank_reports_progress_and_can_be_cancelled(G, clip, monkeypatch) -> None:
    from coral_core.errors import CancelledError

    monkeypatch.setattr(prior_module, "images_per_chunk", lambda *_a, **_k: 3)
    seen: list[tuple[int, int]] = []
    prior_module.build_sample_bank(G, clip, 8, lambda done, total: seen.append((done, total)))
    assert seen == [(0, 8), (3, 8), (6, 8), (8, 8)]

    def cancel(done: int, total: int) -> None:
        if done >= 3:
            raise CancelledError("cancelled")
    with pytest.raises(CancelledError):
        prior_module.build_sample_bank(G, clip, 8, cancel)


def test_counted_phase_reads_like_a_sentence() -> None:
    from coral_core.progress import counted_phase

    assert counted_phase("sample bank", 0, 512, 0.0) == "sample bank 0/512"
    assert counted_phase("sample bank", 128, 512, 10.0) == "sample bank 128/512, about 30 s left"
    assert counted_phase("sample bank", 64, 512, 20.0) == \
        "sample bank 64/512, about 2 min 20 s left"
    assert counted_phase("sample bank", 512, 512, 99.0) == "sample bank 512/512"


def test_first_training_run_reports_the_bank_phase(G, clip, tmp_path) -> None:
    from coral_core.progress import Reporter

    phases: list[str] = []
    reporter = Reporter(lambda s, t, info: phases.append(str(info.get("phase", ""))))
    train_edit(G, clip, TrainConfig(prompt="a red circle", steps=1, batch=1, prior_samples=8,
                                    prior_top=2, catalogue_dir=tmp_path), reporter=reporter)
    bank = [p for p in phases if p.startswith("sample bank")]
    assert bank[0] == "sample bank 0/8" and bank[-1] == "sample bank 8/8"
    assert phases.index("segment catalogue") < phases.index("sample bank 0/8")
