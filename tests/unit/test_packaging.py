"""Packaging rules for a ComfyUI node pack, checked by the real tools."""
from __future__ import annotations

import pytest

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_requirements_never_list_torch() -> None:
    reqs = [ln.split("#")[0].strip().lower() for ln in (ROOT / "requirements.txt").read_text()
            .splitlines()]
    names = {r.split("=")[0].split(">")[0].split("<")[0].strip() for r in reqs if r}
    assert not names & {"torch", "torchvision", "torchaudio"}
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = {d.split("=")[0].split(">")[0].split("<")[0].strip().lower()
            for d in meta["project"]["dependencies"]}
    assert not deps & {"torch", "torchvision", "torchaudio"}  # ComfyUI brings its own
    # the registry's specification: the node id must not include "ComfyUI"
    assert "comfyui" not in meta["project"]["name"].lower()
    assert {"PublisherId", "DisplayName", "Icon"} <= set(meta["tool"]["comfy"])
    icon = meta["tool"]["comfy"]["Icon"]
    repo = meta["project"]["urls"]["Repository"].replace("https://github.com/", "")
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    assert icon.startswith(prefix) and (ROOT / icon[len(prefix):]).is_file(), icon


def test_comfy_node_validate_passes() -> None:
    comfy = shutil.which("comfy") or str(Path(sys.executable).parent / "comfy")
    proc = subprocess.run([comfy, "--skip-prompt", "node", "validate"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validation checks passed" in proc.stdout + proc.stderr


@pytest.mark.source_scan
def test_engine_never_imports_comfyui() -> None:
    for path in (ROOT / "coral_core").rglob("*.py"):
        text = path.read_text()
        for banned in ("import comfy", "from comfy", "import folder_paths", "from server"):
            assert banned not in text, f"{path} uses ComfyUI ({banned})"


@pytest.mark.source_scan
def test_no_unsafe_loading_calls() -> None:
    for path in list((ROOT / "coral_core").rglob("*.py")) + list((ROOT / "nodes").rglob("*.py")):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert "pickle.load(" not in text and "pickle.loads(" not in text, path


def test_ui_workflows_are_twins_of_the_api_ones() -> None:
    import json

    api_files = sorted((ROOT / "workflows" / "api").glob("*.json"))
    assert len(api_files) >= 4
    for api_path in api_files:
        api = json.loads(api_path.read_text())
        ui = json.loads((ROOT / "example_workflows" / api_path.name).read_text())
        assert (ROOT / "example_workflows" / f"{api_path.stem}.jpg").is_file()
        assert sorted(n["type"] for n in ui["nodes"] if n["type"] != "Note") == sorted(
            n["class_type"] for n in api.values())
        api_links = sum(isinstance(v, list) for n in api.values() for v in n["inputs"].values())
        assert len(ui["links"]) == api_links and ui["version"] == 0.4
        notes = [n for n in ui["nodes"] if n["type"] == "Note"]
        assert len(notes) == 1 and "Change first" in notes[0]["widgets_values"][0], api_path
        _no_two_nodes_overlap(ui, api_path.name)


def _no_two_nodes_overlap(ui: dict, name: str) -> None:
    """Every node's box (with the room its image preview or live view takes below its
    widgets) is clear of every other's, so no output is hidden at the default zoom."""
    boxes = [(n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0],
              n["pos"][1] + n["size"][1], n["type"]) for n in ui["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
            assert apart, f"{name}: {a[4]} overlaps {b[4]}"
        if a[4] in ("SaveImage", "PreviewImage"):
            assert a[3] - a[1] >= 300, f"{name}: {a[4]} has no room for its preview"


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the coral_core modules a file imports (relative imports resolved)."""
    import ast

    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {n for n in out if n.startswith("coral_core")}


def _within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.source_scan
def test_engine_layers_never_import_upwards() -> None:
    """The engine (generator, formats, editing, inversion) never imports the demo world or
    the commands: a user's FFHQ edit must not depend on the demo assets."""
    engine = [p for sub in ("stylegan", "formats", "editing", "inversion")
              for p in (ROOT / "coral_core" / sub).rglob("*.py")]
    assert len(engine) > 20
    for path in engine:
        upward = {m for m in _imported_modules(path)
                  if _within(m, "coral_core.world", "coral_core.commands", "coral_core.cli")}
        assert not upward, f"{path.relative_to(ROOT)} imports {sorted(upward)}"
    world = [p for p in (ROOT / "coral_core" / "world").rglob("*.py")]
    for path in world:
        assert not {m for m in _imported_modules(path)
                    if _within(m, "coral_core.commands", "coral_core.cli")}, path


def test_each_template_is_listed_once_with_its_own_thumbnail() -> None:
    """ComfyUI 0.3.75 lists */{example_workflows,example,examples,workflow,workflows}/*.json as
    templates: only example_workflows/ may hold JSON there (the API twins live one level down),
    and no two templates share a thumbnail."""
    for folder in ("example", "examples", "workflow", "workflows"):
        assert not list((ROOT / folder).glob("*.json")), f"{folder}/ would list templates twice"
    thumbs = [p.read_bytes() for p in sorted((ROOT / "example_workflows").glob("*.jpg"))]
    assert len(thumbs) >= 4 and len(set(thumbs)) == len(thumbs)
