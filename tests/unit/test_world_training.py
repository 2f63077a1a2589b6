"""The demo world's trainers and the commands around them (render, export, check, bench): each
writes what it promises, in a form the loaders read back, and a run cut short resumes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coral_core.cli import main
from coral_core.clip_model import load_clip
from coral_core.formats import load_generator
from coral_core.world import assets
from coral_core.world.captions import CaptionSpec
from coral_core.world.clip_train import _truth, blend_twins, train_clip
from coral_core.world.gan_train import _checkpoint_path, train_gan
from coral_core.world.judge import load_judge, train_judge
from coral_core.world.render import render
from coral_core.world.scene import COLOUR_NAMES, random_scenes


def test_gan_training_stops_where_told_and_resumes_there(tmp_path: Path) -> None:
    out = tmp_path / "g.safetensors"
    first = train_gan(out, steps=4, batch=2, stop_at=2)
    assert first["steps"] == 2 and out.is_file() and _checkpoint_path(out).is_file()
    second = train_gan(out, steps=4, batch=2)
    assert second["steps"] == 4  # continued from step 2, not restarted
    assert np.isfinite(second["final_loss"])
    G = load_generator(out).generator
    with torch.no_grad():
        img = G.synthesize(G.mapping_ws(G.z_from_seeds([0])))
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()


def test_gan_fine_tuning_starts_from_the_given_generator_and_refuses_another_architecture(
        tmp_path: Path) -> None:
    """``coral world train-gan --from G``: a fine-tune after the world's drawing changed
    starts where G is (a tiny learning rate leaves its pictures as they were), and a generator
    of another architecture is refused by name before any step."""
    shipped = assets.require(assets.DEMO_GENERATOR)
    out = tmp_path / "g.safetensors"
    report = train_gan(out, steps=1, batch=2, lr=1e-12, init_from=shipped)
    assert report["started_from"] == str(shipped)
    a, b = load_generator(shipped).generator, load_generator(out).generator
    z = a.z_from_seeds([3, 4])
    with torch.no_grad():
        pa = a.synthesize(a.mapping_ws(z), noise_mode="const")
        pb = b.synthesize(b.mapping_ws(z), noise_mode="const")
    assert (pa - pb).abs().max() < 1e-4
    from coral_core.formats import save_generator
    from coral_core.stylegan import Generator, GeneratorConfig

    other = tmp_path / "other.safetensors"  # a real generator, another architecture
    save_generator(Generator(GeneratorConfig(img_resolution=32, z_dim=32, w_dim=64,
                                             mapping_layers=2, channel_base=512,
                                             channel_max=64)), other)
    with pytest.raises(Exception, match="not a generator of this world") as err:
        train_gan(tmp_path / "h.safetensors", steps=1, batch=2, init_from=other)
    assert str(other) in str(err.value) and not (tmp_path / "h.safetensors").exists()


def test_clip_training_writes_a_clip_the_loader_reads(tmp_path: Path) -> None:
    report = train_clip(tmp_path / "clip", steps=2, batch=8, report_renders=200)
    assert report["steps"] == 2
    clip = load_clip(tmp_path / "clip")
    text = clip.encode_text(["a red circle", "a blue square"])
    img, _ = render(random_scenes(2, 0))
    image = clip.encode_image(img)
    assert text.shape == image.shape and torch.allclose(text.norm(dim=-1), torch.ones(2))


def test_clip_fine_tuning_with_blend_twins_continues_from_the_given_clip(tmp_path: Path
                                                                        ) -> None:
    with pytest.raises(Exception, match="open_clip_model.safetensors"):
        train_clip(tmp_path / "c", steps=1, batch=4, init_from=tmp_path / "missing")
    shipped = assets.require(assets.DEMO_CLIP)
    report = train_clip(tmp_path / "b", steps=1, batch=4, lr=1e-9, init_from=shipped,
                        blends=True, report_renders=300)
    assert report["blend_twins"] and report["continued_from"] == str(shipped)
    # the shipped CLIP reads pure colours: its pure-over-blend scores are far above chance
    assert report["zero_shot"]["pure over blend, background"] > 0.8
    # a learning rate of 1e-9 leaves the weights where the shipped CLIP has them
    a, b = load_clip(shipped), load_clip(tmp_path / "b")
    assert torch.allclose(a.encode_text(["a red circle"]), b.encode_text(["a red circle"]),
                          atol=1e-3)


def test_blend_twins_recolour_one_region_part_way_and_keep_the_rest() -> None:
    scenes = random_scenes(64, 5)
    img, masks = render(scenes)
    blend, ends_b, region = blend_twins(scenes, img, masks, torch.Generator().manual_seed(0),
                                        t=0.5)
    ends_a = scenes
    img_b, _ = render(ends_b)
    for i, r in enumerate(region.tolist()):
        m = masks[i, r] > 0.999
        outside = masks[i, r] < 1e-3
        # inside the region: halfway between the two renders; elsewhere: untouched
        assert torch.allclose(blend[i][:, m], (img[i][:, m] + img_b[i][:, m]) / 2, atol=1e-5)
        assert torch.allclose(blend[i][:, outside], img[i][:, outside], atol=1e-5)
        if r == 0:  # the other colour is a valid background: no object takes it
            new = int(ends_b.background[i])
            assert new != int(scenes.background[i])
            assert not ((ends_b.colour[i] == new) & ends_b.present[i]).any()
        else:
            new = int(ends_b.colour[i, r - 1])
            assert new not in (int(scenes.colour[i, r - 1]), int(scenes.background[i]))
    assert {0, 1} <= set(region.tolist())
    # a caption naming the blended region's colour is false of the blend; one that does not
    # speak of it stays true
    i = int((region == 0).nonzero()[0])
    own = CaptionSpec(background=COLOUR_NAMES[int(scenes.background[i])])
    shape_only = (CaptionSpec(shape="circle")
                  if bool(((scenes.shape[i] == 0) & scenes.present[i]).any()) else None)
    truth = _truth([own], ends_a.select(slice(i, i + 1))) * \
        _truth([own], ends_b.select(slice(i, i + 1)))
    assert float(truth[0, 0]) == 0.0
    if shape_only is not None:
        kept = _truth([shape_only], ends_a.select(slice(i, i + 1))) * \
            _truth([shape_only], ends_b.select(slice(i, i + 1)))
        assert float(kept[0, 0]) == 1.0


def test_judge_training_writes_a_judge_that_reads_scenes(tmp_path: Path) -> None:
    acc = train_judge(tmp_path / "judge.safetensors", steps=2, batch=4)
    assert 0.0 <= acc["background"] <= 1.0
    judge = load_judge(tmp_path / "judge.safetensors")
    img, _ = render(random_scenes(3, 1))
    read = judge.read(img)
    assert len(read["background"]) == 3 and len(read["objects"]) == 3


def test_world_render_writes_scenes_and_masks_that_partition_them(tmp_path: Path,
                                                                 capsys) -> None:
    assert main(["world", "render", "--seeds", "0-1", "--out", str(tmp_path)]) == 0
    captions = json.loads(capsys.readouterr().out)["captions"]
    assert sorted(captions) == ["scene0000", "scene0001"]
    masks = sorted(tmp_path.glob("scene0000_mask*.png"))
    assert len(masks) == 3 and (tmp_path / "scene0000.png").is_file()
    total = sum(np.asarray(Image.open(m), dtype=np.int32) for m in masks)
    assert np.abs(total - 255).max() <= 3  # background + objects cover every pixel once


def test_exported_rosinality_copy_draws_the_same_images(tmp_path: Path) -> None:
    out = tmp_path / "g.pt"
    assert main(["world", "export-rosinality", "--out", str(out)]) == 0
    copy = load_generator(out)
    assert copy.format.startswith("rosinality")
    G = load_generator(assets.require(assets.DEMO_GENERATOR)).generator
    with torch.no_grad():
        ws = G.mapping_ws(G.z_from_seeds([4, 5]))
        assert torch.allclose(copy.generator.synthesize(ws), G.synthesize(ws), atol=1e-4)


def test_world_check_prints_its_table(capsys) -> None:
    assert main(["world", "check", "--samples", "8"]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "IoU" in out


@pytest.mark.parametrize("argv, expect", [
    (["bench", "generate", "--resolution", "32", "--batch", "1", "--repeats", "1"], "ms"),
    (["bench", "apply", "--resolution", "32", "--batch", "1", "--repeats", "1"],
     "plain generation:"),
    (["bench", "train", "--steps", "1", "--batches", "1"], "region contest and pruning"),
    (["bench", "invert", "--steps", "2", "--pti-steps", "1", "--images", "1"], "PSNR"),
    (["bench", "hotpath", "--resolution", "32", "--batch", "1", "--repeats", "1"],
     "forward + backward"),
])
def test_bench_commands_print_figures(argv: list[str], expect: str, capsys) -> None:
    assert main(argv + ["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert expect in out and any(ch.isdigit() for ch in out)
