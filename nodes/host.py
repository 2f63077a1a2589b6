"""Everything that touches ComfyUI itself: model folders, devices, progress, events, memory.

Kept in one module so the node classes stay declarative and coral_core never sees ComfyUI.
"""
from __future__ import annotations

import base64
import contextlib
import io
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..coral_core.world.assets import DEMO_CLIP, DEMO_EDITS, DEMO_GENERATOR, world_assets

try:  # present only inside a ComfyUI process; the package must still import elsewhere
    import comfy.model_management as mm
    import comfy.utils
    import folder_paths
except ImportError:  # pragma: no cover - exercised by importing the pack outside ComfyUI
    mm = comfy = folder_paths = None  # type: ignore[assignment]

EVENT_PREFIX = "coralstyleclip"
STYLEGAN_FOLDER = "stylegan"
CLIP_FOLDER = "coral_clip"
EDIT_FOLDER = "coral_edits"
ENCODER_FOLDER = "coral_encoders"
DEMO_GENERATOR_NAME = "[demo] shapes generator"
DEMO_CLIP_NAME = "[demo] shapes CLIP"
FACES_GENERATOR_NAME = "[demo] faces generator"
FACES_CLIP_NAME = "[demo] faces CLIP"
_FACES = world_assets("faces")
#: The shipped models each loader lists first (the face world's only where it is shipped).
SHIPPED = {DEMO_GENERATOR_NAME: DEMO_GENERATOR, DEMO_CLIP_NAME: DEMO_CLIP,
           FACES_GENERATOR_NAME: _FACES.generator, FACES_CLIP_NAME: _FACES.clip}


def _shipped(*names: str) -> list[str]:
    return [n for n in names if SHIPPED[n].exists()]
MODEL_EXTENSIONS = {".pkl", ".pt", ".pth", ".safetensors"}
CLIP_EXTENSIONS = {".pt", ".pth", ".bin", ".safetensors"}


def register_folders() -> None:
    """models/stylegan, models/coral_clip, models/coral_edits, merged with any paths that
    extra_model_paths.yaml already registered under the same names."""
    if folder_paths is None:
        return
    for name, exts in ((STYLEGAN_FOLDER, MODEL_EXTENSIONS), (CLIP_FOLDER, CLIP_EXTENSIONS),
                       (EDIT_FOLDER, {".safetensors"}), (ENCODER_FOLDER, {".pt", ".pth"})):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name),
                                           is_default=True)
        paths, old = folder_paths.folder_names_and_paths[name]
        folder_paths.folder_names_and_paths[name] = (paths, set(old) | exts)


def generator_choices() -> list[str]:
    shipped = _shipped(DEMO_GENERATOR_NAME, FACES_GENERATOR_NAME)
    if folder_paths is None:
        return shipped
    return shipped + folder_paths.get_filename_list(STYLEGAN_FOLDER)


def clip_choices() -> list[str]:
    shipped = _shipped(DEMO_CLIP_NAME, FACES_CLIP_NAME)
    if folder_paths is None:
        return shipped
    names = shipped + folder_paths.get_filename_list(CLIP_FOLDER)
    for root in folder_paths.get_folder_paths(CLIP_FOLDER):  # open_clip local-dir folders
        if os.path.isdir(root):
            names += sorted(d for d in os.listdir(root)
                            if os.path.isfile(os.path.join(root, d, "open_clip_config.json")))
    return names


def edit_choices() -> list[str]:
    shipped = [f"[demo] {p.name}" for p in sorted(DEMO_EDITS.glob("*.safetensors"))]
    if folder_paths is None:
        return shipped
    return shipped + folder_paths.get_filename_list(EDIT_FOLDER)


def encoder_choices() -> list[str]:
    if folder_paths is None:
        return ["none"]
    return ["none"] + folder_paths.get_filename_list(ENCODER_FOLDER)


