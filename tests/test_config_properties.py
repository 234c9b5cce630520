"""Properties of the strict config loader (`fedkt.config.build_config`) on arbitrary tables.

Whatever a TOML file holds (unknown keys, values of any TOML type at any setting, values out
of range), loading either gives a `FedktConfig` or one `ConfigError` that names the dotted
key; and every config it accepts comes back unchanged through ``dataclasses.asdict``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedkt.config import FedktConfig, build_config, load_config
from fedkt.errors import ConfigError

PROPERTIES = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, type hint) of every setting, nested sections walked."""
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += _leaves(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            out.append((prefix + f.name, hint))
    return out


LEAVES = _leaves(FedktConfig)
SECTIONS = ["", *sorted({key.rpartition(".")[0] + "." for key, _ in LEAVES if "." in key})]

scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),  # tomllib reads integers of any size
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["auto", "validation", "fedcollm", "em", "arc_easy", "127.0.0.1:9092"]),
    st.datetimes(),
    st.dates(),
    st.times(),
    st.none(),
)
toml_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _set(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *sections, leaf = dotted.split(".")
    table = raw
    for section in sections:
        table = table.setdefault(section, {})
    table[leaf] = value
    return raw


def _load(raw: dict[str, Any]) -> FedktConfig | ConfigError:
    """The config, or its ConfigError; any other exception fails the property."""
    try:
        return build_config(raw, source="<prop>")
    except ConfigError as err:
        return err


@PROPERTIES
@given(st.sampled_from(LEAVES), toml_values)
def test_any_value_at_any_setting_loads_or_names_the_key(leaf: tuple[str, Any], value: Any) -> None:
    key, _ = leaf
    outcome = _load(_set({}, key, value))
    if isinstance(outcome, ConfigError):
        assert key in str(outcome), str(outcome)
        assert str(outcome).startswith("<prop>: ")
    else:
        assert build_config(dataclasses.asdict(outcome)) == outcome


@PROPERTIES
@given(
    st.sampled_from(SECTIONS),
    st.text(min_size=1, max_size=12).filter(lambda n: "." not in n),
    toml_values,
)
def test_an_unknown_key_in_any_section_is_named(section: str, name: str, value: Any) -> None:
    known = {key for key, _ in LEAVES} | {s.rstrip(".") for s in SECTIONS}
    if section + name in known or (not section and name in known):
        return
    outcome = _load(_set({}, section + name, value))
    assert isinstance(outcome, ConfigError)
    assert f"unknown setting {section + name!r}" in str(outcome)


@PROPERTIES
@given(st.lists(st.tuples(st.sampled_from(LEAVES), toml_values), min_size=1, max_size=4))
def test_many_settings_at_once_load_or_name_one_of_them(
    settings_: list[tuple[tuple[str, Any], Any]],
) -> None:
    raw: dict[str, Any] = {}
    for (key, _), value in settings_:
        _set(raw, key, value)
    outcome = _load(raw)
    if isinstance(outcome, ConfigError):
        assert any(key in str(outcome) for (key, _), _ in settings_), str(outcome)
    else:
        assert build_config(dataclasses.asdict(outcome)) == outcome


@PROPERTIES
@given(st.sampled_from(SECTIONS[1:]), toml_values.filter(lambda v: not isinstance(v, dict)))
def test_a_section_that_is_not_a_table_is_named(section: str, value: Any) -> None:
    outcome = _load(_set({}, section.rstrip("."), value))
    assert isinstance(outcome, ConfigError) and section.rstrip(".") in str(outcome)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_round_trips_through_asdict(path: Path) -> None:
    config = load_config(path)
    assert build_config(dataclasses.asdict(config)) == config


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"lr": 10**400}}, "train.lr"),  # float() of a huge TOML integer
        ({"deployment": {"superlink": "host:\u00b2"}}, "deployment.superlink"),  # '²'.isdigit()
        ({"fedcollm": {"eps": -1.0}}, "fedcollm.eps"),  # DPSettings calls it target_epsilon
        ({"fedcollm": {"synthesis_tokens": 0}}, "fedcollm.synthesis_tokens"),
        ({"lora": {"r": 0}}, "lora.r"),
        ({"data": {"splits": {"gsm8k": "test"}}}, "data.splits"),
        ({"eval": {"created": dt.date(2020, 1, 1)}}, "eval.created"),
    ],
)
def test_examples_the_properties_found(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config(raw)
