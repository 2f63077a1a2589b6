"""GPU tier: run with `pytest -m gpu tests/gpu` on a machine with CUDA (skipped elsewhere; CI
has no GPU). Parity of the CUDA path with the CPU path, a CORAL training step in fp32 and bf16,
apply, inversion, and model residency. Figures (speed, memory) come from `coral bench`, not
from these tests."""
from __future__ import annotations

import pytest
import torch

from coral_core.clip_model import load_clip
from coral_core.editing.apply import apply_edits
from coral_core.editing.trainer import TrainConfig, train_edit
from coral_core.inversion import InvertConfig, invert
from fabricate import random_generator, tiny_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def pair():
    cpu = random_generator(tiny_config(conv_clamp=None))
    gpu = random_generator(tiny_config(conv_clamp=None)).to("cuda")
    return cpu, gpu


def test_generator_parity_cpu_cuda(pair) -> None:
    cpu, gpu = pair
    z = cpu.z_from_seeds([0, 1, 2])
    with torch.no_grad():
        a = cpu.synthesize(cpu.mapping_ws(z))
        b = gpu.synthesize(gpu.mapping_ws(z.cuda())).cpu()
    assert (a - b).abs().max() <= 1e-3


@pytest.mark.parametrize("bf16", [False, True])
def test_training_step_and_apply_on_cuda(pair, clip_files, bf16: bool) -> None:
    _, G = pair
    clip = load_clip(clip_files["local_dir"], device="cuda")
    res = train_edit(G, clip, TrainConfig(prompt="a red circle", steps=3, batch=2, bf16=bf16))
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in res.history)
    out = apply_edits(G, res.edit.latents, [res.edit])
    assert out.edited.is_cuda and torch.isfinite(out.edited).all()


def test_inversion_on_cuda(pair) -> None:
    _, G = pair
    with torch.no_grad():
        target = G.synthesize(G.mapping_ws(G.z_from_seeds([4]).cuda()))
    res = invert(G, target, InvertConfig(space="w+", steps=10))
    assert res.history[-1] < res.history[0]


def test_cache_residency_and_free(tmp_path) -> None:
    from coral_core import cache
    from coral_core.formats import save_generator

    path = tmp_path / "g.safetensors"
    save_generator(random_generator(tiny_config()), path)
    a = cache.get_generator(path, "cuda")
    assert cache.get_generator(path, "cuda") is a
    cache.ENGINE_CACHE.free()
    assert cache.get_generator(path, "cuda") is not a
