"""The TOML config: strict keys, typed values, library settings composed in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkt.config import FedktConfig, build_config, load_config
from fedkt.errors import ConfigError
from fedkt.training import TrainSettings

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_load() -> None:
    configs = sorted((REPO / "configs").glob("*.toml"))
    assert configs, "configs/ should ship at least the quickstart"
    for path in configs:
        assert isinstance(load_config(path), FedktConfig)


def test_values_are_typed_and_lists_become_tuples(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'output_dir = "out"\n[data]\ntasks = ["ag_news", "arc_easy"]\nlimit = 10\n'
        "[train]\nlr = 1e-3\nepochs = 2\nbetas = [0.9, 0.99]\n[lora]\nr = 4\n"
    )
    config = load_config(path)
    assert config.data.tasks == ("ag_news", "arc_easy")
    assert config.data.limit == 10
    assert config.train == TrainSettings(lr=1e-3, epochs=2, betas=(0.9, 0.99))
    assert config.lora.r == 4
    assert config.model.name == "smollm2-135m"  # untouched sections keep their defaults


def test_int_is_accepted_where_a_float_is_expected() -> None:
    assert build_config({"train": {"lr": 1}}).train.lr == 1.0


def test_unknown_key_names_the_key_and_suggests_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"'train.learning_rte'.*did you mean 'lr'|unknown"):
        build_config({"train": {"learning_rte": 1e-3}})
    with pytest.raises(ConfigError, match=r"data.taks.*did you mean 'tasks'"):
        build_config({"data": {"taks": ["arc_easy"]}})


def test_wrong_type_names_the_key_and_the_expected_type() -> None:
    with pytest.raises(ConfigError, match=r"train.epochs = '2'.*expected int"):
        build_config({"train": {"epochs": "2"}})
    with pytest.raises(ConfigError, match=r"finetune.method = 'adapter' must be one of"):
        build_config({"finetune": {"method": "adapter"}})


def test_out_of_range_value_is_reported_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nlr = -1.0\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*lr"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
