"""CLIP from local files only (open_clip underneath), with differentiable preprocessing.

Accepted: OpenAI TorchScript archives (ViT-B-32.pt ...; QuickGELU), open_clip state dicts
(.safetensors / .bin / .pt, plus a model name or an ``open_clip_config.json`` beside the file),
``local-dir:`` folders (open_clip's own layout), and the project's small demo CLIP, which is such a
folder. Nothing is ever fetched: a name without a local file is an error, not a download.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .errors import InputError, ModelFormatError
from .formats.clip_checks import (check_clip_config, check_finite, check_fits_weights,
                                  openai_state_config)



class _Displayed(torch.autograd.Function):
    """Generator output as displayed: clamped to [-1, 1]. Backward, a pixel past the range
    passes only the gradient that would bring it back (a plain clamp would freeze it there;
    no clamp lets an edit buy CLIP score with colours nobody sees)."""

    @staticmethod
    def forward(ctx: Any, img: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(img)
        return img.clamp(-1.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (img,) = ctx.saved_tensors
        back = ((img >= -1) & (img <= 1)) | ((img > 1) & (grad > 0)) | ((img < -1) & (grad < 0))
        return grad * back


def displayed(img: torch.Tensor) -> torch.Tensor:
    """The picture a user gets from generator output (PNG, ComfyUI IMAGE): clamped to
    [-1, 1], with the gradient rule of ``_Displayed``. Why the CLIP reads this and not the raw
    output: an edit pushed a red past the range to 1.75, which the CLIP scored as redder than
    any displayable red (measured: docs/method.md, "The CLIP reads the displayed picture")."""
    return _Displayed.apply(img)


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
    # The words the CLIP was trained on, where its folder lists them (``coral_vocabulary`` in
    # open_clip_config.json: the demo CLIPs, trained on a few dozen words); None for every
    # CLIP trained on the open web, which has read them all. fit.unread_words reads it.
    vocabulary: frozenset[str] | None = None
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

    def encode_image(self, img: torch.Tensor, as_displayed: bool = True) -> torch.Tensor:
        """Unit-norm image embeddings of generator output; gradients flow to ``img``. By
        default of the picture as displayed (``displayed``); ``as_displayed=False`` reads the
        raw output (the paper's)."""
        feats = self.model.encode_image(
            self.preprocess(displayed(img) if as_displayed else img).to(self.device))
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

    def tokens_beyond_context(self, prompt: str) -> tuple[int, int] | None:
        """(the prompt's tokens with start/end, the context the CLIP reads) when the prompt is
        longer than the CLIP reads (the tokenizer silently cuts it); None when it fits or the
        tokenizer cannot say."""
        encode = getattr(self.tokenizer, "encode", None)
        context = getattr(self.tokenizer, "context_length", None)
        if not callable(encode) or not isinstance(context, int):
            return None
        try:
            n = len(encode(prompt)) + 2
        except Exception:  # noqa: BLE001 - a tokenizer that cannot count: say nothing
            return None
        return (n, context) if n > context else None

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
    from .formats.loader import file_fields_checked

    with _offline(), file_fields_checked(Path(str(source)), "CLIP"):
        return _load_clip(source, model_name, device)


def _load_clip(source: str | Path, model_name: str | None,
               device: torch.device | str) -> CoralClip:
    import open_clip

    text = str(source)
    path = Path(text[len("local-dir:"):] if text.startswith("local-dir:") else text)
    if not path.exists():
        raise ModelFormatError(f"{path}: no such CLIP file or folder (weights are never "
                               "downloaded; put the file in the CLIP models folder)")
    preprocess: dict[str, Any] = {}
    vocabulary: frozenset[str] | None = None
    if path.is_dir():
        config = path / "open_clip_config.json"
        if not config.is_file():
            raise ModelFormatError(f"{path}: folder without open_clip_config.json; expected an "
                                   "open_clip local-dir folder (config + weights)")
        weights = next((path / n for n in LOCAL_DIR_WEIGHTS if (path / n).is_file()), None)
        if weights is None:
            raise ModelFormatError(f"{path}: no weights in the folder (expected one of "
                                   f"{', '.join(LOCAL_DIR_WEIGHTS)})")
        model_cfg, preprocess, vocabulary = _read_config(config)
        model, name = _build_from_config(model_cfg, _read_weights(weights), weights)
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
            sd = _read_weights(path)
            if model_name is None and beside.is_file():
                model_cfg, preprocess, vocabulary = _read_config(beside)
                model, name = _build_from_config(model_cfg, sd, path)
                tokenizer = open_clip.get_tokenizer(name)
                model_id = f"coral-config:{path.name}"
            elif model_name:
                model_cfg = open_clip.get_model_config(model_name)
                if model_cfg is None:
                    raise ModelFormatError(f"{path}: unknown open_clip model name "
                                           f"{model_name!r}; see open_clip.list_models()")
                model, _ = _build_from_config(model_cfg, sd, path, model_name)
                tokenizer = open_clip.get_tokenizer(model_name)
                model_id = f"{model_name}:{path.name}"
            else:
                if "visual.conv1.weight" not in sd:
                    raise ModelFormatError(f"{path}: not a CLIP state dict (no "
                                           "visual.conv1.weight); pass --clip-model NAME for "
                                           "non-ViT open_clip models")
                check_fits_weights(openai_state_config(sd, str(path)), sd, str(path))
                model = _from_openai_state(sd, str(path))
                tokenizer = _tokenizer_for(model, None)
                model_id = f"openai-state:{path.name}"
    model = _freeze(model).to(device)
    size, mean, std = _preprocess_cfg(model)
    mean, std = preprocess.get("mean", mean), preprocess.get("std", std)
    return CoralClip(model, tokenizer, size, mean, std, model_id, vocabulary)


LOCAL_DIR_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                     "open_clip_model.bin", "open_clip_pytorch_model.pt")


