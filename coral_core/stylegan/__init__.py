"""StyleGAN2 in pure PyTorch (no compiled ops), numerically matching NVlabs StyleGAN2-ADA."""
from .config import GeneratorConfig
from .generator import ConvLayerInfo, Generator, ToRGBInfo

__all__ = ["GeneratorConfig", "Generator", "ConvLayerInfo", "ToRGBInfo"]
