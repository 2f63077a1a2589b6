"""What `coral models info` and the Load StyleGAN node report about a generator file, and the
truncation centre a rosinality file without `latent_avg` gets."""
from __future__ import annotations

from pathlib import Path

import torch
from fabricate import random_generator, tiny_config, write_nvlabs_pickle, write_rosinality

from coral_core.formats import describe, load_generator


def test_describe_reports_every_structural_fact_of_the_file(tmp_path: Path) -> None:
    gen = random_generator(tiny_config(), seed=3)
    path = write_nvlabs_pickle(gen, tmp_path / "g.pkl")
    assert describe(load_generator(path)) == {
        "path": str(path), "format": "nvlabs-pkl", "resolution": 32, "num_ws": 8, "z_dim": 32,
        "w_dim": 32, "mapping_layers": 2, "architecture": "skip", "channel_base": 256,
        "channel_max": 32, "conv_clamp": 256.0, "conv_layers": 7, "parameters": 47787,
        "fingerprint": gen.fingerprint(), "notes": []}


def test_a_rosinality_file_without_latent_avg_gets_the_mean_w_of_many_samples(
        tmp_path: Path) -> None:
    gen = random_generator(tiny_config(), seed=3)
    loaded = load_generator(write_rosinality(gen, tmp_path / "t.pt", training_checkpoint=True))
    assert loaded.notes[-1] == ("no latent_avg in the file; truncation centre estimated from "
                                "10,000 z")
    with torch.no_grad():
        z = torch.randn(40_000, gen.z_dim, generator=torch.Generator().manual_seed(7))
        independent = loaded.generator.mapping(z)[:, 0].mean(0)
    w_avg = loaded.generator.w_avg
    assert w_avg.shape == (gen.w_dim,)
    spread = float(loaded.generator.mapping(z[:1000])[:, 0].std(0).mean())
    # 10,000 samples: the estimate sits within a few standard errors of the true mean
    assert float((w_avg - independent).abs().max()) < 5 * spread / 100
    again = load_generator(write_rosinality(gen, tmp_path / "u.pt", training_checkpoint=True))
    assert torch.equal(again.generator.w_avg, w_avg)  # the same file, the same centre
