"""Every shipped API workflow runs on the demo models in a real ComfyUI server, bad inputs give
node errors without taking the server down, and Cancel interrupts training."""
from __future__ import annotations

import copy
import io
import re
import threading

import numpy as np
import torch
import pytest
from PIL import Image

from comfy_server import load_workflow, output_images, upload_image


def _ok(result: dict) -> dict:
    assert result["status"] == "success", (result.get("data") or {}).get(
        "exception_message", result.get("body"))
    return result["outputs"]


def test_train_apply_visualise(server) -> None:
    wf = load_workflow("train_apply_visualise")
    first = server.run(wf)
    outputs = _ok(first)
    edited = output_images(server, outputs, "7")
    original = output_images(server, outputs, "8")
    assert len(edited) == 2 and edited[0].shape == (64, 64, 3)
    assert any(np.abs(e.astype(int) - o.astype(int)).mean() > 1 for e, o in zip(edited,
                                                                                 original))
    grid = output_images(server, outputs, "9")[0]
    assert grid.shape[1] > 64 * 4  # one labelled tile per layer
    assert list((server.base / "models" / "coral_edits").glob("my_edit_*.safetensors"))
    progress = [m for m in first["messages"] if m["type"] == "progress"
                and m["data"]["node"] == "4"]
    assert progress and progress[-1]["data"]["value"] == progress[-1]["data"]["max"]
    live = [m for m in first["messages"] if m["type"] == "coralstyleclip.train"]
    assert live and "losses" in live[-1]["data"] and live[-1]["data"]["node"] == "4"

    # unchanged graph: the training node is served from the cache
    again = server.run(wf)
    _ok(again)
    cached = [m for m in again["messages"] if m["type"] == "execution_cached"]
    assert cached and "4" in cached[0]["data"]["nodes"]
    # a changed prompt retrains
    changed = copy.deepcopy(wf)
    changed["4"]["inputs"]["prompt"] = "a pink background"
    result = server.run(changed)
    _ok(result)
    assert any(m["type"] == "executing" and m["data"].get("node") == "4"
               for m in result["messages"])


def test_apply_saved_edit_to_a_batch(server) -> None:
    outputs = _ok(server.run(load_workflow("apply_saved_edit")))
    edited = output_images(server, outputs, "7")
    original = output_images(server, outputs, "8")
    assert len(edited) == 8
    assert np.mean([np.abs(e.astype(int) - o.astype(int)).mean()
                    for e, o in zip(edited, original)]) > 1
    # Apply Edit shows before | after itself for the first four pictures
    shown = output_images(server, outputs, "5")
    assert len(shown) == 4
    for pair, e, o in zip(shown, edited, original):  # enlarged 4x: 64-px pictures
        small = pair[::4, ::4]
        assert pair.shape[0] == 4 * e.shape[0] and small.shape[1] == 2 * e.shape[1]
        assert np.array_equal(small[:, :e.shape[1]], o)
        assert np.array_equal(small[:, e.shape[1]:], e)
    # the scene check's verdict is on the node: the pictures it left as they were, and why
    unchanged = [i for i, (e, o) in enumerate(zip(edited, original)) if np.array_equal(e, o)]
    notes = outputs["5"].get("text") or []
    assert unchanged and notes
    named = {int(n) for note in notes
             for rows in re.findall(r"image\(s\) ((?:\d+, )*\d+)", note)
             for n in rows.split(", ")}
    assert set(unchanged) <= named, (unchanged, notes)


