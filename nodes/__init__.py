"""Thin ComfyUI adapters over coral_core, one module per domain."""
from . import host
from .demo import NODES as _DEMO
from .editing import NODES as _EDITING
from .latents import NODES as _LATENTS
from .models import NODES as _MODELS

host.register_folders()
_ALL = {**_MODELS, **_LATENTS, **_DEMO, **_EDITING}
NODE_CLASS_MAPPINGS = {name: cls for name, (cls, _) in _ALL.items()}
NODE_DISPLAY_NAME_MAPPINGS = {name: title for name, (_, title) in _ALL.items()}
