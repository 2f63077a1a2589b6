"""CLIP from local files only: every format gives identical embeddings, offline."""
from __future__ import annotations

import os

import open_clip
import pytest
import torch
import torch.nn.functional as F

from coral_core.clip_model import load_clip
from coral_core.errors import InputError, ModelFormatError
from fabricate import tiny_open_clip

PROMPTS = ["a red circle", "a blue square on a green background"]


def test_loading_does_not_change_the_host_environment(clip_files) -> None:
    """Other node packs in the same ComfyUI process must keep their hub access."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    code = ("import os, coral_core.clip_model as m; "
            f"m.load_clip({str(clip_files['local_dir'])!r}); "
            "print('HF_HUB_OFFLINE' in os.environ)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-400:]
    assert proc.stdout.strip() == "False"


def test_training_leaves_the_global_rng_alone(clip_files) -> None:
    from coral_core.clip_model import load_clip
    from coral_core.editing.trainer import TrainConfig, train_edit
    from fabricate import random_generator, tiny_config

    G = random_generator(tiny_config(conv_clamp=None))
    clip = load_clip(clip_files["local_dir"])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_edit(G, clip, TrainConfig(prompt="a red circle", steps=2, batch=1, seed=7))
    assert torch.equal(torch.rand(3), expected)


def test_every_clip_format_gives_identical_embeddings(clip_files) -> None:
    ref = tiny_open_clip(0)
    tokens = open_clip.SimpleTokenizer(context_length=16)(PROMPTS)
    with torch.no_grad():
        expected_text = F.normalize(ref.encode_text(tokens), dim=-1)
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    expected_img = None
    for key in ("bin", "safetensors", "local_dir", "torchscript"):
        clip = load_clip(clip_files[key])
        assert clip.image_size == 32
        assert torch.allclose(clip.encode_text(PROMPTS), expected_text, atol=1e-6), key
        with torch.no_grad():
            emb = clip.encode_image(img)
        expected_img = emb if expected_img is None else expected_img
        assert torch.allclose(emb, expected_img, atol=1e-6), key
    assert load_clip(f"local-dir:{clip_files['local_dir']}").model_id.startswith("local-dir")


def test_explicit_model_name_path(clip_files, tmp_path) -> None:
    # a state dict with no config beside it: rebuilt from tensor shapes (OpenAI layout)
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(clip_files["safetensors"].read_bytes())
    clip = load_clip(lone)
    assert clip.model_id.startswith("openai-state")
    assert clip.encode_text(["x"]).shape == (1, 32)


def test_preprocess_is_differentiable_and_normalised(clip_files) -> None:
    clip = load_clip(clip_files["local_dir"])
    img = torch.zeros(1, 3, 64, 48, requires_grad=True)  # non-square, larger than CLIP input
    x = clip.preprocess(img)
    assert x.shape == (1, 3, 32, 32)
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    assert torch.allclose(x, (0.5 - mean) / std, atol=1e-5)  # [-1,1] -> [0,1], not 0-255
    clip.encode_image(img).sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.model.parameters())


def test_text_cache_and_empty_prompt(clip_files) -> None:
    clip = load_clip(clip_files["bin"])
    a = clip.encode_text(["a red circle"])
    assert "a red circle" in clip._text_cache
    assert torch.equal(clip.encode_text(["a red circle"]), a)
    with pytest.raises(InputError, match="empty"):
        clip.encode_text(["  "])


def test_missing_and_bad_clip_files(tmp_path) -> None:
    with pytest.raises(ModelFormatError, match="never"):
        load_clip(tmp_path / "ViT-B-32.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelFormatError, match="open_clip_config.json"):
        load_clip(tmp_path / "folder")
    torch.save({"something": torch.zeros(2)}, tmp_path / "junk.pt")
    with pytest.raises(ModelFormatError, match="visual.conv1.weight"):
        load_clip(tmp_path / "junk.pt")


def _with_vocabulary(clip_files, tmp_path, vocabulary) -> object:
    """A copy of the local-dir CLIP whose config lists ``vocabulary``."""
    import json
    import shutil

    folder = tmp_path / "vocab_clip"
    shutil.copytree(clip_files["local_dir"], folder)
    config = folder / "open_clip_config.json"
    data = json.loads(config.read_text())
    data["coral_vocabulary"] = vocabulary
    config.write_text(json.dumps(data))
    return folder


def test_a_clip_folder_may_list_the_words_it_was_trained_on(clip_files, tmp_path) -> None:
    assert load_clip(clip_files["local_dir"]).vocabulary is None  # an open-web CLIP: none
    folder = _with_vocabulary(clip_files, tmp_path, ["a", "Red", "circle"])
    clip = load_clip(folder)
    assert clip.vocabulary == frozenset({"a", "red", "circle"})
    # the list changes no weight: the same embeddings
    assert torch.equal(clip.encode_text(PROMPTS),
                       load_clip(clip_files["local_dir"]).encode_text(PROMPTS))


@pytest.mark.parametrize("vocabulary", [[], "a red circle", ["a", 3], ["a", ""], ["x" * 65],
                                        {"words": ["a"]}])
def test_a_vocabulary_that_is_not_a_list_of_words_is_refused(clip_files, tmp_path,
                                                             vocabulary) -> None:
    folder = _with_vocabulary(clip_files, tmp_path, vocabulary)
    with pytest.raises(ModelFormatError, match="open_clip_config.json: coral_vocabulary"):
        load_clip(folder)


@pytest.mark.parametrize("world", ["shapes", "faces"])
def test_the_demo_clips_list_every_word_of_their_captions(world) -> None:
    from coral_core.world.assets import world_assets
    from coral_core.world.clip_train import world_vocabulary

    clip = load_clip(world_assets(world).clip)
    assert clip.vocabulary == frozenset(world_vocabulary(world))