def test_invert_template_runs_as_shipped_and_on_an_uploaded_photo(server) -> None:
    from coral_core.images import image_to_uint8
    from coral_core.metrics import psnr
    from coral_core.world.faces.render import render
    from coral_core.world.faces.scene import random_faces

    # as shipped: the Demo Photo node's portrait, nothing to upload first
    wf = load_workflow("invert_photo_and_edit")
    assert wf["3"]["class_type"] == "CoralDemoPhoto" and wf["3"]["inputs"]["world"] == "faces"
    outputs = _ok(server.run(wf))
    rec = output_images(server, outputs, "7")[0]
    assert rec.shape == (64, 64, 3)
    assert output_images(server, outputs, "8")[0].shape == (64, 64, 3)
    truth, _ = render(random_faces(1, wf["3"]["inputs"]["seed"]))
    as_tensor = torch.from_numpy(rec.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert float(psnr(as_tensor, truth)[0]) > 15  # the reconstruction is of that portrait

    # a user's photo through Load Image, at a size the generator does not draw
    img, _ = render(random_faces(1, 99), 48)
    buf = io.BytesIO()
    Image.fromarray(image_to_uint8(img)[0]).save(buf, format="PNG")
    upload_image(server, "coral_photo.png", buf.getvalue())
    wf["3"] = {"class_type": "LoadImage", "inputs": {"image": "coral_photo.png"}}
    outputs = _ok(server.run(wf))
    assert output_images(server, outputs, "7")[0].shape == (64, 64, 3)


def test_segments_from_any_mask_node(server) -> None:
    outputs = _ok(server.run(load_workflow("segments_from_masks")))
    assert output_images(server, outputs, "9")[0].shape == (64, 64, 3)
    mask = output_images(server, outputs, "11")[0]
    assert mask.shape == (64, 64, 3)
    original = output_images(server, outputs, "12")[0]  # the before beside the after
    assert original.shape == (64, 64, 3)
    assert not (original == output_images(server, outputs, "9")[0]).all()


# ---- bad inputs: a node error, then the server serves the next prompt ----------------------

def _next_prompt_still_runs(server) -> None:
    wf = {"1": {"class_type": "CoralLoadStyleGAN",
                "inputs": {"generator": "[demo] shapes generator"}},
          "2": {"class_type": "CoralSampleLatents",
                "inputs": {"model": ["1", 0], "seed": 5, "batch_size": 1, "truncation": 1.0}},
          "3": {"class_type": "CoralGenerate",
                "inputs": {"model": ["1", 0], "latents": ["2", 0], "noise_mode": "const"}},
          "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    _ok(server.run(wf))


def _loader_fails(server, template: str, class_type: str, field: str, value: str,
                  *words: str, timeout: float = 60) -> None:
    """Point one loader node of a shipped template at ``value``: the prompt must fail at that
    node with a message naming the file (and ``words``)."""
    wf = load_workflow(template)
    node = next(k for k, n in wf.items() if n["class_type"] == class_type)
    wf[node]["inputs"][field] = value
    result = server.run(wf, timeout=timeout)
    assert result["status"] == "execution_error" and result["data"]["node_id"] == node
    for word in (value, *words):
        assert word in result["data"]["exception_message"], result["data"]["exception_message"]


def test_missing_model_file(server) -> None:
    wf = load_workflow("apply_saved_edit")
    wf["1"]["inputs"]["generator"] = "no_such_model.pkl"
    result = server.run(wf)
    assert result["status"] == "rejected" and result["http"] == 400
    errors = result["body"]["node_errors"]["1"]["errors"]
    assert errors[0]["type"] == "value_not_in_list"
    _next_prompt_still_runs(server)


def test_wrong_link_type(server) -> None:
    wf = load_workflow("apply_saved_edit")
    wf["5"]["inputs"]["latents"] = ["4", 0]  # a CORAL_EDIT into a CORAL_STYLEGAN_LATENT input
    result = server.run(wf)
    assert result["status"] == "rejected"
    assert result["body"]["node_errors"]["5"]["errors"][0]["type"] == "return_type_mismatch"
    _next_prompt_still_runs(server)


def test_empty_prompt(server) -> None:
    wf = load_workflow("train_apply_visualise")
    wf["4"]["inputs"]["prompt"] = "   "
    result = server.run(wf)
    assert result["status"] == "execution_error"
    assert result["data"]["node_id"] == "4"
    assert "prompt is empty" in result["data"]["exception_message"]
    _next_prompt_still_runs(server)


def test_image_too_small_to_invert(server) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (5, 3), (200, 10, 10)).save(buf, format="PNG")
    upload_image(server, "tiny.png", buf.getvalue())
    wf = load_workflow("invert_photo_and_edit")
    wf["3"] = {"class_type": "LoadImage", "inputs": {"image": "tiny.png"}}
    result = server.run(wf)
    assert result["status"] == "execution_error" and result["data"]["node_id"] == "4"
    assert "too small" in result["data"]["exception_message"]
    _next_prompt_still_runs(server)


def test_interrupting_training(server) -> None:
    wf = load_workflow("train_apply_visualise")
    wf["4"]["inputs"]["steps"] = 5000
    wf["4"]["inputs"]["prompt"] = "a black background"
    sent = threading.Event()

    def on_message(srv, pid, msg):
        if msg["type"] == "progress" and msg["data"].get("node") == "4" and not sent.is_set():
            sent.set()
            srv.post("/interrupt", {"prompt_id": pid})

    result = server.run(wf, on_message=on_message)
    assert result["status"] == "execution_interrupted"
    import time

    pid = result["prompt_id"]
    for _ in range(50):  # the history entry is written just after the event is sent
        hist = server.get(f"/history/{pid}")
        if pid in hist:
            break
        time.sleep(0.2)
    assert hist[pid]["status"]["status_str"] == "error"
    _next_prompt_still_runs(server)


@pytest.mark.parametrize("name", ["train_apply_visualise", "apply_saved_edit",
                                  "invert_photo_and_edit", "segments_from_masks"])
def test_templates_are_listed(server, name) -> None:
    templates = server.get("/workflow_templates")
    ours = [v for k, v in templates.items() if "CoralStyleCLIP" in k]
    assert ours and name in ours[0]


def test_extension_js_is_served(server) -> None:
    assert any("coral_live_training.js" in e for e in server.get("/extensions"))


def test_free_memory_then_run_again(server) -> None:
    """ComfyUI's free-memory call unloads our models (they are ModelPatchers); the next run
    loads them back and works."""
    _next_prompt_still_runs(server)
    status, _ = server.post("/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    _next_prompt_still_runs(server)


def test_invert_with_pivotal_tuning_returns_a_usable_tuned_model(server) -> None:
    from coral_core.images import image_to_uint8
    from coral_core.world.render import render
    from coral_core.world.scene import random_scenes

    img, _ = render(random_scenes(1, 7), 64)
    buf = io.BytesIO()
    Image.fromarray(image_to_uint8(img)[0]).save(buf, format="PNG")
    upload_image(server, "coral_photo_pti.png", buf.getvalue())
    wf = load_workflow("invert_photo_and_edit")
    wf["3"] = {"class_type": "LoadImage", "inputs": {"image": "coral_photo_pti.png"}}
    wf["4"]["inputs"].update(steps=5, pti_steps=3)
    del wf["5"], wf["6"], wf["8"]  # the demo edit belongs to the untuned generator
    wf["9"] = {"class_type": "CoralGenerate",
               "inputs": {"model": ["4", 2], "latents": ["4", 0], "noise_mode": "const"}}
    wf["10"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0],
                                                      "filename_prefix": "coral_pti"}}
    outputs = _ok(server.run(wf))
    rec = output_images(server, outputs, "7")[0]
    gen = output_images(server, outputs, "10")[0]
    assert np.array_equal(rec, gen)  # the tuned model reproduces its reconstruction