def contained(root: Path | str, name: str) -> Path:
    """``root / name``, refused unless it stays inside ``root``: loaders called directly
    (API prompts skip the list validation) must not read outside their folders."""
    if not name or os.path.isabs(name) or "\x00" in name:
        raise FileNotFoundError(f"{name!r} is not a file name inside {root}")
    base = Path(root).resolve()
    path = (base / name).resolve()
    if base not in path.parents:
        raise FileNotFoundError(f"{name!r} points outside {root}")
    return path


def resolve(folder: str, name: str) -> Path:
    if name in SHIPPED:
        return SHIPPED[name]
    if name.startswith("[demo] ") and folder == EDIT_FOLDER:
        return contained(DEMO_EDITS, name[len("[demo] "):])
    if os.path.isabs(name) or ".." in Path(name).parts:
        raise FileNotFoundError(f"{name!r} is not a name inside the {folder} models folder(s)")
    path = folder_paths.get_full_path(folder, name)
    if path is None and folder == CLIP_FOLDER:
        for root in folder_paths.get_folder_paths(CLIP_FOLDER):
            if os.path.isdir(os.path.join(root, name)):
                return contained(root, name)
    if path is None:
        raise FileNotFoundError(f"{name!r} is not in the {folder} models folder(s): "
                                f"{folder_paths.get_folder_paths(folder)}")
    return Path(path)


def file_changed_token(folder: str, name: str) -> str:
    """ComfyUI's IS_CHANGED for nodes that read a model file (see ``content_token``)."""
    return content_token(lambda: resolve(folder, name), name)


def content_token(locate: Callable[[], Path], name: str) -> str:
    """IS_CHANGED for nodes that read a file: re-run when the file's content changes (a
    replaced generator or edit under the same name), stay cached otherwise. A name that does
    not resolve returns itself, so the node runs and reports the missing file."""
    from ..coral_core.cache import file_fingerprint

    try:
        return file_fingerprint(locate())
    except (OSError, ValueError):
        return f"unresolved:{name}"


def edits_dir() -> Path:
    return Path(folder_paths.get_folder_paths(EDIT_FOLDER)[0])


def output_dir() -> Path:
    return Path(folder_paths.get_output_directory())


def numbered_path(folder: Path, prefix: str, suffix: str = ".safetensors") -> Path:
    """``folder/prefix_00001.suffix``, the next free number (prefix sanitised)."""
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c for c in prefix if c.isalnum() or c in "-_") or "coral"
    n = len(list(folder.glob(f"{safe}_*{suffix}"))) + 1
    while (folder / f"{safe}_{n:05d}{suffix}").exists():
        n += 1
    return folder / f"{safe}_{n:05d}{suffix}"


def save_numbered(save: Callable[[Path], object], folder: Path, prefix: str) -> Path:
    """Write a node's result as ``folder/prefix_NNNNN.safetensors`` without ever losing it:
    a name another server took meanwhile gets the next one, and on a full disk the result is
    kept in the system's temp folder and the node's error says where."""
    from ..coral_core.atomic import save_keeping_result

    path, _ = save_keeping_result(save, numbered_path(folder, prefix), None)
    return path


def device() -> torch.device:
    return mm.get_torch_device()


@contextlib.contextmanager
def autograd_enabled() -> Iterator[None]:
    """ComfyUI runs nodes under ``torch.inference_mode()``; training and inversion need
    autograd, and tensors made under inference mode cannot join a graph (clone them inside)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


class ResidentModel:
    """A coral_core model put under ComfyUI's memory management (ModelPatcher), so ComfyUI's
    free-memory calls offload it and the next run loads it back to the device."""

    def __init__(self, module: torch.nn.Module) -> None:
        import comfy.model_patcher

        self.module = module
        self.patcher = comfy.model_patcher.ModelPatcher(
            module, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device(),
            size=mm.module_size(module))

    def ready(self) -> torch.nn.Module:
        mm.load_models_gpu([self.patcher])
        return self.module

    def __deepcopy__(self, memo: dict) -> None:
        return None  # a deep copy of a model is a new, not-yet-resident model


def raise_if_interrupted() -> None:
    """ComfyUI's Cancel, checked at every training / inversion step (Reporter.poll)."""
    mm.throw_exception_if_processing_interrupted()


