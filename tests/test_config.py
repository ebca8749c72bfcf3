from pathlib import Path

import pytest

from textgen import config as config_mod
from textgen.errors import UsageError

from .conftest import ROOT, TOY_CONFIG


def test_toy_config_resolves_corpus_against_its_folder():
    cfg = config_mod.load(TOY_CONFIG)
    assert Path(cfg.data.corpus).resolve() == (ROOT / "data" / "ko-toy.txt").resolve()
    assert cfg.data.level == "word" and cfg.data.mode == "lines"


def test_defaults_when_sections_are_missing():
    cfg = config_mod.loads("[model]\nunits = 7\n")
    assert cfg.model.units == 7
    assert cfg.train == config_mod.TrainConfig()


def test_unknown_key_names_it_and_suggests_nearest():
    with pytest.raises(
        UsageError, match=r"unknown config key 'model\.unit'.*did you mean 'model\.units'"
    ):
        config_mod.loads("[model]\nunit = 3\n")


def test_unknown_section():
    with pytest.raises(UsageError, match=r"unknown config section '\[modle\]'.*'model'"):
        config_mod.loads("[modle]\nunits = 3\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[model]\nunits = "big"\n', r"model\.units' must be int, got str"),
        ("[train]\nlearning_rate = true\n", r"train\.learning_rate' must be float"),
        ('[model]\ncell = "transformer"\n', r"model\.cell' must be one of lstm, gru, rnn"),
        ("[data]\nval_split = 1.5\n", r"val_split must be in \[0, 1\)"),
        ("[train]\nepochs = 0\n", r"epochs must be >= 1"),
    ],
)
def test_wrong_values_are_named(text, message):
    with pytest.raises(UsageError, match=message):
        config_mod.loads(text)


def test_int_is_accepted_for_float():
    assert config_mod.loads("[train]\nlearning_rate = 1\n").train.learning_rate == 1.0


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UsageError, match="config file not found"):
        config_mod.load(tmp_path / "nope.toml")
    with pytest.raises(UsageError, match="is a folder"):
        config_mod.load(tmp_path)


def test_invalid_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nunits = 3", encoding="utf-8")
    with pytest.raises(UsageError, match="not valid TOML"):
        config_mod.load(bad)


def test_overrides_parse_toml_values_and_bare_words():
    cfg = config_mod.Config().with_overrides(
        ["train.epochs=3", "model.cell=gru", "data.lowercase=true", "train.learning_rate=0.5"]
    )
    assert (cfg.train.epochs, cfg.model.cell, cfg.data.lowercase) == (3, "gru", True)
    assert cfg.train.learning_rate == 0.5


@pytest.mark.parametrize("item", ["epochs=3", "train.=3", "train.epochs"])
def test_malformed_override(item):
    with pytest.raises(UsageError, match=r"--set expects section\.key=value"):
        config_mod.Config().with_overrides([item])


def test_override_of_unknown_key_is_an_error():
    with pytest.raises(UsageError, match=r"train\.epoch'.*train\.epochs"):
        config_mod.Config().with_overrides(["train.epoch=3"])


def test_toml_round_trip():
    cfg = config_mod.Config().with_overrides(['data.corpus="a \\"b\\".txt"', "model.dropout=0.25"])
    assert config_mod.loads(cfg.to_toml()) == cfg