def test_hostile_and_corrupt_model_files_give_node_errors(server, tmp_path) -> None:
    """A crafted TorchScript "CLIP" and a pickle nested 200,000 deep, dropped into the model
    folders: each prompt fails at its loader with a message, nothing from the file runs, the
    server survives and serves the next prompt."""
    import zipfile

    from fabricate import write_hostile_torchscript

    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    clip_dir = server.base / "models" / "coral_clip"
    clip_dir.mkdir(parents=True, exist_ok=True)
    write_hostile_torchscript(clip_dir / "ViT-evil.pt", victim, "pwned!!!")
    gen_dir = server.base / "models" / "stylegan"
    gen_dir.mkdir(parents=True, exist_ok=True)
    (gen_dir / "deep.pkl").write_bytes(b"\x80\x04}" + b")" + b"\x85" * 200_000 + b"K\x01s.")
    with zipfile.ZipFile(gen_dir / "deep.pt", "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x04}" + b")" + b"\x85" * 200_000 + b"K\x01s.")

    _loader_fails(server, "train_apply_visualise", "CoralLoadCLIP", "clip_name", "ViT-evil.pt")
    assert victim.read_text() == "original"
    for name in ("deep.pkl", "deep.pt"):
        _loader_fails(server, "apply_saved_edit", "CoralLoadStyleGAN", "generator", name,
                      "nests objects")
    _next_prompt_still_runs(server)


