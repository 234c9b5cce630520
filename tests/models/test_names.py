from __future__ import annotations

import dataclasses

import pytest

from fedkt.errors import ModelError
from fedkt.models import EMBEDDED, EMBEDDED_MODELS, ModelSpec, parse_model_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("smollm2-135m", ModelSpec("smollm2-135m")),
        ("smollm2-135m@layers=8", ModelSpec("smollm2-135m", layers=8)),
        (" smollm2-135m@ layers = 12 ", ModelSpec("smollm2-135m", layers=12)),
        ("HuggingFaceTB/SmolLM2-360M@layers=4", ModelSpec("HuggingFaceTB/SmolLM2-360M", 4)),
        ("/models/run@3/student", ModelSpec("/models/run@3/student")),
        ("/models/run@3/student@layers=2", ModelSpec("/models/run@3/student", layers=2)),
        ("gemma3-270m", ModelSpec("gemma3-270m")),
        ("gemma3-270m@layers=6,healed=true", ModelSpec("gemma3-270m", 6, healed=True)),
    ],
)
def test_parse_model_name(name: str, expected: ModelSpec) -> None:
    assert parse_model_name(name) == expected


def test_embedded_flag() -> None:
    assert parse_model_name(f"{EMBEDDED}@layers=8").is_embedded
    assert parse_model_name("gemma3-270m@layers=4").is_embedded
    assert not parse_model_name("org/model").is_embedded
    assert not parse_model_name("gemma3-270m-it").is_embedded  # only exact table names


def test_both_embedded_models_are_in_the_table() -> None:
    assert EMBEDDED in EMBEDDED_MODELS
    assert {"smollm2-135m", "gemma3-270m"} <= set(EMBEDDED_MODELS)


def test_spec_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_model_name("smollm2-135m").layers = 3  # type: ignore[misc]


def test_unknown_option_lists_known_keys() -> None:
    with pytest.raises(ModelError, match=r"unknown option 'depth'.*known keys: layers"):
        parse_model_name("smollm2-135m@depth=8")


@pytest.mark.parametrize("value", ["0", "-1", "eight", "2.5"])
def test_layers_must_be_a_positive_integer(value: str) -> None:
    with pytest.raises(ModelError, match="positive whole number"):
        parse_model_name(f"smollm2-135m@layers={value}")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("smollm2-135m@layers", "not of the form key=value"),
        ("smollm2-135m@layers=", "not of the form key=value"),
        ("smollm2-135m@layers=2,layers=3", "given twice"),
        ("@layers=2", "has no base"),
    ],
)
def test_malformed_names(name: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse_model_name(name)
