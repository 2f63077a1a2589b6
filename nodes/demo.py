"""Demo Photo: a picture from the demo world, so the inversion template runs out of the box."""
from __future__ import annotations

from ..coral_core.world.captions import full_caption
from ..coral_core.world.render import render
from ..coral_core.world.scene import random_scenes

CATEGORY = "CoralStyleCLIP/latents"


class CoralDemoPhoto:
    DESCRIPTION = ("A 'photo' for trying inversion with the demo generator: a scene drawn by "
                   "the demo world's renderer (never by the generator, so the generator has to "
                   "find it). Replace it by Load Image for your own pictures.")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "caption")
    OUTPUT_TOOLTIPS = ("The rendered scenes, 64 x 64.", "What each scene shows (the truth).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 7, "min": 0, "max": 2**31 - 1,
                             "control_after_generate": False,
                             "tooltip": "Which scene: the same seed is always the same scene."}),
            "count": ("INT", {"default": 1, "min": 1, "max": 64,
                              "tooltip": "How many scenes (all drawn from this seed)."})}}

    def make(self, seed: int, count: int):
        scenes = random_scenes(count, seed)
        img, _ = render(scenes)
        image = ((img.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1)  # ComfyUI: [B, H, W, C] in 0..1
        return (image, "\n".join(full_caption(scenes, i) for i in range(count)))


NODES = {"CoralDemoPhoto": (CoralDemoPhoto, "Demo Photo (Coral)")}
