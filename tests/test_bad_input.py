"""The rest of the bad-input matrix: each case is one line, a fitting exit code, no traceback."""

import json

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from textgen import config as config_mod
from textgen.cli import main
from textgen.rundir import load_bundle

from .conftest import TOY_CONFIG


def invoke(*args, **kwargs):
    result = CliRunner().invoke(main, [str(a) for a in args], **kwargs)
    assert "Traceback" not in result.output
    return result


def one_line_error(result, code, message):
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_single_token_corpus(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text("aaaaaaaaaaaaaaaaaaaaaaaaaaa", encoding="utf-8")
    result = invoke(
        "train", "--config", TOY_CONFIG, "--corpus", corpus, "--out", tmp_path / "r",
        "--set", "data.level=char", "--set", "data.mode=stream", "--set", "data.seq_len=5",
    )  # fmt: skip
    one_line_error(
        result, 1, "has a single distinct token ('a'); a language model needs at least two"
    )


def test_encoding_option(tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("café crème brûlée\nthé au café\n".encode("latin-1"))
    result = invoke("train", "--config", TOY_CONFIG, "--corpus", corpus, "--out", tmp_path / "a")
    one_line_error(result, 1, "is not valid utf-8 at byte 3 (0xe9); convert it or pass --encoding")
    result = invoke(
        "train", "--config", TOY_CONFIG, "--corpus", corpus, "--encoding", "latin-1",
        "--out", tmp_path / "b", "--set", "train.epochs=2", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "café" in load_bundle(tmp_path / "b").tokenizer.vocab


def test_unknown_encoding(tmp_path):
    result = invoke(
        "train", "--config", TOY_CONFIG, "--encoding", "klingon", "--out", tmp_path / "r"
    )
    one_line_error(result, 1, "unknown encoding 'klingon'")


def test_long_lines_are_reported(tmp_path):
    result = invoke(
        "train", "--config", TOY_CONFIG, "--out", tmp_path / "r",
        "--set", "data.max_len=4", "--set", "train.epochs=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        "note: 2 lines longer than data.max_len were cut into overlapping pieces" in result.stderr
    )


def flat_copy(source, run, without_digest: str = ""):
    """A run in the flat layout of earlier versions (plain files, no snapshots), where
    metadata.json itself is unchecked: the checks behind the checksums can be reached."""
    run.mkdir()
    for name in ("config.toml", "tokenizer.json", "model.keras", "weights.npz", "metadata.json"):
        (run / name).write_bytes((source / name).read_bytes())
    if without_digest:
        meta = json.loads((run / "metadata.json").read_text(encoding="utf-8"))
        del meta["files"][without_digest]
        (run / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")


def test_run_from_a_newer_format(tmp_path, toy_run):
    run = tmp_path / "run"
    flat_copy(toy_run, run)
    meta = json.loads((run / "metadata.json").read_text(encoding="utf-8"))
    (run / "metadata.json").write_text(json.dumps(meta | {"format_version": 99}), encoding="utf-8")
    result = invoke("generate", "--model", run, "--seed", "그의")
    one_line_error(
        result, 1, "has run format version 99; this textgen reads up to 1: upgrade textgen"
    )


def test_corrupt_metadata(tmp_path, toy_run):
    run = tmp_path / "run"
    flat_copy(toy_run, run)
    (run / "metadata.json").write_bytes(b"{not json")
    one_line_error(invoke("info", run), 1, "metadata.json is corrupt")


def test_corrupt_keras_model(tmp_path, toy_run):
    from textgen.errors import DataError
    from textgen.rundir import load_keras_model

    run = tmp_path / "run"
    flat_copy(toy_run, run, without_digest="model.keras")
    (run / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=r"model\.keras is not a loadable Keras model"):
        load_keras_model(run)


def test_resume_conflicts_and_missing(tmp_path):
    one_line_error(
        invoke("train", "--resume", tmp_path / "nope"),
        1,
        f"run directory not found: {tmp_path / 'nope'}",
    )
    one_line_error(
        invoke("train", "--resume", tmp_path, "--config", TOY_CONFIG),
        2,
        "--resume takes the run's own config",
    )
    one_line_error(invoke("train"), 2, "give --config FILE (or --resume RUN_DIR)")


def test_existing_run_is_refused(tmp_path, toy_run):
    result = invoke("train", "--config", TOY_CONFIG, "--out", toy_run)
    one_line_error(result, 2, "already exists; pass --overwrite to replace it")


def test_config_folder_and_wrong_type(tmp_path):
    one_line_error(invoke("train", "--config", tmp_path), 2, "is a folder, not a TOML file")
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nepochs = "ten"\n', encoding="utf-8")
    one_line_error(
        invoke("train", "--config", bad), 2, "config key 'train.epochs' must be int, got str 'ten'"
    )


scalars = {
    "data": {"level": st.sampled_from(["word", "char"]), "lowercase": st.booleans(),
             "max_len": st.integers(2, 500), "val_split": st.floats(0, 0.99),
             "corpus": st.text(max_size=30)},
    "model": {"cell": st.sampled_from(["lstm", "gru", "rnn"]), "units": st.integers(1, 4096),
              "dropout": st.floats(0, 0.99)},
    "train": {"learning_rate": st.floats(1e-8, 10), "epochs": st.integers(1, 10**6),
              "seed": st.integers(0, 2**32 - 1)},
}  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    st.fixed_dictionaries(
        {s: st.fixed_dictionaries({}, optional=keys) for s, keys in scalars.items()}
    )
)
def test_config_round_trip(raw):
    if raw["data"].get("level") == "char" and raw["data"].get("lowercase"):
        raw["data"]["lowercase"] = False  # refused at the char level (it would do nothing)
    cfg = config_mod.from_dict(raw)
    assert config_mod.loads(cfg.to_toml()) == cfg
