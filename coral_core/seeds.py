"""Parsing seed lists the way NVIDIA's scripts and ComfyUI users write them: '0-7', '1,5,9-12'."""
from __future__ import annotations

from .errors import InputError

MAX_SEEDS = 100_000


def parse_seeds(text: str | int | list[int]) -> list[int]:
    """Seeds from text ('0-7', '1,5,9-12'), one int or a list of ints, checked alike (a list
    or an int skipped the range check before, so a negative seed reached numpy raw)."""
    seeds: list[int] = []
    if isinstance(text, (int, list)) and not isinstance(text, bool):
        items = [text] if isinstance(text, int) else text
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in items):
            raise InputError(f"seeds must be whole numbers, got {text!r}")
        seeds = list(items)
        text = str(text)
    for part in ("" if seeds else str(text)).replace(" ", "").split(","):
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
