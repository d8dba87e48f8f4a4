import math

import pytest

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