def counted_progress(node_id: str | None) -> Callable[[int, int], None]:
    """A progress callback for work counted in items (apply's latents): the node's bar, and
    ComfyUI's Cancel checked before each chunk."""
    bar: list[Any] = []

    def report(done: int, total: int) -> None:
        raise_if_interrupted()
        if not bar:
            bar.append(comfy.utils.ProgressBar(total, node_id=node_id))
        bar[0].update_absolute(done, total)

    return report


class Progress:
    """coral_core progress callback -> ComfyUI ProgressBar (whose hook also raises on
    Cancel) plus a websocket event for the pack's front-end extension."""

    def __init__(self, total: int, node_id: str | None, event: str = "train") -> None:
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.node_id = node_id
        self.event = event

    def __call__(self, step: int, total: int, info: dict[str, Any]) -> None:
        preview = info.get("preview")
        pil = None
        if preview is not None:
            from PIL import Image

            from ..coral_core.images import image_to_uint8

            pil = Image.fromarray(image_to_uint8(preview[:1])[0]).resize((256, 256),
                                                                          Image.Resampling.NEAREST)
        self.bar.update_absolute(step, total, ("JPEG", pil, 256) if pil is not None else None)
        losses = info.get("losses") or ({"total": info["loss"]} if "loss" in info else {})
        payload = {"node": self.node_id, "step": step, "total": total,  # inversion: one loss
                   "losses": losses, "mask_area": info.get("mask_area", []),
                   "phase": info.get("phase", ""), "warning": info.get("warning", "")}
        if info.get("masks") is not None:
            payload["masks_png"] = masks_data_url(info["masks"])
        send_event(self.event, payload)


def masks_data_url(masks: list[torch.Tensor | None], cell: int = 48) -> str:
    """A small PNG strip of the first sample's per-layer masks, as a data URL for the UI."""
    from PIL import Image

    tiles = []
    for m in masks:
        if m is None:
            tiles.append(np.zeros((cell, cell), dtype=np.uint8))
            continue
        t = torch.nn.functional.interpolate(m[:1].detach().float().cpu(), size=(cell, cell),
                                            mode="nearest")[0, 0]
        tiles.append((t.clamp(0, 1).numpy() * 255).astype(np.uint8))
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(tiles, 1)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def send_event(event: str, data: dict[str, Any]) -> None:
    try:
        from server import PromptServer

        PromptServer.instance.send_sync(f"{EVENT_PREFIX}.{event}", data)
    except Exception:  # noqa: BLE001,S110 - no server (a script importing the nodes): optional
        pass


PREVIEW_MIN_SIDE = 256  # small generators' pictures are enlarged to this for the node preview


def save_image_previews(images: torch.Tensor, prefix: str) -> list[dict[str, str]]:
    """Write [B, H, W, C] 0..1 images to ComfyUI's temp folder for the node's preview,
    enlarged by a whole factor (nearest, so pixels stay pixels) when smaller than
    ``PREVIEW_MIN_SIDE``: the classic canvas draws a 64-px picture 64 px wide."""
    from PIL import Image

    out_dir = folder_paths.get_temp_directory()
    full, name, counter, sub, _ = folder_paths.get_save_image_path(prefix, out_dir,
                                                                   images.shape[2],
                                                                   images.shape[1])
    factor = max(1, -(-PREVIEW_MIN_SIDE // min(images.shape[1], images.shape[2])))
    results = []
    for i, img in enumerate(images):
        arr = (img.cpu().numpy() * 255).clip(0, 255).astype(np.uint8)
        file = f"{name}_{counter + i:05}_.png"
        picture = Image.fromarray(arr)
        if factor > 1:
            picture = picture.resize((picture.width * factor, picture.height * factor),
                                     Image.Resampling.NEAREST)
        picture.save(os.path.join(full, file))
        results.append({"filename": file, "subfolder": sub, "type": "temp"})
    return results
