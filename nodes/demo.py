"""Demo Photo: a picture from a demo world, so the inversion template runs out of the box."""
from __future__ import annotations

import torch

from ..coral_core.world.assets import DEMO_WORLD, WORLDS

CATEGORY = "CoralStyleCLIP/latents"


def _render_world(world: str, count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Pictures [B, 3, H, W] in [-1, 1] of ``count`` scenes of ``world`` drawn from ``seed``
    by the world's renderer, and what each shows."""
    if world == "faces":
        from ..coral_core.world.faces.captions import caption, facts_of
        from ..coral_core.world.faces.render import render as render_faces
        from ..coral_core.world.faces.scene import random_faces

        faces = random_faces(count, seed)
        return render_faces(faces)[0], [caption(**facts_of(faces, i)).text()
                                        for i in range(count)]
    from ..coral_core.world.captions import full_caption
    from ..coral_core.world.render import render
    from ..coral_core.world.scene import random_scenes

    scenes = random_scenes(count, seed)
    return render(scenes)[0], [full_caption(scenes, i) for i in range(count)]


class CoralDemoPhoto:
    DESCRIPTION = ("A 'photo' for trying inversion with a demo generator: a portrait or a scene "
                   "drawn by the demo world's renderer (never by the generator, so the "
                   "generator has to find it). Replace it by Load Image for your own pictures.")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "caption")
    OUTPUT_TOOLTIPS = ("The rendered pictures, 64 x 64.", "What each picture shows (the truth).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 7, "min": 0, "max": 2**31 - 1,
                             "control_after_generate": False,
                             "tooltip": "Which picture: the same seed is always the same one."}),
            "count": ("INT", {"default": 1, "min": 1, "max": 64,
                              "tooltip": "How many pictures (all drawn from this seed)."}),
            "world": (list(WORLDS), {"default": DEMO_WORLD,
                                     "tooltip": "Which demo world draws it: portraits (faces, "
                                                "for the faces generator) or coloured shapes "
                                                "(for the shapes generator)."})}}

    def make(self, seed: int, count: int, world: str = DEMO_WORLD):
        if world not in WORLDS:
            raise ValueError(f"world: {world!r} is not a demo world; choose from "
                             f"{', '.join(WORLDS)}")
        img, captions = _render_world(world, count, seed)
        image = ((img.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1)  # ComfyUI: [B, H, W, C] in 0..1
        return (image, "\n".join(captions))


NODES = {"CoralDemoPhoto": (CoralDemoPhoto, "Demo Photo (Coral)")}
