"""Sample / Save / Load latents, and Generate."""
from __future__ import annotations




import torch

from ..coral_core.images import to_unit_range
from ..coral_core.latents import load_latents, save_latents
from ..coral_core.seeds import parse_seeds
from ..coral_core.editing.presets import preset_defaults
from . import host
from .types import STYLEGAN_LATENT, STYLEGAN_MODEL, Latents, StyleGANModel

CATEGORY = "CoralStyleCLIP/latents"
LATENT_SUBFOLDER = "coral_latents"


def check_latents(model: StyleGANModel, latents: Latents) -> None:
    G = model.loaded.generator
    if latents.fingerprint and latents.fingerprint != G.fingerprint():
        raise ValueError("these latents were made with another generator "
                         f"({latents.fingerprint}); this one is {G.fingerprint()}")
    G.check_ws(latents.ws)


class CoralSampleLatents:
    DESCRIPTION = ("W+ latents from seeds, exactly as NVIDIA's generate.py draws z, so seed N "
                   "is the same image there.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = (STYLEGAN_LATENT,)
    RETURN_NAMES = ("latents",)
    OUTPUT_TOOLTIPS = ("W+ codes [batch, num_ws, w_dim].",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (STYLEGAN_MODEL, {"tooltip": "The generator the latents are for."}),
            # no "randomize after queue": the seeds decide the latents, and a seed that
            # changed by itself on every queue re-ran this node and everything after it
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1,
                             "control_after_generate": False,
                             "tooltip": "First seed; the batch uses seed, seed+1, ..."}),
            "batch_size": ("INT", {"default": 4, "min": 1, "max": 256,
                                   "tooltip": "How many latents."}),
            "truncation": ("FLOAT", {"default": preset_defaults().truncation, "min": 0.0, "max": 2.0,
                                     "step": 0.05,
                                     "tooltip": "psi: 1 = no truncation, lower = more "
                                                "typical images."}),
        }, "optional": {
            "seeds": ("STRING", {"default": "", "tooltip": "Explicit seeds such as '0-7' or "
                                                           "'1,5,9'; overrides seed/batch."}),
            "truncation_cutoff": ("INT", {"default": 0, "min": 0, "max": 64,
                                          "tooltip": "Truncate only the first N W+ entries "
                                                     "(0 = all)."}),
        }}

    def sample(self, model: StyleGANModel, seed: int, batch_size: int, truncation: float,
               seeds: str = "", truncation_cutoff: int = 0):
        seed_list = parse_seeds(seeds) if seeds.strip() else list(range(seed, seed + batch_size))
        G = model.generator()
        with torch.no_grad():
            ws = G.mapping_ws(G.z_from_seeds(seed_list), truncation, truncation_cutoff or None)
        return (Latents(ws.cpu(), G.fingerprint(), tuple(f"seed{s}" for s in seed_list)),)


class CoralGenerate:
    DESCRIPTION = "Render latents with the generator."
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("Generated images.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (STYLEGAN_MODEL, {"tooltip": "The generator."}),
            "latents": (STYLEGAN_LATENT, {"tooltip": "W+ latents to render."}),
            "noise_mode": (["const", "random", "none"], {
                "tooltip": "const: the model's fixed noise (reproducible); random: fresh "
                           "noise; none: no noise."}),
        }}

    def generate(self, model: StyleGANModel, latents: Latents, noise_mode: str):
        check_latents(model, latents)
        G = model.generator()
        with torch.no_grad():
            img = G.synthesize(latents.on(G.w_avg.device), noise_mode=noise_mode)
        return (to_unit_range(img).cpu(),)


class CoralSaveLatents:
    DESCRIPTION = "Save latents as .safetensors under output/coral_latents."
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latents": (STYLEGAN_LATENT, {"tooltip": "Latents to save."}),
            "filename_prefix": ("STRING", {"default": "latents",
                                           "tooltip": "File name prefix; a counter is added."}),
        }}

    def save(self, latents: Latents, filename_prefix: str):
        path = host.save_numbered(
            lambda p: save_latents(latents.ws, p, {"generator_fingerprint": latents.fingerprint}),
            host.output_dir() / LATENT_SUBFOLDER, filename_prefix)
        return {"ui": {"text": [str(path.name)]}}


class CoralLoadLatents:
    DESCRIPTION = ("Load latents saved by Save Latents (or NVIDIA projector .npz files placed in "
                   "output/coral_latents).")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (STYLEGAN_LATENT,)
    RETURN_NAMES = ("latents",)
    OUTPUT_TOOLTIPS = ("The loaded W+ latents.",)

    @classmethod
    def INPUT_TYPES(cls):
        folder = host.output_dir() / LATENT_SUBFOLDER if host.folder_paths else None
        files = sorted(p.name for p in folder.glob("*") if p.suffix in (".safetensors", ".npz")
                       ) if folder is not None and folder.is_dir() else []
        return {"required": {"latent_file": (files or [""], {
            "tooltip": "A file in output/coral_latents."})},
            "optional": {"model": (STYLEGAN_MODEL, {
                "tooltip": "Optional: check the latents fit this generator."})}}

    @classmethod
    def IS_CHANGED(cls, latent_file: str, model: StyleGANModel | None = None):
        return host.content_token(
            lambda: host.contained(host.output_dir() / LATENT_SUBFOLDER, latent_file),
            latent_file)

    def load(self, latent_file: str, model: StyleGANModel | None = None):
        if not latent_file:
            raise FileNotFoundError("no latent file chosen (output/coral_latents is empty)")
        path = host.contained(host.output_dir() / LATENT_SUBFOLDER, latent_file)
        G = model.loaded.generator if model is not None else None
        ws = load_latents(path, G.num_ws if G else None, G.w_dim if G else None)
        from safetensors import safe_open

        fp = ""
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                fp = (f.metadata() or {}).get("generator_fingerprint", "")
        return (Latents(ws, fp),)


