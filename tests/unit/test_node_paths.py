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


def test_every_node_declares_its_inputs_with_the_engines_defaults() -> None:
    """INPUT_TYPES runs outside ComfyUI too (a NameError there hides the node in the UI)."""
    _host()
    from coralpack import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # type: ignore
    from coral_core.editing.losses import LossWeights
    from coral_core.editing.trainer import TrainConfig

    for name, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert "required" in spec, name
        assert cls.CATEGORY.startswith("CoralStyleCLIP/"), name
        assert NODE_DISPLAY_NAME_MAPPINGS[name].endswith("(Coral)"), name
    train = NODE_CLASS_MAPPINGS["CoralTrainEdit"].INPUT_TYPES()
    assert train["required"]["steps"][1]["default"] == TrainConfig(prompt="-").steps
    assert train["optional"]["area_weight"][1]["default"] == LossWeights().area
    assert train["optional"]["area_weighting"][1]["default"] == LossWeights().area_weighting


def test_every_train_weight_widget_can_hold_the_engines_default() -> None:
    """The UI rounds a FLOAT widget to its step unless told not to: a weight whose default is
    finer than the step (the global L2, 1e-4) could not be typed in."""
    _host()
    from coralpack import NODE_CLASS_MAPPINGS  # type: ignore
    from coral_core.editing.losses import LossWeights

    optional = NODE_CLASS_MAPPINGS["CoralTrainEdit"].INPUT_TYPES()["optional"]
    defaults = {"area_weight": LossWeights().area, "tv_weight": LossWeights().tv,
                "l2_weight": LossWeights().l2_for("global")}
    for name, value in defaults.items():
        opts = optional[name][1]
        steps = value / opts["step"]
        assert opts.get("round") is False or abs(steps - round(steps)) < 1e-6, name
        assert opts["step"] <= value, name


def test_train_node_seed_is_fixed_so_requeue_reuses_the_edit() -> None:
    _host()
    from coralpack import NODE_CLASS_MAPPINGS  # type: ignore

    seed = NODE_CLASS_MAPPINGS["CoralTrainEdit"].INPUT_TYPES()["required"]["seed"][1]
    assert not seed.get("control_after_generate")


def test_file_nodes_rerun_when_the_file_changes(tmp_path: Path, monkeypatch) -> None:
    """IS_CHANGED: an unchanged file keeps ComfyUI's cached output (no reload on re-queue);
    a file replaced under the same name is read again; a missing one lets the node report."""
    host = _host()
    from coralpack.nodes.editing import CoralLoadEdit  # type: ignore[import-not-found]

    monkeypatch.setattr(host, "DEMO_EDITS", tmp_path)
    f = tmp_path / "e.safetensors"
    f.write_bytes(b"one version")
    first = CoralLoadEdit.IS_CHANGED("[demo] e.safetensors")
    assert CoralLoadEdit.IS_CHANGED("[demo] e.safetensors") == first
    f.write_bytes(b"another version, longer")
    assert CoralLoadEdit.IS_CHANGED("[demo] e.safetensors") != first
    assert CoralLoadEdit.IS_CHANGED("[demo] gone.safetensors").startswith("unresolved:")


def test_help_pages_state_the_defaults_the_nodes_have() -> None:
    """A help page's "(default `X`)" for an input is the node's own default: pages written by
    hand drifted (area_weight said 0.005 after the default became 0.02)."""
    import re

    _host()
    from coralpack import NODE_CLASS_MAPPINGS  # type: ignore

    checked = 0
    for name, cls in NODE_CLASS_MAPPINGS.items():
        page = ROOT / "web" / "docs" / f"{name}.md"
        if not page.is_file():
            continue
        spec = cls.INPUT_TYPES()
        inputs = {**spec.get("required", {}), **spec.get("optional", {})}
        for field, stated in re.findall(r"- \*\*(\w+)\*\* \([^)]*\) \(default `([^`]*)`\)",
                                        page.read_text()):
            assert field in inputs, f"{page.name}: {field} is not an input of {name}"
            actual = inputs[field][1].get("default") if len(inputs[field]) > 1 else None
            assert str(actual) == stated, f"{page.name}: {field} default {stated} != {actual}"
            checked += 1
    assert checked > 10


