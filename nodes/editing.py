"""Train Edit (simple and advanced), Save / Load Edit, Apply Edit, Visualize Masks."""
from __future__ import annotations



import numpy as np
import torch
import torch.nn.functional as F

from ..coral_core.editing.apply import apply_edits, apply_in_chunks
from ..coral_core.editing.edit import Edit
from ..coral_core.editing.config import AREA_WEIGHTINGS
from ..coral_core.editing.presets import DEFAULT_PRESET, PRESETS, preset_config, preset_defaults
from ..coral_core.editing.trainer import train_edit
from ..coral_core.editing.visualize import effective_mask, mask_grid, overlay
from ..coral_core.images import image_to_uint8, to_unit_range
from ..coral_core.progress import Reporter
from ..coral_core.world.assets import DEFAULT_PROMPT
from . import host
from .latents import check_latents
from .types import CORAL_CLIP, CORAL_EDIT, STYLEGAN_LATENT, STYLEGAN_MODEL, ClipModel, \
    Latents, StyleGANModel

CATEGORY = "CoralStyleCLIP/edit"
# The engine's defaults, read once: the node keeps no numbers of its own.
_TRAIN = preset_defaults()
_WEIGHTS = _TRAIN.weights
PREVIEW_PAIRS = 4  # Apply Edit shows before | after for this many pictures of a batch
ABSENT_CHECK_CHOICES = ("preset", "on", "off")


def segments_from_masks(masks: torch.Tensor, resolution: int) -> torch.Tensor:
    """A ComfyUI MASK batch [N, H, W] -> segments [1, N + 1, r, r]: one per mask plus "the
    rest", so the unmasked area can be selected too."""
    if masks.ndim == 2:
        masks = masks[None]
    m = F.interpolate(masks[:, None].float(), size=(resolution, resolution), mode="area")[:, 0]
    m = m.clamp(0, 1)
    rest = (1 - m.amax(0, keepdim=True)).clamp(0, 1)
    return torch.cat([m, rest])[None]


