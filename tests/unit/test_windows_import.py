"""The pack imports where Unix-only modules are missing (ComfyUI's Windows builds): nothing
the nodes import may need ``resource``."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_nodes_import_without_the_resource_module() -> None:
    code = textwrap.dedent(f"""
        import importlib.util, sys
        sys.modules["resource"] = None  # what Windows has: import resource fails
        spec = importlib.util.spec_from_file_location(
            "coralpack", {str(ROOT / '__init__.py')!r},
            submodule_search_locations=[{str(ROOT)!r}])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["coralpack"] = pack
        spec.loader.exec_module(pack)
        import coralpack.nodes.editing, coralpack.nodes.host
        from coralpack.coral_core.devices import peak_rss_mib
        assert peak_rss_mib() == 0.0
        print("OK", len(pack.NODE_CLASS_MAPPINGS))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.startswith("OK")