def test_loaders_list_both_worlds_shipped_models_and_they_load() -> None:
    host = _host()
    from coral_core.cache import get_clip
    from coral_core.formats import load_generator

    gens, clips = host.generator_choices(), host.clip_choices()
    for name in ("[demo] shapes generator", "[demo] faces generator"):
        assert name in gens
        assert load_generator(host.resolve(host.STYLEGAN_FOLDER, name)).generator.num_ws > 0
    for name in ("[demo] shapes CLIP", "[demo] faces CLIP"):
        assert name in clips
        assert get_clip(host.resolve(host.CLIP_FOLDER, name)).image_size == 64


def test_train_node_preset_sets_what_its_widgets_leave_at_their_defaults(monkeypatch) -> None:
    _host()
    import coralpack.nodes.editing as editing  # type: ignore[import-not-found]

    spec = editing.CoralTrainEdit.INPUT_TYPES()["optional"]["preset"]
    assert spec[0] == ["coral", "paper"] and spec[1]["default"] == "coral"
    seen, Stop, model, clip = _capture_training_config(monkeypatch, editing)
    optional = editing.CoralTrainEdit.INPUT_TYPES()["optional"]
    widgets = {name: optional[name][1]["default"] for name in (
        "area_weight", "tv_weight", "l2_weight", "area_weighting", "segments_k",
        "region_pruning", "prior_samples")}
    for preset, pruning in (("paper", widgets["region_pruning"]), ("paper", 0.1)):
        with pytest.raises(Stop):
            editing.CoralTrainEdit().train(model, clip, "a red circle", "ss", "global",
                                           "per image", 4, 0, **{**widgets,
                                                                 "region_pruning": pruning},
                                           preset=preset)
    left, set_ = seen
    assert left.prune_tolerance == 0 and not left.composite  # the preset's
    assert left.weights.area_weighting == "uniform"
    assert set_.prune_tolerance == 0.1 and not set_.composite  # the user's value wins


def test_simple_train_node_shows_few_widgets_and_trains_as_the_advanced_one(monkeypatch) -> None:
    """The simple Train Edit node: about 8 widgets, the preset deciding the rest; given the
    same choices it builds exactly the advanced node's config (so an edit made with either is
    the same edit), and the advanced node's extra widgets are absent from it."""
    _host()
    import coralpack.nodes.editing as editing  # type: ignore[import-not-found]

    simple = editing.CoralTrainEditSimple.INPUT_TYPES()
    widgets = [n for section in ("required", "optional") for n in simple[section]
               if n not in ("model", "clip", "latents")]
    assert 5 <= len(widgets) <= 8 and "preset" in widgets and "prompt" in widgets
    assert "area_weight" not in widgets and "region_pruning" not in widgets
    seen, Stop, model, clip = _capture_training_config(monkeypatch, editing)
    advanced = editing.CoralTrainEdit.INPUT_TYPES()["optional"]
    defaults = {name: spec[1]["default"] for name, spec in advanced.items()
                if name not in ("latents", "segments", "preset")}
    for preset in ("coral", "paper"):
        with pytest.raises(Stop):
            editing.CoralTrainEditSimple().train(model, clip, "a red circle", "ss",
                                                 "per image", 7, 3, preset=preset)
        with pytest.raises(Stop):
            editing.CoralTrainEdit().train(model, clip, "a red circle", "ss", "global",
                                           "per image", 7, 3, preset=preset, **defaults)
    simple_coral, advanced_coral, simple_paper, advanced_paper = seen
    assert simple_coral == advanced_coral and simple_paper == advanced_paper
    assert simple_coral.steps == 7 and simple_coral.seed == 3
    assert simple_coral.composite and not simple_paper.composite


