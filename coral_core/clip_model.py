"""CLIP from local files only (open_clip underneath), with differentiable preprocessing.

Accepted: OpenAI TorchScript archives (ViT-B-32.pt ...; QuickGELU), open_clip state dicts
(.safetensors / .bin / .pt, plus a model name or an ``open_clip_config.json`` beside the file),
``local-dir:`` folders (open_clip's own layout), and the project's small demo CLIP, which is such a
folder. Nothing is ever fetched: a name without a local file is an error, not a download.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .errors import InputError, ModelFormatError



@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for our own open_clip calls only, restored afterwards: setting it for
    the whole process (as an import side effect) broke other node packs' downloads."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old

OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)
DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CoralClip:
    """A frozen CLIP plus what the losses need: preprocessing constants and a text cache."""

    model: Any        # an open_clip CLIP (encode_image / encode_text), called by name
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_id: str
    _text_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "CoralClip":
        self.model.to(device)
        self._text_cache.clear()
        return self

    def preprocess(self, img: torch.Tensor) -> torch.Tensor:
        """Generator output [B, 3, H, W] in [-1, 1] -> normalised CLIP input, differentiably.

        [-1, 1] -> [0, 1] -> shortest side to the CLIP size (antialiased bicubic) -> centre
        crop -> CLIP mean/std. Never 0-255 pixels (a bug of a published re-implementation).
        """
        if img.ndim != 4 or img.shape[1] != 3:
            raise InputError(f"CLIP expects RGB images [B, 3, H, W], got {list(img.shape)}")
        x = (img.to(torch.float32) + 1) / 2
        h, w = x.shape[-2:]
        s = self.image_size
        scale = s / min(h, w)
        size = (max(s, round(h * scale)), max(s, round(w * scale)))
        if (h, w) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False,
                              antialias=True)
        top, left = (size[0] - s) // 2, (size[1] - s) // 2
        x = x[:, :, top:top + s, left:left + s]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode_image(self, img: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings of generator output; gradients flow to ``img``."""
        feats = self.model.encode_image(self.preprocess(img).to(self.device))
        return F.normalize(feats.to(torch.float32), dim=-1)

    def fingerprint(self) -> str:
        """Hash of the parameters, cached: caches keyed by it (the direction prior's sample
        bank) tell two CLIPs apart even when their files share a name."""
        if self._fingerprint is None:
            import hashlib

            h = hashlib.sha256(self.model_id.encode())
            for name, p in sorted(self.model.named_parameters()):
                h.update(name.encode())
                h.update(p.detach().float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings, cached per prompt (the text tower runs once per prompt)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        for p in missing:
            if not p or not p.strip():
                raise InputError("prompt is empty: describe the edit, e.g. 'a red circle'")
        if missing:
            tokens = self.tokenizer(list(missing)).to(self.device)
            feats = F.normalize(self.model.encode_text(tokens).to(torch.float32), dim=-1)
            for p, f in zip(missing, feats):
                self._text_cache[p] = f
        return torch.stack([self._text_cache[p] for p in prompts])


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    return model.float().train(False).requires_grad_(False)


def _from_openai_state(sd: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    from open_clip.model import build_model_from_openai_state_dict

    sd = {k: v.to(torch.float32) for k, v in sd.items() if k not in OPENAI_EXTRA_KEYS}
    try:
        model = build_model_from_openai_state_dict(sd, quick_gelu=True, cast_dtype=None)
        # A TorchScript archive also holds non-state tensors (e.g. attention masks kept as
        # plain attributes); only the model's own keys are loaded, and all of them must be there.
        expected = model.state_dict().keys()
        # open_clip rebuilds OpenAI models with fp16 weights; reload the fp32 values exactly.
        model.float().load_state_dict({k: v for k, v in sd.items() if k in expected})
        return model
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise ModelFormatError(f"{source}: could not rebuild a CLIP from the file's tensors "
                               f"({exc}); pass the open_clip model name") from exc


def _preprocess_cfg(model: torch.nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return int(size), tuple(cfg.get("mean", DEFAULT_MEAN)), tuple(cfg.get("std", DEFAULT_STD))


def _tokenizer_for(model: torch.nn.Module, name: str | None) -> object:
    import open_clip

    ctx = getattr(model, "context_length", None)
    if name:
        return open_clip.get_tokenizer(name, context_length=ctx)
    return open_clip.SimpleTokenizer(context_length=ctx or 77)


def load_clip(source: str | Path, model_name: str | None = None,
              device: torch.device | str = "cpu") -> CoralClip:
    """Load a CLIP from a local file or folder; see the module docstring for what is accepted."""
    with _offline():
        return _load_clip(source, model_name, device)


def _load_clip(source: str | Path, model_name: str | None,
               device: torch.device | str) -> CoralClip:
    import open_clip

    text = str(source)
    path = Path(text[len("local-dir:"):] if text.startswith("local-dir:") else text)
    if not path.exists():
        raise ModelFormatError(f"{path}: no such CLIP file or folder (weights are never "
                               "downloaded; put the file in the CLIP models folder)")
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise ModelFormatError(f"{path}: folder without open_clip_config.json; expected an "
                                   "open_clip local-dir folder (config + weights)")
        name = f"local-dir:{path}"
        try:
            model = open_clip.create_model(name, device="cpu")
        except (RuntimeError, FileNotFoundError, ValueError, KeyError) as exc:
            raise ModelFormatError(f"{path}: could not load the open_clip folder: {exc}") from exc
        tokenizer = open_clip.get_tokenizer(name)
        model_id = f"local-dir:{path.name}"
    else:
        from .formats.loader import sniff

        kind = sniff(path)
        if kind == "torchscript":
            # Read as data (formats/torchscript.py): torch.jit.load would run the archive's
            # TorchScript, and a crafted file can write to any path from its __setstate__.
            from .formats.torchscript import read_torchscript_tensors

            model = _from_openai_state(read_torchscript_tensors(path), str(path))
            tokenizer = _tokenizer_for(model, None)
            model_id = f"openai-jit:{path.name}"
        else:
            beside = path.parent / "open_clip_config.json"
            if model_name is None and beside.is_file():
                model_name = _register_config_beside(beside, path)
            try:
                if model_name:
                    model = open_clip.create_model(model_name, pretrained=str(path),
                                                   device="cpu")
                    model_id = f"{model_name}:{path.name}"
                    tokenizer = open_clip.get_tokenizer(model_name)
                else:
                    sd = _read_state_dict(path)
                    model = _from_openai_state(sd, str(path))
                    tokenizer = _tokenizer_for(model, None)
                    model_id = f"openai-state:{path.name}"
            except ModelFormatError:
                raise
            except (RuntimeError, ValueError, KeyError, FileNotFoundError) as exc:
                raise ModelFormatError(
                    f"{path}: could not load as open_clip model {model_name!r}: "
                    f"{str(exc)[:400]}") from exc
    model = _freeze(model).to(device)
    size, mean, std = _preprocess_cfg(model)
    return CoralClip(model, tokenizer, size, mean, std, model_id)


def _register_config_beside(config_file: Path, weights: Path) -> str:
    """Register ``open_clip_config.json``'s model config under a name open_clip can build."""
    import tempfile

    import open_clip

    data = json.loads(config_file.read_text())
    model_cfg = data.get("model_cfg", data)
    name = f"coral-{weights.stem}"
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / f"{name}.json"
        cfg_path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(cfg_path)
    return name


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from .formats.weights import load_weights_file, unwrap_state_dict

    sd = unwrap_state_dict(load_weights_file(path, "CLIP weights"))
    if not isinstance(sd, dict) or "visual.conv1.weight" not in sd:
        raise ModelFormatError(f"{path}: not a CLIP state dict (no visual.conv1.weight); pass "
                               "--clip-model NAME for non-ViT open_clip models")
    return sd
