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


def test_fedcollm_distillation_budget_and_selection() -> None:
    """[fedcollm]: kd_epochs (one pass over D_a by default), kd_steps as an override, and the
    min-CE selection reach the protocol's settings."""
    default = build_config({}).fedcollm
    assert (default.kd_epochs, default.kd_steps, default.kd_selection) == (1, None, "none")
    config = build_config({"fedcollm": {"kd_epochs": 2, "kd_selection": "min_ce"}})
    settings = config.fedcollm.settings(config.train, config.lora)
    assert (settings.kd_epochs, settings.kd_steps, settings.kd_selection) == (2, None, "min_ce")
    fixed = build_config({"fedcollm": {"kd_steps": 5}}).fedcollm
    assert fixed.settings(TrainSettings(), config.lora).kd_steps == 5
    with pytest.raises(ConfigError, match="kd_selection = 'best' must be one of"):
        build_config({"fedcollm": {"kd_selection": "best"}})
    with pytest.raises(ConfigError, match="kd_epochs=0"):
        build_config({"fedcollm": {"kd_epochs": 0}})
