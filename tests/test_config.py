import json
import math

import numpy as np
import pytest
import torch

from turbo_diffusion import TurboConfig, TurboProcessor, apply_turbo
from turbo_diffusion.config import resolve_config

BAD_VALUES = [
    ("ratio", -0.1),
    ("ratio", 1.0),
    ("ratio", 1.5),
    ("ratio", math.nan),
    ("ratio", "0.5"),
    ("ratio", True),
    ("alpha", -1.0),
    ("alpha", math.inf),
    ("alpha", math.nan),
    ("semantic", "cls"),
    ("semantic", None),
    ("backend", "flash"),
    ("max_downsample", 3),
    ("max_downsample", 0),
    ("sx", 0),
    ("sy", -2),
    ("sx", 1.5),
    ("seed", 0.5),
    ("match_radius", -1),
    ("use_rand", "yes"),
    ("merge_attn", 1),
    ("mode", "keys"),
    ("plan_every", 0),
    ("plan_every", 2.0),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_value_raises_value_error_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as err:
        TurboConfig(**{field: value})
    assert field in str(err.value)
    assert repr(value) in str(err.value) or str(value) in str(err.value)


def test_window_without_sources_is_rejected():
    with pytest.raises(ValueError, match="sx \\* sy"):
        TurboConfig(sx=1, sy=1)


def test_merging_nothing_is_rejected():
    with pytest.raises(ValueError, match="nothing would be merged"):
        TurboConfig(merge_attn=False)


def test_processor_and_apply_turbo_validate_fields(sd15_unet):
    with pytest.raises(ValueError, match="ratio"):
        TurboProcessor(ratio=2)
    with pytest.raises(ValueError, match="alpha"):
        apply_turbo(sd15_unet, alpha=-0.5)


def test_unknown_field_is_a_type_error_listing_known_fields():
    with pytest.raises(TypeError, match="ratios.*known fields"):
        TurboConfig().replace(ratios=0.3)


def test_config_or_fields_or_dict_are_equivalent():
    assert resolve_config(None, ratio=0.3) == TurboConfig(ratio=0.3)
    assert resolve_config({"ratio": 0.3}) == TurboConfig(ratio=0.3)
    assert resolve_config(TurboConfig(alpha=2.0), ratio=0.3) == TurboConfig(ratio=0.3, alpha=2.0)
    assert TurboConfig.from_dict(TurboConfig(seed=7).to_dict()) == TurboConfig(seed=7)


def test_defaults():
    cfg = TurboConfig()
    assert (cfg.ratio, cfg.semantic, cfg.max_downsample, cfg.sx, cfg.sy) == (0.5, "attention", None, 2, 2)
    assert (cfg.merge_attn, cfg.merge_crossattn, cfg.merge_mlp, cfg.backend) == (True, False, False, "auto")
    assert (cfg.mode, cfg.plan_every, cfg.match_radius) == ("tokens", 1, 1)


def test_parse_fields_reads_lowercase_booleans_and_none_as_shells_spell_them():
    from turbo_diffusion.config import parse_fields

    assert parse_fields("merge_mlp=true,use_rand=FALSE,match_radius=none,semantic=none,backend='true'") == {
        "merge_mlp": True, "use_rand": False, "match_radius": None, "semantic": "none", "backend": "true"}
    assert TurboConfig(**parse_fields("merge_mlp=true,max_downsample=none")).merge_mlp is True


def test_parse_fields_reads_literals_and_bare_words():
    from turbo_diffusion.config import parse_fields

    assert parse_fields("alpha=2, semantic=none,match_radius=None,use_rand=False,backend='sdpa'") == {
        "alpha": 2, "semantic": "none", "match_radius": None, "use_rand": False, "backend": "sdpa"}
    assert parse_fields("x=(1, 2),y=[3,4]") == {"x": (1, 2), "y": [3, 4]}
    assert parse_fields("") == {}


@pytest.mark.parametrize(("spec", "message"), [
    ("alpha", "expected field=value"),
    ("2=3", "expected field=value"),
    ("alpha=1,alpha=2", "alpha given twice"),
    ("alpha=2..5", "cannot read value '2..5'"),
])
def test_parse_fields_rejects_malformed_items(spec, message):
    from turbo_diffusion.config import parse_fields

    with pytest.raises(ValueError, match=message):
        parse_fields(spec)


NUMPY_AND_TORCH_SCALARS = [
    ("ratio", np.float32(0.25), 0.25, float),
    ("ratio", torch.tensor(0.5), 0.5, float),
    ("ratio", 0, 0.0, float),
    ("alpha", np.int64(2), 2.0, float),
    ("max_downsample", np.int64(2), 2, int),
    ("max_downsample", torch.tensor(4), 4, int),
    ("sx", np.int64(3), 3, int),
    ("seed", np.uint64(2**64 - 1), 2**64 - 1, int),
    ("plan_every", torch.tensor(3), 3, int),
    ("use_rand", np.bool_(False), False, bool),
    ("semantic", np.str_("none"), "none", str),
]


@pytest.mark.parametrize(("field", "value", "stored", "kind"), NUMPY_AND_TORCH_SCALARS)
def test_numpy_and_torch_scalars_are_stored_as_plain_python_values(field, value, stored, kind):
    cfg = TurboConfig(**{field: value})
    assert getattr(cfg, field) == stored and type(getattr(cfg, field)) is kind
    assert TurboConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(("field", "value"), [
    ("max_downsample", 2.0), ("max_downsample", torch.tensor(2.0)), ("sx", np.float64(2.0)), ("seed", 3.0),
    ("plan_every", np.float32(2)), ("match_radius", 1.0), ("ratio", np.bool_(True)), ("ratio", torch.ones(2)),
])
def test_integer_fields_reject_floats_and_numbers_reject_bools_and_arrays(field, value):
    with pytest.raises(ValueError, match=field):
        TurboConfig(**{field: value})


@pytest.mark.parametrize("seed", [-(2**63) - 1, 2**64, 10**30])
def test_seed_is_limited_to_the_generator_range(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[-9223372036854775808, 18446744073709551615\]"):
        TurboConfig(seed=seed)
