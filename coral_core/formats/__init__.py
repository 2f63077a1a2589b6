"""Reading and writing generator files of every supported format."""
from .loader import LoadedGenerator, describe, load_generator, sniff
from .native import save_generator
from .rosinality import nvlabs_to_rosinality

__all__ = ["load_generator", "LoadedGenerator", "describe", "sniff", "save_generator",
           "nvlabs_to_rosinality"]
