"""Node loaders called directly (an API prompt skips ComfyUI's list validation) never read
outside their folders."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _host():
    if "coralpack" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "coralpack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["coralpack"] = module
        spec.loader.exec_module(module)
    from coralpack.nodes import host  # type: ignore[import-not-found]

    return host


@pytest.mark.parametrize("name", ["../secret.safetensors", "/etc/passwd", "a/../../x", "",
                                  "sub/../../../etc/hosts"])
def test_names_that_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    host = _host()
    with pytest.raises(FileNotFoundError):
        host.contained(tmp_path / "latents", name)


def test_names_inside_the_folder_are_accepted(tmp_path: Path) -> None:
    host = _host()
    assert host.contained(tmp_path, "sub/w.safetensors") == (tmp_path / "sub/w.safetensors"
                                                             ).resolve()


def test_demo_edit_names_cannot_climb_out(tmp_path: Path) -> None:
    host = _host()
    with pytest.raises(FileNotFoundError):
        host.resolve(host.EDIT_FOLDER, "[demo] ../../generator.safetensors")
