"""`TurboConfig`: every knob of Turbo in one validated, immutable dataclass."""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

SEMANTICS = ("attention", "text", "none")
MODES = ("tokens", "kv")
BACKENDS = ("auto", "sdpa", "xformers")
DOWNSAMPLES = (1, 2, 4, 8)
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


@dataclass(frozen=True)
class TurboConfig:
    """Configuration of Turbo token merging. Every field is checked on construction (``ValueError`` naming it);
    numpy and torch scalars are accepted and stored as plain Python values, so a config always saves as JSON.

    Attributes:
        ratio (`float`, defaults to 0.5): share of a layer's tokens removed by merging, ``floor(ratio * N)``,
            in ``[0, 1)``; capped by the number of sources (``1 - 1 / (sx * sy)`` of the tokens). Higher is faster
            and further from the unaccelerated image. 0 disables merging (bit-for-bit pass-through).
        alpha (`float`, defaults to 1.0): weight of semantic value in the information degree
            ``E = R - alpha * S`` (``S`` in ``[0, 1]``, so alpha is in units of cosine similarity). 0 is plain ToMe;
            higher protects attended tokens at the price of merging less similar ones. Must be >= 0.
        semantic (`str`, defaults to ``"attention"``): how ``S`` is measured. ``"attention"``: attention each token
            receives from the layer's mean query (cheap, no N x N map). ``"text"``: each token's cross-attention
            mass on the prompt's content tokens at the previous step of the generation (``"attention"`` on its
            first step, and for a UNet call outside a generation).
            ``"none"``: no semantics, alpha ignored; the ToMe ablation.
        max_downsample (`int`, *optional*): merge in attention levels whose latent downsampling is at most this
            (1, 2, 4 or 8). ``None`` merges only the highest-resolution level that has attention (1 on SD 1.x/2.x,
            2 on SDXL). Larger values merge more layers: faster, lossier.
        sx, sy (`int`, default 2): window width and height of the bipartite split; one destination per window.
            Larger windows allow higher ratios but merge across longer distances. At least 1; ``sx * sy >= 2``.
        use_rand (`bool`, defaults to True): pick each window's destination at random (seeded) instead of the
            top-left token. Random choice avoids grid artefacts.
        seed (`int`, defaults to 0): seed of those draws, in ``[-2**63, 2**64)`` (``torch.Generator``'s range).
            Each window's destination is a hash of (seed, timestep, window), so a generation is reproducible
            whatever ran before, on any device and under ``torch.compile``.
        match_radius (`int`, *optional*, defaults to 1): compare each source only with the destinations of the
            ``(2 * radius + 1) ** 2`` windows around it. ``None`` compares with every destination (ToMe's global
            matching): the paper's exact redundancy, but its cost grows with N^2 and eats much of the speed-up.
        mode (`str`, defaults to ``"tokens"``): what self-attention merges. ``"tokens"``: its input, so queries, keys
            and values all shrink and the output is restored (attention cost ~ (1 - ratio)^2). ``"kv"``: only the
            keys and values, with proportional attention (``+ log(size)`` on each merged key's logit); every query
            stays, nothing is restored (cost ~ 1 - ratio): slower, closer to the original.
        plan_every (`int`, defaults to 1): recompute each block's merge plan every this many UNet calls (denoising
            steps) of a generation and reuse its indices in between (see `turbo_generation`: a pipeline call, or
            a ``with`` block around your own loop; any other UNet call plans afresh). 1 plans every step; larger
            values save the planning time in eager mode at the cost of merging by slightly stale similarities.
            At least 1. Inside a compiled UNet the plan is still computed at every step and a select keeps the
            stored one (one graph, no host read): no saving there.
        proportional_attn (`bool`, defaults to False): in ``mode="tokens"``, add ``log(size)`` to each merged key's
            logit in self-attention, so a token that stands for k tokens draws the attention those k would have
            (ToMe's proportional attention; ``mode="kv"`` always does this). Without it a region that merged
            heavily gets less attention than it had. Closer to the unmerged output (on the ``shapes`` model the
            one-step noise-prediction deviation at ratio 0.5 falls by a fifth for ``alpha=0``, by two fifths for
            ``alpha=1``: benchmarks/QUALITY.md); the cost is an additive bias in attention, which keeps SDPA off
            its flash kernel on GPUs (and on SDPA with ``backend="xformers"``).
        fused_plan (`bool`, defaults to False): compile each block's plan (semantic value, redundancy, information
            degree, selection and index tables) with inductor into one graph per grid shape: about a dozen kernel
            calls per merging block instead of ~50 eager operations, the same indices. Costs a compilation per
            grid shape (seconds to tens of seconds, once per process) and needs a working ``torch.compile``; it
            pays where the eager plan is launch-bound (GPUs at small and medium sizes). Without effect inside a
            compiled UNet (the plan is compiled with it) and for layers whose keys are not a plain ``nn.Linear``
            (LoRA, normalised keys), which plan eagerly.
        merge_attn (`bool`, defaults to True): merge around self-attention (where the time goes).
        merge_crossattn (`bool`, defaults to False): also merge around cross-attention (more speed, more change).
        merge_mlp (`bool`, defaults to False): also merge around the feed-forward (most speed, most change).
        backend (`str`, defaults to ``"auto"``): attention kernel: ``"sdpa"`` (torch), ``"xformers"``
            (memory-efficient attention, CUDA only) or ``"auto"`` (xformers when installed and on CUDA, else SDPA).
    """

    ratio: float = 0.5
    alpha: float = 1.0
    semantic: str = "attention"
    max_downsample: int | None = None
    sx: int = 2
    sy: int = 2
    use_rand: bool = True
    seed: int = 0
    match_radius: int | None = 1
    mode: str = "tokens"
    plan_every: int = 1
    proportional_attn: bool = False
    fused_plan: bool = False
    merge_attn: bool = True
    merge_crossattn: bool = False
    merge_mlp: bool = False
    backend: str = "auto"

    def __post_init__(self) -> None:
        # numpy / torch scalars become plain Python values, so every accepted config is JSON (save_pretrained).
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _plain(getattr(self, f.name)))
        self._set("ratio", _number("ratio", self.ratio, "a number in [0, 1)", lambda v: 0 <= v < 1))
        self._set("alpha", _number("alpha", self.alpha, "a finite number >= 0", lambda v: v >= 0 and math.isfinite(v)))
        _check_choice("semantic", self.semantic, SEMANTICS)
        _check_choice("backend", self.backend, BACKENDS)
        if self.max_downsample is not None:
            _check_int("max_downsample", self.max_downsample, f"None or one of {DOWNSAMPLES}",
                       lambda v: v in DOWNSAMPLES)
        for name in ("sx", "sy"):
            _check_int(name, getattr(self, name), "an integer >= 1", lambda v: v >= 1)
        if self.sx * self.sy < 2:
            raise ValueError(f"sx * sy must be at least 2 (a window needs a source besides its destination), "
                             f"got sx={self.sx}, sy={self.sy}")
        _check_int("seed", self.seed, f"an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (torch.Generator's range)",
                   lambda v: SEED_RANGE[0] <= v <= SEED_RANGE[1])
        _check_choice("mode", self.mode, MODES)
        _check_int("plan_every", self.plan_every, "an integer >= 1", lambda v: v >= 1)
        if self.match_radius is not None:
            _check_int("match_radius", self.match_radius, "None or an integer >= 0", lambda v: v >= 0)
        for name in ("use_rand", "proportional_attn", "fused_plan", "merge_attn", "merge_crossattn", "merge_mlp"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.mode == "kv" and (self.merge_crossattn or self.merge_mlp or not self.merge_attn):
            raise ValueError("mode='kv' merges self-attention keys and values only; it needs merge_attn=True and "
                             f"merge_crossattn=False, merge_mlp=False (got merge_attn={self.merge_attn}, "
                             f"merge_crossattn={self.merge_crossattn}, merge_mlp={self.merge_mlp})")
        if not (self.merge_attn or self.merge_crossattn or self.merge_mlp):
            raise ValueError("merge_attn, merge_crossattn and merge_mlp are all False: nothing would be merged; "
                             "enable at least one (merge_attn=True is the default)")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def replace(self, **fields: Any) -> TurboConfig:
        """A copy with some fields changed (validated again)."""
        _check_field_names(fields)
        return dataclasses.replace(self, **fields)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TurboConfig:
        _check_field_names(data)
        return cls(**data)


def resolve_config(config: TurboConfig | dict[str, Any] | None = None, **fields: Any) -> TurboConfig:
    """Turn ``config`` (a `TurboConfig`, a dict of fields or ``None`` for the defaults) plus keyword ``fields``
    (which override it) into a `TurboConfig`."""
    if config is None:
        config = TurboConfig()
    elif isinstance(config, dict):
        config = TurboConfig.from_dict(config)
    elif not isinstance(config, TurboConfig):
        raise TypeError(f"config must be a TurboConfig, a dict or None, got {type(config).__name__}")
    return config.replace(**fields) if fields else config


def parse_fields(spec: str) -> dict[str, Any]:
    """Read ``"alpha=2,semantic=none,match_radius=None"`` as ``{"alpha": 2, "semantic": "none", "match_radius": None}``.

    The command-line form of config fields (``--turbo`` in ``generate`` and ``bench``, ``turbo@R:...`` in
    ``compare``). Items are split at commas outside brackets and quotes. Values are Python literals (``None``,
    ``0.5``, ``True``, ``'text'``, ``(1, 2)``), and a bare word is a string, except ``true``/``false`` in any case
    (booleans) and ``none`` for any field but ``semantic`` (where ``none`` is a choice; elsewhere it means
    ``None``), as shells and other tools spell them. Names are not checked here; give the
    result to `TurboConfig`, which names unknown fields. Raises ``ValueError`` (one line) for an item that is not
    ``name=value``, a name given twice, or a value that is neither a literal nor a bare word.
    """
    fields: dict[str, Any] = {}
    for item in split_top_level(spec):
        name, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not name.isidentifier():
            raise ValueError(f"expected field=value, got {item.strip()!r}")
        if name in fields:
            raise ValueError(f"{name} given twice")
        value = _literal(text)
        if isinstance(value, str) and value == text:  # a bare word
            if value.lower() in ("true", "false"):
                value = value.lower() == "true"
            elif value.lower() == "none" and name != "semantic":
                value = None
        fields[name] = value
    return fields


def split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets and quotes, dropping empty pieces: ``"a=(1, 2),b=x"`` ->
    ``["a=(1, 2)", "b=x"]``."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item.strip()]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if re.fullmatch(r"[A-Za-z_][\w.-]*", text):
            return text  # a bare word: semantic=none, backend=sdpa
        raise ValueError(f"cannot read value {text!r}: use a Python literal or a bare word") from None


def _check_field_names(fields: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(TurboConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"unknown TurboConfig field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")


def _plain(value: Any) -> Any:
    """A numpy scalar or a 0-d numpy array / torch tensor as the Python value it holds; anything else as is."""
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return value.item()
    return value


def _number(name: str, value: Any, allowed: str, ok) -> float:
    """``value`` as a float if it is a real number (not a bool) that satisfies ``ok``, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not ok(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, allowed: str, ok) -> None:
    """Integers only: a float, even 2.0, is rejected rather than truncated."""
    if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if isinstance(value, bool) or not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
