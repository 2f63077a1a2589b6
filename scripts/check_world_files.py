"""Print `coral world check`'s table for model files that are not (yet) the shipped ones.

Usage: python scripts/check_world_files.py GENERATOR CLIP_DIR JUDGE [DEVICE]
"""
from __future__ import annotations

import json
import sys

from coral_core.cache import get_clip
from coral_core.formats import load_generator
from coral_core.world.check import check_world, format_check
from coral_core.world.judge import load_judge

if __name__ == "__main__":
    gen, clip_dir, judge = sys.argv[1:4]
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    G = load_generator(gen).generator.to(device)
    result = check_world(G, load_judge(judge), get_clip(clip_dir))
    print(gen)
    print(format_check(result))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
