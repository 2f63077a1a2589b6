#!/usr/bin/env python3
"""After the demo generator is (re)trained: everything that depends on its weights.

Exports the rosinality copy, trains the shipped per-prompt demo edit, renders the README sample
grid, both worlds' `coral demo` pictures and the template thumbnails. Run from the repository root:
    python scripts/finish_demo_assets.py
(``--thumbnails`` rewrites only the template thumbnails from docs/images; ``--edits`` only the
shipped per-prompt edits; ``--faces`` only the face generator's sample grid,
docs/images/faces_samples.png.)
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coral_core.formats import load_generator  # noqa: E402
from coral_core.stylegan.generator import image_to_uint8  # noqa: E402
from coral_core.world import assets  # noqa: E402
from coral_core.world.spec import get_world  # noqa: E402


def coral(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "coral_core", *args], check=True, cwd=ROOT)


def main() -> int:
    for old in assets.DEMO_EDITS.glob("*.safetensors"):
        old.unlink()
    train_shipped_edits()
    out = ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    write_sample_grid("shapes", out / "demo_samples.png")
    for world in assets.WORLDS:  # the shapes pictures as demo_*, the faces' as faces_demo_*
        demo = ROOT / "out" / "demo_thumbs" / world
        coral("demo", "--world", world, "--out", str(demo))
        prefix = "demo" if world == "shapes" else f"{world}_demo"
        for name in ("before_after", "mask_grid", "overlay"):
            shutil.copy(demo / f"{name}.png", out / f"{prefix}_{name}.png")
    write_thumbnails()
    print("done")
    return 0


def train_shipped_edits() -> None:
    """Each world's shipped per-prompt edit of its demo prompt (assets.SHIPPED_EDITS), with
    the library's defaults, nothing tuned for the demo."""
    for world, name in assets.SHIPPED_EDITS.items():
        where = assets.world_assets(world)
        coral("train", "--generator", str(where.generator), "--clip", str(where.clip),
              "--prompt", assets.DEMO_PROMPTS[world], "--mode", "per-prompt",
              "--out", str(assets.DEMO_EDITS / name), "--progress-every", "50")
    for junk in list(assets.DEMO_EDITS.glob("*.ckpt.pt")) + list(
            assets.DEMO_EDITS.glob("catalogue-*")):  # training's leftovers never ship
        junk.unlink()


def write_sample_grid(world: str, path: Path) -> None:
    """Rows of the world's shipped generator's samples of seeds 0-15, each above the render
    of the scene its z names (the README's picture of how faithful the generator is)."""
    spec = get_world(world)
    G = load_generator(assets.world_assets(world).generator).generator
    z = G.z_from_seeds(range(16))
    with torch.no_grad():
        samples = image_to_uint8(G.synthesize(G.mapping_ws(z)))
    targets = image_to_uint8(spec.render(spec.scenes_from_z(z), G.img_resolution)[0])
    rows = [np.concatenate(list(samples[:8]), 1), np.concatenate(list(targets[:8]), 1),
            np.concatenate(list(samples[8:]), 1), np.concatenate(list(targets[8:]), 1)]
    grid = np.kron(np.concatenate(rows, 0), np.ones((2, 2, 1), dtype=np.uint8))
    Image.fromarray(grid).save(path)


# Each template's thumbnail shows what that template makes (the template browser lists them
# side by side, so identical pictures tell a user nothing).
THUMBNAIL_SOURCES = {
    "train_apply_visualise": "faces_demo_before_after.png",
    "apply_saved_edit": "faces_demo_overlay.png",
    "invert_photo_and_edit": "faces_samples.png",
    "segments_from_masks": "faces_demo_mask_grid.png",
}


def write_thumbnails() -> None:
    images = ROOT / "docs" / "images"
    for wf in sorted((ROOT / "workflows" / "api").glob("*.json")):
        src = Image.open(images / THUMBNAIL_SOURCES[wf.stem]).convert("RGB")
        src.thumbnail((256, 256), Image.Resampling.NEAREST)
        canvas = Image.new("RGB", (256, 256), (24, 24, 24))
        canvas.paste(src, ((256 - src.width) // 2, (256 - src.height) // 2))
        canvas.save(ROOT / "example_workflows" / f"{wf.stem}.jpg", quality=90)


if __name__ == "__main__":
    if sys.argv[1:] == ["--thumbnails"]:
        write_thumbnails()
        sys.exit(0)
    if sys.argv[1:] == ["--edits"]:  # the shipped per-prompt edits alone
        train_shipped_edits()
        sys.exit(0)
    if sys.argv[1:] == ["--faces"]:  # after the face generator is (re)trained
        write_sample_grid("faces", ROOT / "docs" / "images" / "faces_samples.png")
        sys.exit(0)
    sys.exit(main())
