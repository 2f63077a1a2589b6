"""The CLIP-retrieval prior: its arithmetic, its cached sample bank, and the trainer's start."""
from __future__ import annotations

import pytest
import torch

from coral_core.editing import prior as prior_module
from coral_core.editing.memory import images_per_chunk
from coral_core.editing.prior import SampleBank, retrieval_prior, sample_bank_for
from coral_core.editing.trainer import TrainConfig, train_edit
from coral_core.errors import InputError


def test_prior_is_the_mean_of_the_best_ranked_samples_minus_the_mean_of_all() -> None:
    ws = torch.tensor([[0.0, 1], [10, 12], [0, 2], [10, 14], [0, 1], [1, 0]])  # w_dim 2
    text = torch.tensor([1.0, 0.0])
    emb = torch.tensor([[0.1, 1], [0.9, 0], [0.2, 1], [0.8, 0], [0.0, 1], [0.3, 1]])
    bank = SampleBank(ws, emb, "g", "c")
    got = retrieval_prior(bank, text, top=2)       # samples 1 and 3 score highest
    want = ws[[1, 3]].mean(0) - ws.mean(0)
    assert torch.allclose(got, want)
    # the prompt decides the direction: the other end of the ranking points the other way
    assert float(retrieval_prior(bank, -text, top=2) @ got) < 0
    # asking for more than the bank holds uses every sample: no direction at all
    assert torch.allclose(retrieval_prior(bank, text, top=100), torch.zeros(2))


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
    scaled prior (in w-spread units, on every W+ entry) plus the usual tiny random start."""
    common = dict(prompt="a red circle", steps=1, batch=1, seed=4, lr=1e-8,
                  catalogue_dir=tmp_path, prior_samples=16, prior_top=4, prior_scale=3.0)
    with_prior = train_edit(G, clip, TrainConfig(**common)).edit
    without = train_edit(G, clip, TrainConfig(**{**common, "prior_samples": 0})).edit
    bank = sample_bank_for(G, clip, 16, tmp_path)
    expected = 3.0 * retrieval_prior(bank, clip.encode_text(["a red circle"]), 4) / G.w_spread()
    moved = with_prior.direction.delta - without.direction.delta
    assert torch.allclose(moved, expected.expand_as(moved), atol=1e-5)
    assert float(expected.norm()) > 0
    assert with_prior.info["prior"]["samples"] == 16 and with_prior.info["prior"]["scale"] == 3
    assert with_prior.info["prior"]["norm_w_spread"] == pytest.approx(
        float(expected.norm()), rel=1e-3)
    assert "prior" not in without.info


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