MAX_VOCABULARY_WORDS = 100_000
MAX_WORD_CHARS = 64


def _read_config(config_file: Path
                 ) -> tuple[dict[str, Any], dict[str, Any], frozenset[str] | None]:
    """(model_cfg, checked preprocess mean/std, ``coral_vocabulary`` or None) of an
    ``open_clip_config.json``, bounded."""
    from .formats.bounded_json import read_json_file

    data = read_json_file(config_file, "open_clip config")
    if not isinstance(data, dict):
        raise ModelFormatError(f"{config_file}: the open_clip config is a "
                               f"{type(data).__name__}, not a table")
    model_cfg = check_clip_config(data.get("model_cfg", data), str(config_file))
    pre = data.get("preprocess_cfg") or {}
    out: dict[str, Any] = {}
    if isinstance(pre, dict):
        for key in ("mean", "std"):
            value = pre.get(key)
            if value is None:
                continue
            if not (isinstance(value, list) and len(value) == 3 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and
                    math.isfinite(v) and (key == "mean" or v > 0) for v in value)):
                raise ModelFormatError(f"{config_file}: preprocess_cfg.{key} = {value!r}; "
                                       "expected three finite numbers")
            out[key] = tuple(float(v) for v in value)
    vocabulary = _checked_vocabulary(data["coral_vocabulary"], config_file) \
        if "coral_vocabulary" in data else None
    return model_cfg, out, vocabulary


def _checked_vocabulary(words: Any, config_file: Path) -> frozenset[str]:
    """``coral_vocabulary``: the words the CLIP was trained on, a list of short strings."""
    if not (isinstance(words, list) and 0 < len(words) <= MAX_VOCABULARY_WORDS and all(
            isinstance(w, str) and 0 < len(w) <= MAX_WORD_CHARS for w in words)):
        raise ModelFormatError(f"{config_file}: coral_vocabulary must be a list of 1 to "
                               f"{MAX_VOCABULARY_WORDS} words of at most {MAX_WORD_CHARS} "
                               "characters (the words the CLIP was trained on)")
    return frozenset(w.lower() for w in words)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The CLIP state dict, read by the project's own bounded reader (never by open_clip,
    whose ``torch.load`` has no depth scan: a deeply nested file crashes the process)."""
    from .formats.weights import load_weights_file, unwrap_state_dict

    sd = unwrap_state_dict(load_weights_file(path, "CLIP weights"))
    if not isinstance(sd, dict) or not sd or not all(
            isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelFormatError(f"{path}: not a CLIP state dict (expected a table of tensors)")
    check_finite(sd, str(path), "CLIP")
    return sd


def _build_from_config(model_cfg: dict[str, Any], sd: dict[str, torch.Tensor], path: Path,
                       name: str | None = None) -> tuple[torch.nn.Module, str]:
    """Build the model a checked config describes and load the weights in hand into it."""
    import open_clip

    check_clip_config(model_cfg, str(path))
    check_fits_weights(model_cfg, sd, str(path))
    if name is None:
        name = _register_config(model_cfg)
    try:
        with _quiet_open_clip():
            model = open_clip.create_model(name, pretrained=None, device="cpu")
        model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()})
    except (RuntimeError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise ModelFormatError(f"{path}: the CLIP weights do not fit their config "
                               f"({str(exc)[:400]})") from exc
    return model, name


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Hide open_clip's "no pretrained weights loaded" warning: the weights are loaded right
    after, from the file the project's own reader has checked."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    drop = _Drop()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _register_config(model_cfg: dict[str, Any]) -> str:
    """Register a model config under a name derived from its content, so open_clip can build
    it and find its tokenizer settings."""
    import hashlib
    import tempfile

    import open_clip

    blob = json.dumps(model_cfg, sort_keys=True)
    name = "coral-" + hashlib.sha256(blob.encode()).hexdigest()[:12]
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / f"{name}.json"
        cfg_path.write_text(blob)
        open_clip.add_model_config(cfg_path)
    return name
