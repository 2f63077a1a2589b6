"""Resident models: loaded once, reloaded when the file changes, evicted LRU, freed on request."""
from __future__ import annotations

import os

import torch

from coral_core.cache import ModelCache, get_generator
from coral_core.devices import pick_device
from coral_core.formats import save_generator
from fabricate import random_generator, tiny_config


def test_loaded_once_and_reloaded_when_content_changes(tmp_path) -> None:
    cache = ModelCache()
    path = tmp_path / "g.safetensors"
    save_generator(random_generator(seed=0), path)
    a = get_generator(path, "cpu", cache)
    b = get_generator(path, "cpu", cache)
    assert a is b and cache.loads == 1
    save_generator(random_generator(seed=1), path)
    os.utime(path, ns=(1, 1))
    c = get_generator(path, "cpu", cache)
    assert c is not a and cache.loads == 2
    assert c.generator.fingerprint() != a.generator.fingerprint()


def test_lru_eviction_under_budget_and_free(tmp_path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"g{i}.safetensors")
        save_generator(random_generator(tiny_config(), seed=i), paths[-1])
    one = sum(t.numel() * 4 for t in random_generator().state_dict().values())
    cache = ModelCache(budget_bytes=int(one * 2.5))
    for p in paths:
        get_generator(p, "cpu", cache)
    assert len(cache) == 2  # the least recently used one went
    get_generator(paths[1], "cpu", cache)
    assert cache.loads == 3
    get_generator(paths[0], "cpu", cache)  # reloaded: it had been evicted
    assert cache.loads == 4
    assert cache.free(paths[0]) == 1
    assert cache.free() == 1 and len(cache) == 0


def test_device_choice() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device(None).type in (expected, "mps")
