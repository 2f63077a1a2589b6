"""Real photos into the generator's W / W+ space: an optimisation projector with pivotal
tuning (``optimise``) and the e4e encoder (``e4e``), for a one-pass start."""
from .optimise import InvertConfig, InvertResult, Perceptual, invert, prepare_images

__all__ = ["InvertConfig", "InvertResult", "Perceptual", "invert", "prepare_images"]
