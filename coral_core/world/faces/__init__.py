"""The face world (world v3): procedural portraits whose every part has a true mask.

Why it exists: the project's users edit faces ("a face with a beard", "blond hair"), and no
pretrained face StyleGAN2 or CLIP can be had here. This world is the next best thing: a
portrait renderer with exact per-part visible masks, from which a small generator, CLIP and
judge are trained, so the paper's edits can be scored against the truth.
"""