def test_hostile_clip_folder_and_archive_bomb_give_node_errors(server) -> None:
    """Round three: a CLIP local-dir folder whose weights nest 200,000 levels (it killed the
    server through open_clip's own torch.load) and a generator zip whose data.pkl inflates to
    1 GiB: named errors at their loaders, and the server serves the next prompt."""
    import json
    import zipfile

    from fabricate import TINY_CLIP_CFG

    deep = b"\x80\x04}" + b")" + b"\x85" * 200_000 + b"K\x01s."
    folder = server.base / "models" / "coral_clip" / "deep_local"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG}))
    with zipfile.ZipFile(folder / "open_clip_pytorch_model.bin", "w") as zf:
        zf.writestr("archive/data.pkl", deep)
        zf.writestr("archive/version", "3\n")
    _loader_fails(server, "train_apply_visualise", "CoralLoadCLIP", "clip_name", "deep_local",
                  "nests objects")
    bomb = server.base / "models" / "stylegan" / "bomb.pt"
    bomb.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as f:
            for _ in range(64):
                f.write(b"\x00" * (1 << 24))
    _loader_fails(server, "apply_saved_edit", "CoralLoadStyleGAN", "generator", "bomb.pt",
                  timeout=120)
    _next_prompt_still_runs(server)


def test_absurd_configs_bad_metadata_and_nan_weights_give_node_errors(server,
                                                                      tmp_path) -> None:
    """The round-three classes that reach the loaders through the model folders: a CLIP
    folder whose config declares a 10^9-wide text tower beside real weights, a generator with a
    NaN weight behind a valid content hash, and an edit whose (re-signed) metadata says
    max_layer = -7. Each fails at its own loader node with the file named, and the server then
    serves the next prompt."""
    import json
    import shutil

    from fabricate import write_clip_files

    from coral_core.formats.integrity import HASH_KEY, read_safetensors, write_safetensors
    from coral_core.world import assets

    files = write_clip_files(tmp_path / "clip")
    folder = server.base / "models" / "coral_clip" / "absurd_local"
    shutil.copytree(files["local_dir"], folder)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["width"] = 10**9
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    _loader_fails(server, "train_apply_visualise", "CoralLoadCLIP", "clip_name", "absurd_local")

    meta, tensors = read_safetensors(assets.DEMO_GENERATOR, "generator", require_hash=False)
    key = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 8)
    tensors[key].view(-1)[3] = float("nan")
    gen_dir = server.base / "models" / "stylegan"
    gen_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(gen_dir / "nan_weight.safetensors", tensors,
                      {k: v for k, v in meta.items() if k != HASH_KEY})
    _loader_fails(server, "apply_saved_edit", "CoralLoadStyleGAN", "generator",
                  "nan_weight.safetensors")

    meta, tensors = read_safetensors(assets.DEMO_EDITS / "orange_background.safetensors", "edit",
                                     require_hash=False)
    edit_dir = server.base / "models" / "coral_edits"
    edit_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(edit_dir / "bad_max_layer.safetensors", tensors,
                      {**{k: v for k, v in meta.items() if k != HASH_KEY}, "max_layer": "-7"})
    _loader_fails(server, "apply_saved_edit", "CoralLoadEdit", "edit_name",
                  "bad_max_layer.safetensors", "max_layer")
    _next_prompt_still_runs(server)


