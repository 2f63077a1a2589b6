"""Parsing seed lists the way NVIDIA's scripts and ComfyUI users write them: '0-7', '1,5,9-12'."""
from __future__ import annotations

from .errors import InputError

MAX_SEEDS = 100_000


def parse_seeds(text: str | int | list[int]) -> list[int]:
    if isinstance(text, int):
        return [text]
    if isinstance(text, list):
        return [int(s) for s in text]
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else ("", part)
                a, b = int(lo), int(hi)
                if b < a:
                    raise InputError(f"seed range '{part}' ends before it starts")
                if b - a + 1 + len(seeds) > MAX_SEEDS:
                    raise InputError(f"seeds {text!r} name more than {MAX_SEEDS} images; "
                                     "split the batch")
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError as exc:
            raise InputError(f"seeds must look like '0-7' or '1,5,9-12', got {text!r}") from exc
    if not seeds:
        raise InputError(f"no seeds in {text!r}")
    if any(s < 0 or s >= 2 ** 32 for s in seeds):
        raise InputError(f"seeds must be in 0..2^32-1 (numpy RandomState), got {text!r}")
    return seeds
