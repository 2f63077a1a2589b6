"""``coral prepare``: build a generator's one-time data ahead of the first edit, and list it.

Why: the first edit on a new generator and CLIP builds the segment catalogue and the direction
prior's sample bank (minutes on a CPU for a large generator). A user who prepares once (for
example before a ComfyUI session, or on a faster machine sharing the cache folder) starts every
edit at once; ``--list`` shows what is cached and where, so stale entries can be removed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .edit import _clip, _common, _generator

# cached file name -> what it holds (prior.bank_path and catalogue.catalogue_for name them)
_KINDS = {"bank": "sample bank", "catalogue": "segment catalogue"}


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..editing.catalogue import default_cache_dir

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.list:
        return _list_cache(cache)
    from ..editing.catalogue import catalogue_for
    from ..editing.presets import preset_defaults
    from ..editing.prior import bank_path, sample_bank_for
    from ..progress import counted_phase

    defaults = preset_defaults()
    G, clip = _generator(args), _clip(args)
    t0 = time.perf_counter()
    catalogue_for(G, defaults.num_segments, cache)
    print(f"segment catalogue: ready ({time.perf_counter() - t0:.1f} s)")
    if not defaults.prior_samples:
        return 0
    t0 = time.perf_counter()

    def report(done: int, total: int) -> None:
        print(counted_phase("sample bank", done, total, time.perf_counter() - t0),
              file=sys.stderr, flush=True)

    sample_bank_for(G, clip, defaults.prior_samples, cache, report)
    print(f"sample bank ({defaults.prior_samples} samples): ready "
          f"({time.perf_counter() - t0:.1f} s) in "
          f"{bank_path(G, clip, defaults.prior_samples, cache)}")
    return 0


def _list_cache(cache: Path) -> int:
    from ..editing.prior import BANK_SUFFIX

    files = sorted(cache.glob("*.safetensors")) if cache.is_dir() else []
    print(f"cache folder: {cache} (set CORAL_CACHE_DIR to move it)")
    if not files:
        print("  nothing cached yet")
    for f in files:
        kind = _KINDS.get(f.name.split("-", 1)[0], "other")
        if kind == "sample bank" and not f.name.endswith(BANK_SUFFIX):
            kind = "old bank (unused)"  # raw readings, before the CLIP read the display
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(f.stat().st_mtime))
        print(f"  {kind:<17} {f.stat().st_size / 1e6:7.2f} MB  {stamp}  {f.name}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``prepare`` to the ``coral`` parser."""
    s = sub.add_parser("prepare", help="build a generator's segment catalogue and sample bank "
                                       "ahead of the first edit (or --list what is cached)")
    s.set_defaults(run=cmd_prepare)
    _common(s, clip=True)
    s.add_argument("--list", action="store_true", help="list the cached files and stop")
    s.add_argument("--cache-dir", default=None,
                   help="where to keep them (default: $CORAL_CACHE_DIR or the user's cache)")
