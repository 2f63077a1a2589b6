"""Where the shipped demo models live (inside the package, so pip installs carry them)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelFormatError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "demo"
DEMO_GENERATOR = ASSETS / "generator.safetensors"
DEMO_CLIP = ASSETS / "clip"
DEMO_JUDGE = ASSETS / "judge.safetensors"
DEMO_EDITS = ASSETS / "edits"


def require(path: Path) -> Path:
    if not path.exists():
        raise ModelFormatError(f"{path}: the demo model is missing; rebuild it with "
                               "`coral world train-clip` / `coral world train-gan`")
    return path
