"""The demo world: procedural scenes with ground-truth masks, and the small models trained on it.

No pretrained StyleGAN2 or CLIP can be obtained here, so the project ships its own: a scene
renderer whose every object has an exact mask, a small CLIP trained on its captions, and a small
StyleGAN2 trained to draw its scenes. They make edits testable and measurable against truth.
"""