NODES = {"CoralSampleLatents": (CoralSampleLatents, "Sample Latents (Coral)"),
         "CoralGenerate": (CoralGenerate, "Generate (Coral)"),
         "CoralSaveLatents": (CoralSaveLatents, "Save Latents (Coral)"),
         "CoralLoadLatents": (CoralLoadLatents, "Load Latents (Coral)")}


class CoralInvert:
    DESCRIPTION = ("Project photos into the generator (W, W+ or W then W+), optionally with "
                   "pivotal tuning of a copy of the generator. Images of any size are centre-"
                   "cropped to a square and resized; alpha is composited over white.")
    CATEGORY = CATEGORY
    FUNCTION = "invert"
    RETURN_TYPES = (STYLEGAN_LATENT, "IMAGE", STYLEGAN_MODEL, "STRING")
    RETURN_NAMES = ("latents", "reconstruction", "model", "metrics")
    OUTPUT_TOOLTIPS = ("W+ codes of the photos.", "What the generator draws from them.",
                       "The generator to edit them with (a tuned copy if PTI ran).",
                       "PSNR / SSIM / seconds, as JSON.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (STYLEGAN_MODEL, {"tooltip": "The generator to invert into."}),
            "images": ("IMAGE", {"tooltip": "Photos to invert."}),
            "space": (["w+", "w", "w_then_w+"], {"tooltip": "W+: best fidelity; W: most "
                                                             "editable; W then W+: both."}),
            "steps": ("INT", {"default": 300, "min": 1, "max": 10000,
                              "tooltip": "Optimisation steps."}),
            "pti_steps": ("INT", {"default": 0, "min": 0, "max": 10000,
                                  "tooltip": "Pivotal tuning steps (0 = off)."}),
        }, "optional": {
            "clip": ("CORAL_CLIP", {"tooltip": "Perceptual features for the loss (without it: "
                                               "pixels only)."}),
            "e4e_encoder": (host.encoder_choices(), {
                "tooltip": "Start from an e4e encoder's W+ codes (e4e_ffhq_encode.pt in "
                           "models/coral_encoders); 'none' starts from the average latent."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def invert(self, model: StyleGANModel, images: torch.Tensor, space: str, steps: int,
               pti_steps: int, clip=None, e4e_encoder: str = "none",
               unique_id: str | None = None):
        with host.autograd_enabled():
            return self._invert(model, images.clone(), space, steps, pti_steps, clip,
                                e4e_encoder, unique_id)

    def _invert(self, model, images, space, steps, pti_steps, clip, e4e_encoder, unique_id):
        import json

        from ..coral_core.inversion import InvertConfig, invert, prepare_images
        from ..coral_core.progress import Reporter
        from .models import _resident

        G = model.generator()
        target = prepare_images(images, G.img_resolution).to(G.w_avg.device)
        reporter = Reporter(host.Progress(steps + pti_steps, unique_id, "invert"),
                            every=max(1, (steps + pti_steps) // 100),
                            poll=host.raise_if_interrupted)
        host.send_event("start", {"node": unique_id, "total": steps + pti_steps})
        init = None
        if e4e_encoder and e4e_encoder != "none":
            from ..coral_core.inversion.e4e import load_e4e

            init = load_e4e(host.resolve(host.ENCODER_FOLDER, e4e_encoder)).encode(target)
        res = invert(G, target, InvertConfig(space=space, steps=steps, pti_steps=pti_steps),
                     clip=clip.ready() if clip is not None else None, init_ws=init,
                     reporter=reporter)
        out_model = model
        if res.generator is not None:
            from ..coral_core.formats import LoadedGenerator

            loaded = LoadedGenerator(res.generator, "pti-tuned", model.path,
                                     ["pivotal tuning of " + model.path.name])
            out_model = StyleGANModel(model.path, loaded, _resident(res.generator))
        final_G = out_model.loaded.generator
        metrics = {"psnr": res.psnr, "ssim": res.ssim, "seconds": round(res.seconds, 2),
                   "perceptual": res.perceptual}
        host.send_event("done", {"node": unique_id, "summary": metrics})
        return (Latents(res.ws.cpu(), final_G.fingerprint()),
                to_unit_range(res.reconstruction).cpu(), out_model, json.dumps(metrics))


NODES["CoralInvert"] = (CoralInvert, "Invert Images (Coral)")
