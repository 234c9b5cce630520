"""GenerationSettings validation and the stop-string cut every backend applies."""

from __future__ import annotations

import pytest

from fedkt.errors import ConfigError
from fedkt.generation import GenerationSettings, cut_at_stop


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", 0),
        ("max_new_tokens", 2.5),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("stop", "Question:"),  # a bare string would stop at every single character
        ("stop", ("",)),
        ("batch_size", 0),
        ("batch_size", True),
        ("seed", -1),
    ],
)
def test_out_of_range_values_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=rf"GenerationSettings: {field}="):
        GenerationSettings(**{field: value})


def test_every_bad_field_is_named_at_once():
    with pytest.raises(ConfigError, match=r"max_new_tokens=0 .*top_p=2"):
        GenerationSettings(max_new_tokens=0, top_p=2)


def test_defaults_are_greedy_and_a_toml_list_of_stops_becomes_a_tuple():
    assert not GenerationSettings().sampling
    assert GenerationSettings(temperature=0.01).sampling  # FedCoT's near-greedy reference
    settings = GenerationSettings(stop=["Question:", "\n\n"])  # type: ignore[arg-type]
    assert settings.stop == ("Question:", "\n\n")
    hash(settings)  # still a frozen, hashable value


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("a b\n\nQuestion: c", ("Question:", "\n\n"), "a b"),  # the earliest stop wins
        ("a Question: b \n\n", ("\n\n", "Question:"), "a "),  # whatever the order of stops
        ("no stop here", ("Question:",), "no stop here"),
        ("Question: at once", ("Question:",), ""),
        ("anything", (), "anything"),
    ],
)
def test_cut_at_stop(text, stop, expected):
    assert cut_at_stop(text, stop) == expected
