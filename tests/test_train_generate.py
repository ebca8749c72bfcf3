"""Training end to end on the toy corpus, checkpoints, and the Python generation API."""

import csv
import json

import numpy as np
import pytest

from textgen import rundir
from textgen.decoding.generate import Generator, sentence_generation
from textgen.errors import DataError, UsageError
from textgen.training.loop import train

from .conftest import TOY_SENTENCES, small_config
from .test_reliability import temporaries


def first_word(sentence: str) -> str:
    return sentence.split()[0]


def test_toy_run_writes_a_complete_bundle(toy_run):
    for name in (
        "config.toml",
        "tokenizer.json",
        "model.keras",
        "weights.npz",
        "history.csv",
        "metadata.json",
    ):
        assert (toy_run / name).is_file(), name
    assert temporaries(toy_run) == [], "temporary files left behind"
    meta = json.loads((toy_run / "metadata.json").read_text(encoding="utf-8"))
    assert meta["parameters"] > 0 and len(meta["corpus_sha256"]) == 64
    assert set(meta["files"]) == {"config.toml", "tokenizer.json", "model.keras", "weights.npz"}
    rows = list(csv.DictReader((toy_run / "history.csv").open(encoding="utf-8")))
    assert len(rows) == 150 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert (toy_run.parent / "latest").resolve() == toy_run.resolve()


def test_toy_run_generates_the_three_sentences(toy_run):
    bundle = rundir.load_bundle(toy_run)
    for sentence in TOY_SENTENCES:
        assert sentence_generation(bundle, bundle.tokenizer, first_word(sentence), 10) == sentence


def test_saved_keras_model_and_numpy_weights_give_identical_logits(toy_run):
    model = rundir.load_keras_model(toy_run)
    bundle = rundir.load_bundle(toy_run)
    ids = bundle.tokenizer.encode("가는 말이 고와야", eos=False)[None, :]
    keras_logits = np.asarray(model(ids))
    numpy_logits, _ = bundle.lm.run(ids)
    np.testing.assert_allclose(numpy_logits, keras_logits, atol=1e-4)
    # and the Keras model itself drives the tutorial API to the same sentence
    assert sentence_generation(model, bundle.tokenizer, "그의", 10) == "그의 말이 법이다"


def test_n_is_a_maximum_number_of_tokens(toy_run):
    bundle = rundir.load_bundle(toy_run)
    assert sentence_generation(bundle, bundle.tokenizer, "가는", 2) == "가는 말이 고와야"


def test_unknown_seed_tokens(toy_run):
    bundle = rundir.load_bundle(toy_run)
    warnings = []
    gen = Generator(bundle.lm, bundle.tokenizer, warn=warnings.append)
    gen.generate("그의 낯선", length=3)
    assert warnings and "'낯선'" in warnings[0]
    with pytest.raises(
        DataError, match="no token of the seed is in the model's vocabulary: '안녕'"
    ):
        gen.generate("안녕", length=3)
    with pytest.raises(UsageError, match="seed is empty"):
        gen.generate("   ", length=3)


@pytest.mark.parametrize("seed", [1, 7, 1234])
def test_toy_sentences_for_several_seeds(tmp_path, toy_config, seed):
    cfg = toy_config.with_overrides([f"train.seed={seed}"])
    train(cfg, tmp_path / "run", progress=False, log=lambda _m: None)
    bundle = rundir.load_bundle(tmp_path / "run")
    got = [sentence_generation(bundle, bundle.tokenizer, first_word(s), 10) for s in TOY_SENTENCES]
    assert got == TOY_SENTENCES


def test_same_seed_same_weights(tmp_path, toy_config):
    cfg = toy_config.with_overrides(["train.epochs=5"])
    train(cfg, tmp_path / "a", progress=False, log=lambda _m: None)
    train(cfg, tmp_path / "b", progress=False, log=lambda _m: None)
    a = rundir.load_bundle(tmp_path / "a").lm.arrays()
    b = rundir.load_bundle(tmp_path / "b").lm.arrays()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_and_char_stream_train(tmp_path, cell):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcabcabc\n" * 40, encoding="utf-8")
    cfg = small_config(
        corpus,
        data={"level": "char", "mode": "stream", "seq_len": 8, "val_split": 0.2},
        model={"cell": cell, "layers": 2, "dropout": 0.1},
    )
    result = train(cfg, tmp_path / "run", progress=False, log=lambda _m: None)
    assert result.history and not np.isnan(result.history[-1]["val_loss"])
    bundle = rundir.load_bundle(tmp_path / "run")
    assert bundle.lm.cell == cell
    text = Generator(bundle.lm, bundle.tokenizer).generate("ab", length=5)[0]
    assert text.startswith("ab") and len(text) == 7


def test_existing_run_is_not_overwritten_without_flag(tmp_path, toy_config):
    cfg = toy_config.with_overrides(["train.epochs=1"])
    train(cfg, tmp_path / "run", progress=False, log=lambda _m: None)
    before = (tmp_path / "run" / "weights.npz").read_bytes()
    with pytest.raises(UsageError, match="already exists; pass --overwrite"):
        train(cfg, tmp_path / "run", progress=False, log=lambda _m: None)
    assert (tmp_path / "run" / "weights.npz").read_bytes() == before
    train(cfg, tmp_path / "run", overwrite=True, progress=False, log=lambda _m: None)


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"w{i % 7} x{i % 3} y" for i in range(60)), encoding="utf-8")
    cfg = small_config(
        corpus,
        data={"val_split": 0.2},
        # the early-stopping rule, not the XLA step (compiling it costs ~6 s CPU)
        train={"epochs": 40, "patience": 2, "learning_rate": 0.3, "jit_compile": False},
    )
    result = train(cfg, tmp_path / "run", progress=False, log=lambda _m: None)
    val = [row["val_loss"] for row in result.history]
    assert result.best_loss == min(val)
    assert result.best_epoch == 1 + val.index(min(val))
    assert result.stopped_early  # a learning rate this high overfits 48 lines quickly
    assert len(val) == result.best_epoch + 2
