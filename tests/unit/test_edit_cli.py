"""``coral train`` / ``apply`` / ``masks`` / ``invert`` on fabricated models, end to end."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from coral_core.cli import main
from coral_core.editing.config import TrainConfig
from coral_core.editing.edit import Edit
from coral_core.formats import save_generator
from fabricate import random_generator, tiny_config


def test_train_apply_masks_invert(tmp_path, clip_files, capsys) -> None:
    gen = tmp_path / "g.safetensors"
    save_generator(random_generator(tiny_config(conv_clamp=None)), gen)
    common = ["--generator", str(gen)]
    edit = tmp_path / "edit.safetensors"
    assert main(["train", *common, "--clip", str(clip_files["local_dir"]), "--prompt",
                 "a red circle", "--seeds", "0-1", "--steps", "4", "--out", str(edit)]) == 0
    summary = json.loads(capsys.readouterr().out.split("wrote")[0])
    assert summary["prompt"] == "a red circle" and summary["variant"] == "ss"
    assert Edit.load(edit).latents.shape[0] == 2
    # the library's default start (the CLI keeps no number of its own)
    assert Edit.load(edit).info["prior"]["samples"] == TrainConfig(prompt="x").prior_samples
    no_prior = tmp_path / "no_prior.safetensors"
    assert main(["train", *common, "--clip", str(clip_files["local_dir"]), "--prompt",
                 "a red circle", "--seeds", "0", "--steps", "1", "--prior-samples", "0",
                 "--out", str(no_prior)]) == 0
    capsys.readouterr()
    assert "prior" not in Edit.load(no_prior).info
    held = tmp_path / "held.safetensors"
    assert main(["train", *common, "--clip", str(clip_files["local_dir"]), "--prompt",
                 "a red circle", "--seeds", "0", "--steps", "2", "--hold-to-prior",
                 "--prior-form", "mean", "--out", str(held)]) == 0
    capsys.readouterr()
    prior = Edit.load(held).info["prior"]
    # held: the edit, or (an image it took short of the way, trained again free) its first try
    assert prior.get("held_to_prior") is True or "held_first" in prior
    assert prior["form"] == "mean"
    assert Edit.load(edit).info["prior"]["form"] == "mean"  # free: the automatic form
    assert "held_to_prior" not in Edit.load(edit).info["prior"]  # off by default
    assert main(["apply", *common, "--edit", str(edit), "--strength", "0,1",
                 "--out", str(tmp_path / "applied")]) == 0
    files = {p.name for p in (tmp_path / "applied").iterdir()}
    assert {"trained00_edited_s0.png", "trained00_edited_s1.png", "trained00_original.png",
            "trained00_mask.png", "trained00_layers.png"} <= files
    s0 = np.asarray(Image.open(tmp_path / "applied" / "trained00_edited_s0.png"))
    orig = np.asarray(Image.open(tmp_path / "applied" / "trained00_original.png"))
    assert np.array_equal(s0, orig)  # strength 0 is the original
    out = tmp_path / "masks.png"
    assert main(["masks", *common, "--edit", str(edit), "--index", "1", "--seed", "3",
                 "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "masks_overlay.png").is_file()
    assert json.loads((tmp_path / "masks.json").read_text())["mask_area_per_layer"]
    Image.fromarray(orig).save(tmp_path / "photo.png")
    lat = tmp_path / "lat.safetensors"
    assert main(["invert", *common, "--image", str(tmp_path / "photo.png"), "--steps", "5",
                 "--out", str(lat)]) == 0
    capsys.readouterr()
    assert main(["apply", *common, "--edit", str(edit), "--latent", str(lat),
                 "--out", str(tmp_path / "b")]) == 2  # per-image edit of 2 vs 1 latent
    assert "per-image edit holds 2" in capsys.readouterr().err


def test_apply_leaves_alone_the_seeds_a_per_prompt_edit_does_not_fit(tmp_path, capsys) -> None:
    """On the demo models: a per-prompt "a red circle" edit applied with `coral apply` leaves
    seed 0 (no circle in it) exactly as it was and says so on stderr; --no-scene-check edits
    it, silently."""
    edit = tmp_path / "circle.safetensors"
    assert main(["train", "--prompt", "a red circle", "--mode", "per-prompt", "--variant",
                 "can", "--steps", "2", "--out", str(edit)]) == 0
    capsys.readouterr()
    assert main(["apply", "--edit", str(edit), "--seeds", "0-1", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "image(s) 0 seem to lack what it names" in err and "--no-scene-check" in err

    def png(folder: str, name: str) -> np.ndarray:
        return np.asarray(Image.open(tmp_path / folder / name))

    assert np.array_equal(png("a", "seed0000_edited.png"), png("a", "seed0000_original.png"))
    assert main(["apply", "--edit", str(edit), "--seeds", "0-1", "--no-scene-check",
                 "--out", str(tmp_path / "b")]) == 0
    assert "lack" not in capsys.readouterr().err
    assert not np.array_equal(png("b", "seed0000_edited.png"), png("b", "seed0000_original.png"))
