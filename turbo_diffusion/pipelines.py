"""Turbo pipelines: diffusers' SD, SD img2img and SDXL pipelines with Turbo installed, same ``__call__``.

    pipe = TurboStableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5",
                                                        turbo={"ratio": 0.5})
    image = pipe("a photo of a corgi").images[0]

Each class subclasses the diffusers pipeline and adds one optional constructor argument, ``turbo`` (a
`TurboConfig`, a dict of its fields, ``None`` for the default config, or ``False`` for none). A pipeline built on a
UNet that already merges (``from_pipe`` of a Turbo pipeline shares its UNet) keeps that UNet's config when
``turbo`` is ``None``, and both pipelines keep their own generations. Every way diffusers
builds a pipeline (``from_pretrained``, ``from_pipe``, ``DiffusionPipeline.from_pretrained(...,
custom_pipeline=...)``) goes through the constructor, so all of them install Turbo. ``save_pretrained`` writes
``turbo_config.json`` beside ``model_index.json``, which keeps the plain diffusers class name, so the folder
still loads with ``StableDiffusionPipeline`` or ``DiffusionPipeline``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import typing
import uuid
from collections.abc import Callable
from typing import Any

from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from .config import TurboConfig, resolve_config
from .installation import apply_turbo, remove_turbo, turbo_config_of
from .kernels import check_kernel
from .processor import TurboProcessor

TURBO_CONFIG_NAME = "turbo_config.json"
_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TurboConfig))
# typing.Union, not `|`: older diffusers (0.35, tested) reads constructor types with `get_origin(t) == typing.Union`
# and raises KeyError in from_pretrained on a types.UnionType annotation.
TurboArg = typing.Union[TurboConfig, dict[str, Any], bool, None]  # noqa: UP007


class TurboPipelineMixin:
    """Turbo controls for a diffusers pipeline with a ``unet``. Mixed in before the diffusers class."""

    _turbo_base: type  # the diffusers pipeline class, set by _turbo_pipeline
    # The config asked for while the pipeline has no UNet (built with unet=None); installed when one is set.
    _turbo_pending: TurboConfig | None = None

    def _init_turbo(self, turbo: TurboArg) -> None:
        if turbo is False:
            return
        # A UNet that already merges (this pipeline shares it: from_pipe) keeps its config unless one is given.
        shared = turbo_config_of(self) if turbo is None and getattr(self, "unet", None) is not None else None
        self.enable_turbo(shared if shared is not None else resolve_config(None if turbo is True else turbo))

    @property
    def turbo_config(self) -> TurboConfig | None:
        """The installed `TurboConfig`, or ``None`` when Turbo is off (and while the pipeline has no UNet)."""
        return turbo_config_of(self)

    def enable_turbo(self, config: TurboConfig | dict[str, Any] | None = None, **fields: Any) -> None:
        """Install Turbo, or change its settings: ``fields`` override ``config``, which defaults to the current
        config (or the default one when Turbo is off).

        On a pipeline without a UNet (``unet=None``: diffusers builds such pipelines to encode prompts), there is
        nothing to merge: the config is checked and kept, and Turbo is installed when a UNet is assigned
        (``pipe.unet = unet``)."""
        current = self.turbo_config if self.turbo_config is not None else self._turbo_pending
        config = resolve_config(config if config is not None else current, **fields)
        if getattr(self, "unet", None) is None:
            check_kernel(config.backend)
            self._turbo_pending = config
            return
        apply_turbo(self, config)

    def disable_turbo(self) -> None:
        """Back to the processors the UNet had before Turbo: the baseline, bit for bit."""
        self._turbo_pending = None
        remove_turbo(self)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "unet" and value is not None and self._turbo_pending is not None:
            config, self._turbo_pending = self._turbo_pending, None
            apply_turbo(self, config)

    def set_attn_processor(self, processor: Any) -> None:
        """Set the UNet's attention processor(s), as ``unet.set_attn_processor`` does.

        A single `TurboProcessor` is installed the ``apply_turbo`` way (with the latent-size hook, so every
        aspect ratio gets exact windows) using its config; anything else replaces Turbo.
        """
        if isinstance(processor, TurboProcessor):
            self.enable_turbo(processor.config)
            return
        self.disable_turbo()
        self.unet.set_attn_processor(processor)

    # diffusers' switches that replace attention processors keep Turbo on top of whatever they install.
    def set_attention_slice(self, slice_size: int | None) -> None:
        """diffusers' attention slicing (``enable_attention_slicing()`` calls this), keeping Turbo: layers it
        does not merge run sliced."""
        self._keeping_turbo(lambda: super(TurboPipelineMixin, self).set_attention_slice(slice_size))

    def fuse_qkv_projections(self, *args: Any, **kwargs: Any) -> None:
        """diffusers' fused QKV projections, keeping Turbo: layers it does not merge run fused."""
        self._keeping_turbo(lambda: super(TurboPipelineMixin, self).fuse_qkv_projections(*args, **kwargs))

    def unfuse_qkv_projections(self, *args: Any, **kwargs: Any) -> None:
        """diffusers' unfusing, keeping Turbo."""
        self._keeping_turbo(lambda: super(TurboPipelineMixin, self).unfuse_qkv_projections(*args, **kwargs))

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        """diffusers' xformers switch, keeping Turbo: its processors move to the xformers backend instead of being
        replaced. Raises as diffusers does where xformers cannot run (then Turbo stays as it was)."""
        self._keeping_turbo(lambda: self.set_use_memory_efficient_attention_xformers(True, attention_op),
                            backend="xformers")

    def disable_xformers_memory_efficient_attention(self) -> None:
        """Back to torch SDPA, keeping Turbo (its backend returns to ``"auto"``)."""
        self._keeping_turbo(lambda: self.set_use_memory_efficient_attention_xformers(False, None), backend="auto")

    def _keeping_turbo(self, change: Callable[[], Any], **fields: Any) -> None:
        """Run ``change`` with Turbo off, then put Turbo back on top of the processors it installed (with
        ``fields`` changed). If ``change`` raises, Turbo is put back as it was."""
        config = self.turbo_config
        if config is None:
            change()
            return
        self.disable_turbo()
        try:
            change()
        except BaseException:
            self.enable_turbo(config)
            raise
        self.enable_turbo(config, **fields)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``, plus ``turbo_config.json`` when Turbo is on. ``model_index.json`` names the
        plain diffusers class, so the folder loads without turbo-diffusion too. Both files are written atomically
        (a temporary file renamed into place), so a failure never leaves half a file."""
        super().save_pretrained(save_directory, *args, **kwargs)
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        index["_class_name"] = self._turbo_base.__name__
        _write_json_atomically(index_path, index, sort_keys=True)
        config_path = os.path.join(save_directory, TURBO_CONFIG_NAME)
        if self.turbo_config is not None:
            _write_json_atomically(config_path, self.turbo_config.to_dict())
        else:
            with contextlib.suppress(FileNotFoundError):  # absent, or a concurrent save removed it first
                os.remove(config_path)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, turbo: TurboArg = None,
                        **kwargs: Any):
        """diffusers' ``from_pretrained`` with Turbo installed. ``turbo=None`` takes the folder's
        ``turbo_config.json`` when there is one, else the default config."""
        if turbo is None:
            turbo = _saved_turbo_config(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, turbo=turbo, **kwargs)


def _write_json_atomically(path: str, data: Any, sort_keys: bool = False) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename it over ``path``.

    The temporary file is created with ``open(..., "x")``, so it gets the mode every new file gets under the
    process's umask (usually 0644), as diffusers' own files do (``tempfile`` would make it 0600, and the rename
    would keep that: other users could not load the folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".tmp-{os.getpid()}-{uuid.uuid4().hex}.json")
    try:
        with open(temporary, "x") as f:
            json.dump(data, f, indent=2, sort_keys=sort_keys)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def _saved_turbo_config(path: str | os.PathLike) -> TurboConfig | None:
    """The config saved in a local folder's ``turbo_config.json``, or ``None`` when there is none (or ``path`` is
    not a local folder). A file that is there but unreadable raises one ``ValueError`` naming the file, the
    field when there is one, and what is allowed."""
    config_path = os.path.join(os.fspath(path), TURBO_CONFIG_NAME)
    if not os.path.lexists(config_path):
        return None
    expected = f"a JSON object of TurboConfig fields, e.g. {{\"ratio\": 0.5}} (fields: {', '.join(_FIELD_NAMES)})"
    if not os.path.isfile(config_path):
        raise ValueError(f"{config_path} is not a file; expected {expected}")
    try:
        with open(config_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path} cannot be read as JSON ({err}); expected {expected}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{config_path} holds {json.dumps(data)[:60]}; expected {expected}")
    try:
        return TurboConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: {err}") from err


def _turbo_pipeline(base: type) -> type:
    """``class Turbo<Base>(TurboPipelineMixin, Base)`` whose constructor takes ``Base``'s arguments plus ``turbo``.

    diffusers reads a pipeline's components and optional settings from ``inspect.signature(cls.__init__)`` and
    their types from its annotations, so the new constructor carries ``Base``'s exact signature and type hints
    with ``turbo=None`` appended.
    """

    def __init__(self, *args: Any, turbo: TurboArg = None, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        self._init_turbo(turbo)

    # diffusers reads component types with typing.get_type_hints(cls.__init__), i.e. from __annotations__.
    hints = {**typing.get_type_hints(base.__init__), "turbo": TurboArg}
    signature = inspect.signature(base.__init__)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()]
    params.append(inspect.Parameter("turbo", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=TurboArg))
    __init__.__signature__ = signature.replace(parameters=params)
    __init__.__annotations__ = hints
    name = f"Turbo{base.__name__}"
    doc = (f"diffusers' `{base.__name__}` with Turbo token merging installed (same `__call__`).\n\n"
           "Takes the same arguments plus `turbo`: a `TurboConfig`, a dict of its fields, `None` (the default\n"
           "config, or the one saved with the pipeline) or `False` (no Turbo).")
    return type(name, (TurboPipelineMixin, base), {"__init__": __init__, "__doc__": doc, "_turbo_base": base,
                                                    "__module__": __name__, "__qualname__": name})


TurboStableDiffusionPipeline = _turbo_pipeline(StableDiffusionPipeline)
TurboStableDiffusionImg2ImgPipeline = _turbo_pipeline(StableDiffusionImg2ImgPipeline)
TurboStableDiffusionXLPipeline = _turbo_pipeline(StableDiffusionXLPipeline)

__all__ = [
    "TurboPipelineMixin",
    "TurboStableDiffusionImg2ImgPipeline",
    "TurboStableDiffusionPipeline",
    "TurboStableDiffusionXLPipeline",
]