def test_requeue_with_only_downstream_changes_does_not_retrain(server) -> None:
    """Training events are counted over the websocket: queueing the train template again with
    only Apply's strength changed trains nothing (ComfyUI's cache keeps the edit) and still
    gives a different picture; changing the Train node's seed trains again."""
    def train_events(result: dict) -> int:
        return sum(m["type"] == "coralstyleclip.train" for m in result["messages"])

    wf = load_workflow("train_apply_visualise")
    train = next(k for k, n in wf.items() if n["class_type"] == "CoralTrainEdit")
    apply = next(k for k, n in wf.items() if n["class_type"] == "CoralApplyEdit")
    wf[train]["inputs"].update(steps=7, prompt="a yellow background")  # a run no test shares
    first = server.run(wf)
    before = output_images(server, _ok(first), "7")
    assert train_events(first) >= 1
    wf[apply]["inputs"]["strength"] = 0.5
    second = server.run(wf)
    after = output_images(server, _ok(second), "7")
    assert train_events(second) == 0
    assert not np.array_equal(before[0], after[0])  # the new strength did apply
    wf[train]["inputs"]["seed"] = 1
    third = server.run(wf)
    _ok(third)
    assert train_events(third) >= 1


def test_train_node_with_its_defaults_makes_a_localised_background_edit(server) -> None:
    """Issues 11 and 26: the Train node, every input at its default (the demo prompt, per
    image, seeds 0-3), on the demo portraits a newcomer starts from, recolours the background
    and keeps every part of the face, as `coral demo` does; scored by the face world's
    independent judge, never by the edit's own masks."""
    from coral_core.formats import load_generator
    from coral_core.world import assets
    from coral_core.world.faces.judge import load_face_judge

    # the defaults as the host itself announces them to the front end
    info = server.get("/object_info/CoralTrainEdit")["CoralTrainEdit"]
    spec = info["input"]["required"]
    defaults = {name: (opts[1]["default"] if len(opts) > 1 and "default" in opts[1]
                       else opts[0][0]) for name, opts in spec.items()
                if name not in ("model", "clip")}
    wf = {"1": {"class_type": "CoralLoadStyleGAN",
                "inputs": {"generator": "[demo] faces generator"}},
          "2": {"class_type": "CoralLoadCLIP",
                "inputs": {"clip_name": "[demo] faces CLIP", "model_name": ""}},
          "3": {"class_type": "CoralTrainEdit",
                "inputs": {"model": ["1", 0], "clip": ["2", 0], **defaults}},
          "4": {"class_type": "SaveImage",
                "inputs": {"images": ["3", 1], "filename_prefix": "defaults_edit"}}}
    edited = output_images(server, _ok(server.run(wf)), "4")
    assert defaults["prompt"] == "a blue background" and len(edited) == 4
    where = assets.world_assets("faces")
    G = load_generator(where.generator).generator
    with torch.no_grad():
        before = G.synthesize(G.mapping_ws(G.z_from_seeds(range(4))))
    after = torch.from_numpy(np.stack(edited)).permute(0, 3, 1, 2).float() / 127.5 - 1
    judge = load_face_judge(where.judge)
    read_before, read_after = judge.read(before), judge.read(after)
    recoloured = sum(r["background"] == "blue" for r in read_after)
    kept = sum({k: v for k, v in a.items() if k != "background"} ==
               {k: v for k, v in b.items() if k != "background"}
               for a, b in zip(read_after, read_before))
    assert recoloured >= 3, read_after
    assert kept >= 3, (read_before, read_after)
