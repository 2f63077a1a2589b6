"""Where the shipped demo models live (inside the package, so pip installs carry them)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFormatError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "demo"
DEMO_GENERATOR = ASSETS / "generator.safetensors"
DEMO_CLIP = ASSETS / "clip"
DEMO_JUDGE = ASSETS / "judge.safetensors"
DEMO_EDITS = ASSETS / "edits"
FACES = ASSETS.parent / "faces"
#: The world a newcomer meets first: `coral demo`, the main template, the README's first
#: picture (issue 26: the pack's users edit faces).
DEMO_WORLD = "faces"
#: Each world's demo prompt, the edit that shows the method best there: on faces a background
#: recolour (hair and eye colours damage other parts more often, and the paper's "a face with
#: a beard" fails on every fresh face: a blotch, or refused as going too far;
#: docs/demo-worlds.md).
DEMO_PROMPTS = {"shapes": "an orange background", "faces": "a blue background"}
#: The prompt the demo, the Train node and the templates start from.
DEFAULT_PROMPT = DEMO_PROMPTS[DEMO_WORLD]
WORLDS = tuple(DEMO_PROMPTS)
#: Each world's shipped per-prompt edit of its demo prompt (in DEMO_EDITS; the Load Edit node
#: lists them as "[demo] NAME"), made by scripts/finish_demo_assets.py.
SHIPPED_EDITS = {"shapes": "orange_background.safetensors",
                 "faces": "faces_blue_background.safetensors"}


@dataclass(frozen=True)
class WorldAssets:
    """Where one world's shipped models live."""

    generator: Path
    clip: Path
    judge: Path


def world_assets(world: str) -> WorldAssets:
    folder = {"shapes": ASSETS, "faces": FACES}[world]
    return WorldAssets(folder / "generator.safetensors", folder / "clip",
                       folder / "judge.safetensors")


def require(path: Path) -> Path:
    if not path.exists():
        raise ModelFormatError(f"{path}: the demo model is missing; rebuild it with "
                               "`coral world train-clip` / `coral world train-gan`")
    return path