def _capture_training_config(monkeypatch, editing):
    """Stub the Train nodes' engine call: the config each node builds is recorded in ``seen``
    and training stops there (raising ``Stop``); ``model`` and ``clip`` are the demo's, as the
    loader nodes hand them over."""
    from coral_core.cache import get_clip, get_generator
    from coral_core.world import assets

    seen = []

    class Stop(Exception):
        pass

    def capture(G, C, cfg, **kw):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(editing, "train_edit", capture)
    monkeypatch.setattr(editing.host, "Progress", lambda *a, **k: (lambda *x: None))
    monkeypatch.setattr(editing.host, "send_event", lambda *a, **k: None)
    model = type("M", (), {"generator": lambda self: get_generator(
        assets.DEMO_GENERATOR).generator})()
    clip = type("C", (), {"ready": lambda self: get_clip(assets.DEMO_CLIP)})()
    return seen, Stop, model, clip


def _choice_per_preset(monkeypatch, widget: str, field: str) -> tuple[list, object]:
    """The config field a Train Edit Advanced on/off/preset widget sets, for each preset and
    choice (coral then paper; preset, on, off), then with the widget left out; and the node
    module."""
    _host()
    import coralpack.nodes.editing as editing  # type: ignore[import-not-found]

    seen, Stop, model, clip = _capture_training_config(monkeypatch, editing)
    calls = [{widget: choice, "preset": preset} for preset in ("coral", "paper")
             for choice in ("preset", "on", "off")] + [{}]
    for kwargs in calls:
        with pytest.raises(Stop):
            editing.CoralTrainEdit().train(model, clip, "a red circle", "ss", "global",
                                           "per image", 7, 3, **kwargs)
    return [getattr(cfg, field) for cfg in seen], editing


def test_train_node_absent_check_follows_the_preset_unless_set(monkeypatch) -> None:
    """Train Edit Advanced's absent_check: 'preset' takes the preset's (coral on, paper off);
    'on' / 'off' win over either preset."""
    got, _ = _choice_per_preset(monkeypatch, "absent_check", "check_absent")
    assert got == [True, True, False, False, True, False, True]


def test_train_node_hold_to_prior_follows_the_preset_unless_set(monkeypatch) -> None:
    """Train Edit Advanced's hold_to_prior: 'preset' takes the preset's (coral on, paper
    off); 'on' / 'off' win; a workflow saved before the widget existed (no value) keeps the
    preset's."""
    got, editing = _choice_per_preset(monkeypatch, "hold_to_prior", "along_prior")
    assert got == [True, True, False, False, True, False, True]
    inputs = editing.CoralTrainEdit.INPUT_TYPES()["optional"]
    assert list(inputs)[-1] == "hold_to_prior"  # appended: saved workflows keep their order


def test_demo_photo_draws_either_world_as_its_renderer_does() -> None:
    """Demo Photo's picture is the world's render of the seed's scenes (never the
    generator's), with the caption of what each shows; an unknown world is a named error."""
    import torch

    from coral_core.world.faces.render import render as render_faces
    from coral_core.world.faces.scene import random_faces
    from coral_core.world.render import render as render_shapes
    from coral_core.world.scene import random_scenes

    _host()
    from coralpack.nodes.demo import CoralDemoPhoto  # type: ignore[import-not-found]

    node = CoralDemoPhoto()
    for world, truth in (("faces", render_faces(random_faces(2, 5))[0]),
                         ("shapes", render_shapes(random_scenes(2, 5))[0])):
        image, caption = node.make(5, 2, world)
        assert image.shape == (2, 64, 64, 3)
        assert torch.allclose(image, ((truth.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1))
        assert len(caption.splitlines()) == 2
    assert "face" in node.make(5, 1, "faces")[1]
    assert node.make(5, 1)[1] == node.make(5, 1, "faces")[1]  # the newcomer's world
    with pytest.raises(ValueError, match="world"):
        node.make(5, 1, "cats")
