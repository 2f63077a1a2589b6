#!/usr/bin/env python3
"""Rebuild example_workflows/*.json (UI format) from workflows/api/*.json (API format) against a
real ComfyUI server started here with this pack, so widget order and defaults always match the
nodes as they are now. Run after changing any node's inputs:
    .venv/bin/python scripts/regenerate_ui_workflows.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts")]

from api_to_ui import convert  # noqa: E402
from comfy_server import ComfyServer  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(Path(tmp)).start()
        try:
            info = server.get("/object_info")
        finally:
            server.stop()
    for src in sorted((ROOT / "workflows" / "api").glob("*.json")):
        out = ROOT / "example_workflows" / src.name
        out.write_text(json.dumps(convert(json.loads(src.read_text()), info, src.stem),
                                  indent=2) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
