"""The project's own generator file (safetensors + config in the metadata) as a user meets
it: what a saved file holds, that it loads to the same generator, and the named refusals for
versions, configs and hashes that do not fit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from coral_core.errors import ModelFormatError
from coral_core.formats import load_generator, native
from coral_core.formats.integrity import HASH_KEY, write_safetensors
from fabricate import random_generator


def _saved(tmp_path: Path, **extra: str) -> tuple[Path, object]:
    G = random_generator(seed=3)
    path = tmp_path / "g.safetensors"
    native.save_generator(G, path, extra or None)
    return path, G


def _rewritten(path: Path, meta_changes: dict[str, str | None]) -> Path:
    """The file with its metadata changed (None: removed), its hash kept as it was."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, value in meta_changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    out = path.with_name("changed.safetensors")
    from safetensors.torch import save_file

    save_file(tensors, str(out), meta)
    return out


def test_a_saved_generator_says_what_it_is_and_loads_to_the_same_pictures(
        tmp_path: Path) -> None:
    path, G = _saved(tmp_path, note="mine")
    meta = native.read_metadata(path)
    assert meta["format"] == native.FORMAT_NAME == "coral-stylegan2"
    assert meta["format_version"] == native.FORMAT_VERSION == "2"
    assert meta["fingerprint"] == G.fingerprint()
    assert json.loads(meta["config"]) == json.loads(G.cfg.to_json())
    assert meta["note"] == "mine" and HASH_KEY in meta
    loaded = load_generator(path)
    assert loaded.format == "coral-safetensors"
    z = G.z_from_seeds([1, 2])
    with torch.no_grad():
        assert torch.equal(loaded.generator.synthesize(loaded.generator.mapping_ws(z)),
                           G.synthesize(G.mapping_ws(z)))


@pytest.mark.parametrize("version", ["0", "3", "", "2.0"])
def test_a_version_this_release_cannot_read_is_named(tmp_path: Path, version: str) -> None:
    path, _ = _saved(tmp_path)
    changed = _rewritten(path, {"format_version": version})
    with pytest.raises(ModelFormatError) as err:
        load_generator(changed)
    assert str(err.value) == (f"{changed}: generator format version {version!r} is not "
                              "supported (expected 2); update ComfyUI-CoralStyleCLIP")


def test_version_1_files_load_without_a_hash_and_version_2_files_need_one(
        tmp_path: Path) -> None:
    path, G = _saved(tmp_path)
    old = _rewritten(path, {"format_version": "1", HASH_KEY: None})
    assert load_generator(old).generator.fingerprint() == G.fingerprint()
    unhashed = _rewritten(path, {HASH_KEY: None})
    with pytest.raises(ModelFormatError, match="no content hash") as err:
        load_generator(unhashed)
    assert "this generator has no content hash" in str(err.value)
    tampered = _rewritten(path, {"format_version": "1", HASH_KEY: "0" * 64})
    with pytest.raises(ModelFormatError, match="does not match its hash"):
        load_generator(tampered)


@pytest.mark.parametrize("config, words", [
    ("{not json", "the generator config"),
    ("[" * 9 + "]" * 9, "the generator config"),
    (json.dumps({"pad": "x" * 70000}), "the generator config"),
    (json.dumps({"img_resolution": "big"}), "invalid generator config"),
    (None, "invalid generator config"),
])
def test_a_config_that_is_not_one_is_named(tmp_path: Path, config: str | None,
                                           words: str) -> None:
    path, _ = _saved(tmp_path)
    changed = _rewritten(path, {"config": config})
    with pytest.raises(ModelFormatError, match=words) as err:
        load_generator(changed)
    assert str(err.value).startswith(f"{changed}")


def test_a_config_nested_as_deep_as_allowed_is_read_as_json(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    cfg = json.loads(native.read_metadata(path)["config"])
    cfg["extra"] = [[[[[[[1]]]]]]]  # depth 8 with the outer table: the bound, not past it
    changed = _rewritten(path, {"config": json.dumps(cfg)})
    with pytest.raises(ModelFormatError) as err:
        load_generator(changed)
    assert "invalid generator config" in str(err.value)  # parsed, then refused as a config
    assert "extra" in str(err.value)


def test_a_broken_header_is_named_before_safetensors_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "g.safetensors"
    path.write_bytes((10_000).to_bytes(8, "little") + b"{" + b" " * 20)
    with pytest.raises(ModelFormatError) as err:
        native.read_metadata(path)
    assert str(err.value) == (f"{path}: the safetensors header claims 10000 bytes but the "
                              "file holds 21: truncated or not a safetensors file")


@pytest.mark.parametrize("keys, is_clip", [
    (["visual.conv1.weight", "token_embedding.weight"], True),      # open_clip
    (["visual.proj", "visual.transformer.x", "token_embedding.weight"], True),
    (["model.visual.conv1.weight"], True),                          # wrapped OpenAI weights
    (["visual.proj"], False),                                      # no text tower
    (["token_embedding.weight", "mapping.fc0.weight"], False),
    (["synthesis.b4.conv1.weight", "mapping.fc0.weight"], False),  # a generator
    ([], False),
])
def test_clip_weights_are_told_from_a_generator_by_their_keys(keys: list[str],
                                                              is_clip: bool) -> None:
    assert native.is_clip_state(keys) is is_clip


def test_a_clip_safetensors_given_as_a_generator_is_named(tmp_path: Path) -> None:
    path = tmp_path / "clip.safetensors"
    write_safetensors(path, {"visual.conv1.weight": torch.zeros(2, 3, 4, 4),
                             "token_embedding.weight": torch.zeros(5, 2)}, {})
    with pytest.raises(ModelFormatError, match="this is a CLIP checkpoint"):
        load_generator(path)
