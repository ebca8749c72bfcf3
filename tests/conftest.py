"""Shared fixtures: the toy corpus, small configs, and one trained toy run per session."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import pytest

from textgen import config as config_mod

ROOT = Path(__file__).resolve().parent.parent
TOY_CORPUS = ROOT / "data" / "ko-toy.txt"
TOY_CONFIG = ROOT / "configs" / "ko-toy.toml"
TOY_SENTENCES = [line for line in TOY_CORPUS.read_text(encoding="utf-8").splitlines() if line]

# A suite started in the background of a script (`make test &`, `nohup`) inherits Ctrl-C
# ignored, and an ignored signal stays ignored in every process it starts: the tests that
# press Ctrl-C on a textgen process would then see it run on. They test what a user at a
# terminal gets, so the suite puts Python's own handler back (its children start with the
# default disposition, and Python turns that into KeyboardInterrupt).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _corpus_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Prepared corpora go to a per-session folder, never the user's cache."""
    import os

    os.environ["TEXTGEN_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def toy_config() -> config_mod.Config:
    return config_mod.load(TOY_CONFIG)


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory: pytest.TempPathFactory, toy_config: config_mod.Config) -> Path:
    """A run directory trained once on the toy config (quietly)."""
    from textgen.training.loop import train

    run_dir = tmp_path_factory.mktemp("runs") / "ko-toy"
    train(toy_config, run_dir, progress=False, log=lambda _m: None)
    return run_dir


def small_config(corpus: Path, **sections: dict) -> config_mod.Config:
    """A tiny config over ``corpus``; ``sections`` override keys, e.g. model={"cell": "gru"}."""
    base = config_mod.Config()
    data = replace(
        base.data, **({"corpus": str(corpus), "val_split": 0.0} | sections.get("data", {}))
    )
    model = replace(base.model, **({"embedding_dim": 8, "units": 16} | sections.get("model", {})))
    train = replace(base.train, **({"epochs": 2, "batch_size": 4} | sections.get("train", {})))
    return config_mod.Config(data=data, model=model, train=train)