class CoralTrainEdit:
    DESCRIPTION = ("Learn a localised edit for a prompt: a W+ direction plus one soft mask per "
                   "StyleGAN layer (CoralStyleCLIP). Shows live progress; Cancel stops it.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES = (CORAL_EDIT, "IMAGE")
    RETURN_NAMES = ("edit", "preview")
    OUTPUT_TOOLTIPS = ("The learned edit (save it with Save Edit, apply it with Apply Edit "
                       "(Coral)).", "The training images after the edit.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (STYLEGAN_MODEL, {"tooltip": "The generator to edit."}),
            "clip": (CORAL_CLIP, {"tooltip": "The CLIP that guides the edit."}),
            "prompt": ("STRING", {"multiline": True, "default": DEFAULT_PROMPT,
                                  "tooltip": "What the edited image should show."}),
            "variant": (["ss", "can"], {"tooltip": "ss: segment selection (fast, per image or "
                                                   "prompt); can: attention network (learned "
                                                   "masks, best per prompt)."}),
            "direction": (["global", "mapper"], {"tooltip": "global: one W+ offset; mapper: "
                                                            "an offset computed per image."}),
            "mode": (["per image", "per prompt"], {
                "tooltip": "per image: optimise for these latents; per prompt: train on fresh "
                           "samples, then apply to any image."}),
            "steps": ("INT", {"default": _TRAIN.steps, "min": 1, "max": 100000,
                              "tooltip": "Optimisation steps."}),
            # no "randomize after queue": an unchanged Train node is cached by ComfyUI, so
            # changing only the Apply strength and queueing again does not retrain
            # control_after_generate False: the front end otherwise adds a "randomize" control
            # to every INT named seed (frontend 1.32 useIntWidget)
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1,
                             "control_after_generate": False,
                             "tooltip": "Seed for initialisation and sampling (fixed, so "
                                        "re-queueing reuses the trained edit)."}),
        }, "optional": {
            "latents": (STYLEGAN_LATENT, {"tooltip": "Per image: the latents to edit "
                                                     "(default: seeds seed..seed+batch-1)."}),
            "segments": ("MASK", {"tooltip": "Segment selection: masks from any segmentation "
                                             "node, used as the candidate regions."}),
            "neutral_prompt": ("STRING", {"default": "", "tooltip": (
                "What the region shows now, e.g. 'a green background'. Region pruning then "
                "keeps the parts whose change points from it to the prompt (others kept more "
                "often); also the directional loss's neutral text.")}),
            "directional": ("BOOLEAN", {"default": False,
                                        "tooltip": "Use the directional CLIP loss."}),
            "batch": ("INT", {"default": _TRAIN.batch, "min": 1, "max": 64,
                              "tooltip": "Images per step (per prompt) or seeds (per image)."}),
            "lr": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.0001,
                             "tooltip": "Learning rate (0 = the variant's default)."}),
            "area_weight": ("FLOAT", {"default": _WEIGHTS.area, "min": 0.0, "max": 10.0,
                                      "step": 0.001,
                                      "tooltip": "Mask area penalty: higher = smaller regions."}),
            "tv_weight": ("FLOAT", {"default": _WEIGHTS.tv, "min": 0.0, "max": 10.0,
                                    "step": 0.001,
                                    "tooltip": "Mask smoothness (attention network)."}),
            # the default is of the order 1e-4 (w-spread units): a coarser step rounds it away
            "l2_weight": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 10.0, "step": 0.00001,
                                    "round": False,
                                    "tooltip": "Direction size penalty (-1 = the default: "
                                               f"{_WEIGHTS.l2_for('global'):g} for global "
                                               "directions)."}),
            "area_weighting": (list(AREA_WEIGHTINGS), {
                "default": _WEIGHTS.area_weighting,
                "tooltip": "Per-layer area weights: which layers edits prefer (spread: in "
                           "proportion to how far a change at that layer spreads)."}),
            "max_layer": ("INT", {"default": 0, "min": 0, "max": 64,
                                  "tooltip": "Only edit layers 1..k (0 = all), e.g. to "
                                             "protect colour in fine layers."}),
            "segments_k": ("INT", {"default": _TRAIN.num_segments, "min": 2, "max": 32,
                                   "tooltip": "Clusters in the automatic segment catalogue."}),
            "region_pruning": ("FLOAT", {
                "default": _TRAIN.prune_tolerance, "min": 0.0, "max": 0.99, "step": 0.05,
                "tooltip": "Part-way through, drop the segments (attention network: the "
                           "generator's feature clusters) the edit can do without, as long as "
                           "it keeps 1 - this share of its CLIP gain (keeps edits off what the "
                           "prompt does not name; 0 = off)."}),
            "prior_samples": ("INT", {
                "default": _TRAIN.prior_samples, "min": 0, "max": 65536, "step": 64,
                "tooltip": "Global direction: start from where the CLIP's favourite "
                           "pictures of the prompt lie (the mean latent of the best-ranked of "
                           "this many generator samples, minus the mean of all; computed once "
                           "per generator and CLIP, then cached). Lets far-apart changes "
                           "(e.g. cyan to orange) be found at all. 0 = start at ~0."}),
            "absent_check": (list(ABSENT_CHECK_CHOICES), {
                "default": "preset",
                "tooltip": "Per image: leave an image that seems to lack what the prompt "
                           "names (\"a red circle\" with no circle) unchanged, with a "
                           "warning, instead of painting another object; what follows "
                           "'with' is the change (\"a face with a beard\" needs only a "
                           "face). 'preset' follows "
                           "the preset (coral: on); 'off' edits anyway, for when the warning "
                           "is wrong."}),
            "split_clauses": (list(ABSENT_CHECK_CHOICES), {
                "default": "preset",
                "tooltip": "A prompt that joins two things (\"a red square on a blue "
                           "background\") is learned as one edit per thing, laid one over the "
                           "other (the live view runs once per thing). 'preset' follows the "
                           "preset (coral: on); 'off' learns one edit for the whole prompt."}),
            "preset": (list(PRESETS), {
                "default": DEFAULT_PRESET,
                "tooltip": "coral: the pack's defaults (every measured departure from the "
                           "paper on); paper: the published method with none. Settings above "
                           "left at their defaults follow the preset."}),
            "hold_to_prior": (list(ABSENT_CHECK_CHOICES), {
                "default": "preset",
                "tooltip": "Per image: until the region is chosen, the edit may only scale "
                           "the direction prior, per layer (an image it cannot take far "
                           "enough is then freed); the prior is then taken between look-alike "
                           "samples, so it changes what the prompt names and little else, and "
                           "the masks start where it changes the picture (the segments split "
                           "there: long hair or a wider mouth gets a region of its own). "
                           f"An image still under {_TRAIN.free_below} of the way at the end "
                           "is trained again free (twice the time for it). "
                           "Keeps the rest of a face as it was (a smile that does not "
                           "recolour the skin). 'preset' follows the preset (coral: "
                           f"{'on' if _TRAIN.along_prior else 'off'}; paper: off); 'off' "
                           "trains the direction free from the start (never a second training)."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def train(self, model: StyleGANModel, clip: ClipModel, prompt: str, variant: str,
              direction: str, mode: str, steps: int, seed: int, latents: Latents | None = None,
              segments: torch.Tensor | None = None, neutral_prompt: str = "",
              directional: bool = False, batch: int = 4, lr: float = 0.0,
              area_weight: float = -1.0, tv_weight: float = -1.0, l2_weight: float = -1.0,
              area_weighting: str = "", max_layer: int = 0, segments_k: int = 0,
              region_pruning: float = -1.0, prior_samples: int = -1,
              absent_check: str = "preset", preset: str = DEFAULT_PRESET,
              split_clauses: str = "preset", hold_to_prior: str = "preset",
              unique_id: str | None = None):
        with host.autograd_enabled():
            return self._train(model, clip, prompt, variant, direction, mode, steps, seed,
                               latents, segments, neutral_prompt, directional, batch, lr,
                               area_weight, tv_weight, l2_weight, area_weighting, max_layer,
                               segments_k, region_pruning, prior_samples, absent_check, preset,
                               split_clauses, hold_to_prior, unique_id)

    def _train(self, model, clip, prompt, variant, direction, mode, steps, seed, latents,
               segments, neutral_prompt, directional, batch, lr, area_weight, tv_weight,
               l2_weight, area_weighting, max_layer, segments_k, region_pruning,
               prior_samples, absent_check, preset, split_clauses, hold_to_prior, unique_id):
        G = model.generator()
        C = clip.ready()
        mode_key = mode.replace(" ", "_")
        ws = None
        if latents is not None:
            check_latents(model, latents)
            ws = latents.on(G.w_avg.device).clone()
        if mode_key == "per_prompt" and ws is not None:
            raise ValueError("per prompt training samples its own latents: disconnect "
                             "'latents' or choose 'per image'")
        seg = segments_from_masks(segments.clone(), G.img_resolution) \
            if segments is not None else None
        # a widget left at its default (or at its "default" marker) follows the preset
        chosen = {name: value for name, value, default in (
            ("prune_tolerance", region_pruning, _TRAIN.prune_tolerance),
            ("prior_samples", prior_samples, _TRAIN.prior_samples),
            ("num_segments", segments_k, _TRAIN.num_segments))
            if value >= 0 and value != default and not (name == "num_segments" and value == 0)}
        for name, choice in (("check_absent", absent_check), ("split_clauses", split_clauses),
                             ("along_prior", hold_to_prior)):
            if choice in ("on", "off"):
                chosen[name] = choice == "on"
        weights = {name: value for name, value, default in (
            ("area", area_weight, _WEIGHTS.area), ("tv", tv_weight, _WEIGHTS.tv),
            ("l2", l2_weight, -1.0)) if value >= 0 and value != default}
        if area_weighting and area_weighting != _WEIGHTS.area_weighting:
            weights["area_weighting"] = area_weighting
        cfg = preset_config(preset or DEFAULT_PRESET, prompt=prompt, neutral=neutral_prompt,
                            variant=variant, direction=direction, mode=mode_key, steps=steps,
                            lr=lr or None,
                            batch=ws.shape[0] if ws is not None else batch, seed=seed,
                            max_layer=max_layer or None, directional=directional,
                            weights=weights, progress_every=max(1, steps // 20), **chosen)
        reporter = Reporter(host.Progress(steps, unique_id), every=max(1, steps // 100),
                            poll=host.raise_if_interrupted)
        host.send_event("start", {"node": unique_id, "total": steps})
        result = train_edit(G, C, cfg, latents=ws, segments=seg, reporter=reporter)
        preview_ws = result.edit.latents if result.edit.latents is not None else \
            G.mapping_ws(G.z_from_seeds(range(seed, seed + min(batch, 4))).to(G.w_avg.device),
                         cfg.truncation)
        out = apply_edits(G, preview_ws, [result.edit])
        images = to_unit_range(out.edited).cpu()
        ui = host.save_image_previews(images, "coral_train")
        host.send_event("done", {"node": unique_id, "summary": result.edit.summary()})
        for warning in result.edit.info.get("warnings", []):
            print(f"[CoralStyleCLIP] Train Edit (Coral): {warning}")
        return {"ui": {"images": ui}, "result": (result.edit, images)}


class CoralTrainEditSimple:
    """The few settings most users change; everything else follows the preset. (The
    advanced node, Train Edit Advanced, exposes every setting, as IPAdapter_plus splits its
    nodes.)"""
    DESCRIPTION = ("Learn a localised edit for a prompt (CoralStyleCLIP): a W+ direction plus "
                   "one soft mask per StyleGAN layer, with the preset's settings. Shows live "
                   "progress; Cancel stops it. Train Edit Advanced exposes every setting.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES = CoralTrainEdit.RETURN_TYPES
    RETURN_NAMES = CoralTrainEdit.RETURN_NAMES
    OUTPUT_TOOLTIPS = CoralTrainEdit.OUTPUT_TOOLTIPS
    SIMPLE_INPUTS = ("model", "clip", "prompt", "variant", "mode", "steps", "seed")

    @classmethod
    def INPUT_TYPES(cls):
        full = CoralTrainEdit.INPUT_TYPES()
        return {"required": {name: full["required"][name] for name in cls.SIMPLE_INPUTS}
                | {"preset": full["optional"]["preset"]},
                "optional": {"latents": full["optional"]["latents"]},
                "hidden": full["hidden"]}

    def train(self, model: StyleGANModel, clip: ClipModel, prompt: str, variant: str,
              mode: str, steps: int, seed: int, preset: str = DEFAULT_PRESET,
              latents: Latents | None = None, unique_id: str | None = None):
        return CoralTrainEdit().train(model, clip, prompt, variant, "global", mode, steps,
                                      seed, latents=latents, preset=preset,
                                      unique_id=unique_id)


class CoralSaveEdit:
    DESCRIPTION = "Save an edit (.safetensors) to models/coral_edits, to share and reuse."
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "edit": (CORAL_EDIT, {"tooltip": "The edit to save."}),
            "filename_prefix": ("STRING", {"default": "coral_edit",
                                           "tooltip": "Name prefix; a counter is added."}),
        }}

    def save(self, edit: Edit, filename_prefix: str):
        path = host.save_numbered(edit.save, host.edits_dir(), filename_prefix)
        return {"ui": {"text": [path.name]}}


class CoralLoadEdit:
    DESCRIPTION = "Load an edit from models/coral_edits."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (CORAL_EDIT, "STRING")
    RETURN_NAMES = ("edit", "summary")
    OUTPUT_TOOLTIPS = ("The edit.", "Prompt, variant and selected layers, as JSON.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"edit_name": (host.edit_choices() or [""], {
            "tooltip": "An edit file from models/coral_edits."})}}

    @classmethod
    def IS_CHANGED(cls, edit_name: str):
        return host.file_changed_token(host.EDIT_FOLDER, edit_name)

    def load(self, edit_name: str):
        import json

        if not edit_name:
            raise FileNotFoundError("no edit chosen (models/coral_edits is empty)")
        edit = Edit.load(host.resolve(host.EDIT_FOLDER, edit_name))
        return (edit, json.dumps(edit.summary(), indent=2, default=str))


class CoralApplyEdit:
    DESCRIPTION = ("Apply one or more CORAL edits (stacked in order) to latents, with a "
                   "strength and an optional mask threshold. The node shows the first "
                   f"{PREVIEW_PAIRS} pictures as before | after.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK", "MASK")
    RETURN_NAMES = ("edited", "original", "mask", "layer_masks")
    OUTPUT_TOOLTIPS = ("Edited images.", "The same latents without the edit.",
                       "Where the (last) edit acts: max over its layer masks, per image.",
                       "The first image's mask at every conv layer, upsampled.")

    @classmethod
    def INPUT_TYPES(cls):
        strength = {"default": 1.0, "min": -5.0, "max": 5.0, "step": 0.05,
                    "tooltip": "Scales the direction: 0 = original, 1 = as trained."}
        return {"required": {
            "model": (STYLEGAN_MODEL, {"tooltip": "The generator the edit was trained for."}),
            "latents": (STYLEGAN_LATENT, {"tooltip": "Latents to edit."}),
            "edit": (CORAL_EDIT, {"tooltip": "The edit to apply."}),
            "strength": ("FLOAT", strength),
            "threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                    "tooltip": "Sharpen masks: 0 = soft masks; t > 0 = binary "
                                               "masks (mask >= t)."}),
        }, "optional": {
            "edit_2": (CORAL_EDIT, {"tooltip": "A second edit, applied after the first."}),
            "strength_2": ("FLOAT", strength),
            "edit_3": (CORAL_EDIT, {"tooltip": "A third edit, applied last."}),
            "strength_3": ("FLOAT", strength),
            "transfer_per_image_edit": ("BOOLEAN", {
                "default": False,
                "tooltip": "A per-image edit belongs to the latents it was trained on; allow "
                           "applying it to other latents anyway (the console says so)."}),
            "clip": (CORAL_CLIP, {
                "tooltip": "The CLIP a per-prompt edit was trained with. Connected, the edit "
                           "leaves unchanged the images that lack what it names (a 'red circle' "
                           "edit on a scene without a circle) or already show it, and puts "
                           "back those it would change far past the prompt or barely at all; "
                           "the node and the console say which. Not connected, every image is "
                           "edited."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def apply(self, model: StyleGANModel, latents: Latents, edit: Edit, strength: float,
              threshold: float, edit_2: Edit | None = None, strength_2: float = 1.0,
              edit_3: Edit | None = None, strength_3: float = 1.0,
              transfer_per_image_edit: bool = False, clip: ClipModel | None = None,
              unique_id: str | None = None):
        check_latents(model, latents)
        G = model.generator()
        edits = [edit] + [e for e in (edit_2, edit_3) if e is not None]
        scene_clip = clip.ready() if clip is not None and any(
            e.scene_check is not None for e in edits) else None
        strengths = [strength] + [s for e, s in ((edit_2, strength_2), (edit_3, strength_3))
                                  if e is not None]
        res = apply_in_chunks(G, latents.on(G.w_avg.device), edits, strengths,
                              threshold or None, transfer=transfer_per_image_edit,
                              progress=host.counted_progress(unique_id), clip=scene_clip)
        for prompt in res.transferred:
            print(f"[CoralStyleCLIP] Apply Edit (Coral): per-image edit {prompt!r} transferred "
                  "to latents it was not trained on")
        notes = [f"{w} (disconnect the clip input)" if "switch" in w else w
                 for w in res.warnings()]
        for note in notes:
            print(f"[CoralStyleCLIP] Apply Edit (Coral): {note}")
        res_masks = res.masks[-1]
        mask = effective_mask(res_masks, G.img_resolution).cpu()
        layer = torch.stack([
            torch.zeros(G.img_resolution, G.img_resolution) if m is None else
            F.interpolate(m[:1].float().cpu(), size=(G.img_resolution,) * 2,
                          mode="nearest")[0, 0] for m in res_masks])
        assert res.original is not None
        edited, original = to_unit_range(res.edited).cpu(), to_unit_range(res.original).cpu()
        # before | after on the node itself (no Preview node needed), the first few pictures
        pairs = torch.cat([original[:PREVIEW_PAIRS], edited[:PREVIEW_PAIRS]], dim=2)
        # the scene check's verdicts on the node itself (web/js shows them under the preview)
        return {"ui": {"images": host.save_image_previews(pairs, "coral_apply"), "text": notes},
                "result": (edited, original, mask, layer)}


class CoralVisualizeMasks:
    DESCRIPTION = ("Per-layer mask grid (labelled layer / resolution / mean area) and a heatmap "
                   "overlay of where the edit acts.")
    CATEGORY = CATEGORY
    FUNCTION = "visualize"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("mask_grid", "overlay")
    OUTPUT_TOOLTIPS = ("One tile per conv layer for the chosen image.",
                       "Heatmap over every image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (STYLEGAN_MODEL, {"tooltip": "The generator."}),
            "latents": (STYLEGAN_LATENT, {"tooltip": "The images to show masks for."}),
            "edit": (CORAL_EDIT, {"tooltip": "The edit whose masks to show."}),
            "index": ("INT", {"default": 0, "min": 0, "max": 255,
                              "tooltip": "Which image of the batch the grid shows."}),
            "threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                    "tooltip": "As in Apply Edit (Coral)."}),
        }}

    def visualize(self, model: StyleGANModel, latents: Latents, edit: Edit, index: int,
                  threshold: float):
        check_latents(model, latents)
        G = model.generator()
        res = apply_edits(G, latents.on(G.w_avg.device), [edit], 1.0, threshold or None)
        idx = min(index, latents.ws.shape[0] - 1)
        grid = mask_grid(G, res.masks[0], sample=idx)
        combined = effective_mask(res.masks[0], G.img_resolution).cpu()
        assert res.original is not None
        originals = image_to_uint8(res.original)
        big = [np.kron(o, np.ones((4, 4, 1), dtype=np.uint8)) for o in originals]
        over = np.stack([overlay(b, m) for b, m in zip(big, combined)])
        return (torch.from_numpy(grid)[None].float() / 255,
                torch.from_numpy(over).float() / 255)


NODES = {"CoralTrainEditSimple": (CoralTrainEditSimple, "Train Edit (Coral)"),
         "CoralTrainEdit": (CoralTrainEdit, "Train Edit Advanced (Coral)"),
         "CoralSaveEdit": (CoralSaveEdit, "Save Edit (Coral)"),
         "CoralLoadEdit": (CoralLoadEdit, "Load Edit (Coral)"),
         "CoralApplyEdit": (CoralApplyEdit, "Apply Edit (Coral)"),
         "CoralVisualizeMasks": (CoralVisualizeMasks, "Visualize Masks (Coral)")}
