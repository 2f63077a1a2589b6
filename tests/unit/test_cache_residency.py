"""The model cache as a caller sees it: what one entry is (kind, file, device, options),
which entry goes first when memory runs short, what ``free`` drops, and how much memory a
loaded model is counted as. Fake loaders keep these fast; test_cache.py loads real files."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from coral_core import cache as cache_module
from coral_core.cache import ModelCache, get_clip, get_generator, module_bytes


class Loads:
    """A loader that counts its calls and returns a module of ``floats`` float32 values."""

    def __init__(self, floats: int = 10) -> None:
        self.floats, self.calls = floats, []

    def __call__(self, dev: torch.device) -> torch.nn.Module:
        self.calls.append(dev)
        m = torch.nn.Linear(1, self.floats - 1)  # (floats - 1) weights + (floats - 1) biases
        m.register_buffer("extra", torch.zeros(1))
        return m


def _files(tmp_path: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"m{i}.bin")
        paths[-1].write_bytes(bytes([i]) * 16)
    return paths


def test_one_entry_per_kind_file_device_and_options(tmp_path, monkeypatch) -> None:
    (path,) = _files(tmp_path, 1)
    cache, load = ModelCache(), Loads()
    first = cache.get("generator", path, load, "cpu")
    monkeypatch.chdir(tmp_path)
    assert cache.get("generator", "m0.bin", load, "cpu") is first  # same file, relative
    assert cache.get("generator", tmp_path / "." / "m0.bin", load, "cpu") is first
    assert cache.loads == 1 and load.calls == [torch.device("cpu")]
    other_kind = cache.get("clip", path, load, "cpu")
    other_options = cache.get("generator", path, load, "cpu", ("ViT-B-32",))
    assert len({id(first), id(other_kind), id(other_options)}) == 3
    assert cache.loads == 3 and len(cache) == 3
    assert cache.get("generator", path, load, "cpu", ("ViT-B-32",)) is other_options


def test_a_changed_file_is_a_new_entry(tmp_path) -> None:
    (path,) = _files(tmp_path, 1)
    cache, load = ModelCache(), Loads()
    first = cache.get("generator", path, load, "cpu")
    path.write_bytes(b"changed content")
    assert cache.get("generator", path, load, "cpu") is not first and cache.loads == 2


def test_the_least_recently_used_goes_first_and_only_while_over_budget(tmp_path) -> None:
    a, b, c = _files(tmp_path, 3)
    one = module_bytes(Loads()(torch.device("cpu")))
    cache, load = ModelCache(budget_bytes=2 * one), Loads()
    cache.get("g", a, load)
    cache.get("g", b, load)
    assert len(cache) == 2 and cache.total_bytes() == 2 * one  # exactly at budget: all kept
    cache.get("g", a, load)  # a is now the most recent
    cache.get("g", c, load)  # over budget: b goes, not a
    assert cache.loads == 3
    cache.get("g", a, load)
    cache.get("g", c, load)
    assert cache.loads == 3  # both still resident
    cache.get("g", b, load)
    assert cache.loads == 4  # b had been evicted


def test_a_model_larger_than_the_budget_is_still_served_and_kept(tmp_path) -> None:
    a, b = _files(tmp_path, 2)
    cache = ModelCache(budget_bytes=1)
    big = cache.get("g", a, Loads(100))
    assert len(cache) == 1 and cache.get("g", a, Loads(100)) is big and cache.loads == 1
    cache.get("g", b, Loads(100))  # the older one makes room; the new one stays
    assert len(cache) == 1 and cache.loads == 2
    cache.get("g", b, Loads(100))
    assert cache.loads == 2


def test_several_old_entries_go_to_make_room_for_a_large_one(tmp_path) -> None:
    a, b, c = _files(tmp_path, 3)
    small = module_bytes(Loads(10)(torch.device("cpu")))
    cache = ModelCache(budget_bytes=3 * small)
    cache.get("g", a, Loads(10))
    cache.get("g", b, Loads(10))
    cache.get("g", c, Loads(25))  # more than two small ones: both go
    assert len(cache) == 1


def test_no_budget_never_evicts(tmp_path) -> None:
    cache = ModelCache()
    for p in _files(tmp_path, 4):
        cache.get("g", p, Loads(1000))
    assert len(cache) == 4 and cache.loads == 4


def test_free_drops_one_file_in_every_form_or_everything(tmp_path, monkeypatch) -> None:
    a, b = _files(tmp_path, 2)
    cache = ModelCache()
    cache.get("generator", a, Loads())
    cache.get("clip", a, Loads())
    cache.get("generator", b, Loads())
    monkeypatch.chdir(tmp_path)
    assert cache.free("m0.bin") == 2  # both kinds of that file, named relatively
    assert len(cache) == 1 and cache.free(a) == 0
    assert cache.free() == 1 and len(cache) == 0 and cache.free() == 0


def test_free_empties_the_device_cache(tmp_path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(cache_module, "empty_device_cache", lambda: calls.append(1))
    cache = ModelCache()
    cache.free()
    assert calls


def test_a_model_counts_its_parameters_and_buffers_wherever_it_is_held() -> None:
    m = torch.nn.Linear(3, 4)  # 12 + 4 float32
    m.register_buffer("running", torch.zeros(5, dtype=torch.float64))  # 5 float64
    expected = 16 * 4 + 5 * 8
    assert module_bytes(m) == expected
    assert module_bytes(SimpleNamespace(model=m)) == expected          # a CLIP wrapper
    assert module_bytes(SimpleNamespace(generator=m)) == expected      # a loaded generator
    assert module_bytes(SimpleNamespace(model=m, generator=torch.nn.Linear(9, 9))) == expected
    assert module_bytes(SimpleNamespace(model="not a module")) == 0
    assert module_bytes(SimpleNamespace(generator="not a module")) == 0
    assert module_bytes(object()) == 0 and module_bytes(None) == 0


def test_get_generator_and_get_clip_use_the_cache_they_are_given(tmp_path, monkeypatch
                                                                  ) -> None:
    from coral_core import clip_model, formats

    (path,) = _files(tmp_path, 1)
    made: list[tuple] = []

    class Loaded:
        def __init__(self) -> None:
            self.generator = torch.nn.Linear(2, 2)

    def fake_generator(p):
        made.append(("generator", str(p)))
        return Loaded()

    def fake_clip(source, model_name, dev):
        made.append(("clip", str(source), model_name, str(dev)))
        return SimpleNamespace(model=torch.nn.Linear(2, 2))

    monkeypatch.setattr(formats, "load_generator", fake_generator)
    monkeypatch.setattr(clip_model, "load_clip", fake_clip)
    mine = ModelCache()
    g = get_generator(path, "cpu", mine)
    assert get_generator(path, "cpu", mine) is g and mine.loads == 1
    assert g.generator.weight.device == torch.device("cpu")
    c = get_clip(path, "ViT-B-32", "cpu", mine)
    assert get_clip(path, "ViT-B-32", "cpu", mine) is c
    assert get_clip(path, "RN50", "cpu", mine) is not c  # the model name is part of the key
    assert all(k[1] != str(path.resolve()) for k in cache_module.ENGINE_CACHE._entries)
    assert made == [("generator", str(path)), ("clip", str(path), "ViT-B-32", "cpu"),
                    ("clip", str(path), "RN50", "cpu")]
    assert mine.loads == 3


def test_a_local_dir_clip_is_kept_under_its_source_and_freed_by_it(tmp_path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    source = f"local-dir:{folder}"
    cache = ModelCache()
    first = cache.get("clip", source, Loads())
    assert cache.get("clip", source, Loads()) is first and cache.loads == 1
    assert cache.free(source) == 1 and len(cache) == 0


def test_without_a_cache_the_engine_s_own_is_used(tmp_path, monkeypatch) -> None:
    from coral_core import clip_model, formats

    (path,) = _files(tmp_path, 1)
    engine = ModelCache()
    monkeypatch.setattr(cache_module, "ENGINE_CACHE", engine)
    monkeypatch.setattr(formats, "load_generator",
                        lambda p: SimpleNamespace(generator=torch.nn.Linear(2, 2)))
    monkeypatch.setattr(clip_model, "load_clip",
                        lambda s, m, d: SimpleNamespace(model=torch.nn.Linear(2, 2)))
    g = get_generator(path, "cpu")
    c = get_clip(path, None, "cpu")
    assert get_generator(path, "cpu") is g and get_clip(path, None, "cpu") is c
    assert engine.loads == 2 and len(engine) == 2


def test_two_local_dir_clips_are_freed_one_by_one_from_any_working_folder(tmp_path,
                                                                          monkeypatch) -> None:
    sources = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "open_clip_config.json").write_text(f'{{"name": "{name}"}}')
        sources.append(f"local-dir:{folder}")
    cache = ModelCache()
    for source in sources:
        cache.get("clip", source, Loads())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a local-dir source names its folder, not a path from here
    assert cache.free(sources[0]) == 1 and len(cache) == 1
    assert cache.free(sources[1]) == 1 and len(cache) == 0
