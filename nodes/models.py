"""Load StyleGAN and Load CLIP."""
from __future__ import annotations

import json

from ..coral_core.clip_model import load_clip
from ..coral_core.formats import describe, load_generator
from . import host
from .types import CORAL_CLIP, STYLEGAN_MODEL, ClipModel, StyleGANModel

CATEGORY = "CoralStyleCLIP/models"
def _resident(module: object) -> object:
    """One ComfyUI wrapper per model, kept on the model itself so it lives and dies with it
    (a copy of the model, e.g. for pivotal tuning, gets none: see ResidentModel.__deepcopy__)."""
    wrapper = getattr(module, "_coral_resident", None)
    if wrapper is None:
        wrapper = host.ResidentModel(module)  # type: ignore[arg-type]
        object.__setattr__(module, "_coral_resident", wrapper)
    return wrapper


class CoralLoadStyleGAN:
    DESCRIPTION = ("Load a StyleGAN2 generator: NVlabs .pkl (StyleGAN2/ADA), PTI .pt, "
                   "rosinality .pt, e4e .pt or CoralStyleCLIP .safetensors, from "
                   "models/stylegan. No code inside the file is ever run; no CUDA compiler "
                   "needed.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (STYLEGAN_MODEL, "STRING")
    RETURN_NAMES = ("model", "info")
    OUTPUT_TOOLTIPS = ("The generator, resident on ComfyUI's device between runs.",
                       "Format, resolution, num_ws, dims and parameter count, as JSON.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"generator": (host.generator_choices(), {
            "tooltip": "A generator file from models/stylegan, or the built-in demo model."})}}

    @classmethod
    def IS_CHANGED(cls, generator: str):
        return host.file_changed_token(host.STYLEGAN_FOLDER, generator)

    def load(self, generator: str):
        path = host.resolve(host.STYLEGAN_FOLDER, generator)
        # One residency layer in ComfyUI: the executor keeps this node's output while the
        # file is unchanged (IS_CHANGED), and the ModelPatcher moves it to and from the device.
        with host.autograd_enabled():  # normal (not inference) tensors, so edits can train
            loaded = load_generator(path)
        info = describe(loaded)
        model = StyleGANModel(path, loaded, _resident(loaded.generator))
        return {"ui": {"text": [f"{info['format']}, {info['resolution']}px, "
                                f"{info['num_ws']} W+ entries"]},
                "result": (model, json.dumps(info, indent=2))}


class CoralLoadCLIP:
    DESCRIPTION = ("Load a CLIP for edits from models/coral_clip: OpenAI .pt (TorchScript), "
                   "open_clip .safetensors/.bin (with open_clip_config.json beside it or a model "
                   "name), or an open_clip local-dir folder. Never downloads anything.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (CORAL_CLIP,)
    RETURN_NAMES = ("clip",)
    OUTPUT_TOOLTIPS = ("The frozen CLIP used by the edit losses.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (host.clip_choices(), {
                    "tooltip": "A CLIP file or folder from models/coral_clip, or the demo CLIP."})},
                "optional": {"model_name": ("STRING", {
                    "default": "", "tooltip": "open_clip model name (e.g. ViT-B-32-quickgelu) "
                                              "for a bare state dict; leave empty otherwise."})}}

    @classmethod
    def IS_CHANGED(cls, clip_name: str, model_name: str = ""):
        return host.file_changed_token(host.CLIP_FOLDER, clip_name) + model_name

    def load(self, clip_name: str, model_name: str = ""):
        path = host.resolve(host.CLIP_FOLDER, clip_name)
        with host.autograd_enabled():
            clip = load_clip(path, model_name or None, "cpu")
        return (ClipModel(path, clip, _resident(clip.model)),)


NODES = {"CoralLoadStyleGAN": (CoralLoadStyleGAN, "Load StyleGAN (Coral)"),
         "CoralLoadCLIP": (CoralLoadCLIP, "Load CLIP (Coral)")}
