"""Fine-tuning: ``textgen train --init-from RUN [--extend-vocab]``.

The vocabulary growth (text/vocab), the rows (model/grow), the config merge and the
coverage line as units; then real runs: a fine-tuning run starts from the parent's weights
exactly (an SGD step of 1e-30 leaves every weight as it was, so the child's weights are
the parent's, or the grown ones), records its parent, keeps it over an exact --resume, and
every reader (numpy decoder, eval, generate, info, a later --init-from) takes the larger
model; every level and both modes; and each bad input as one line with nothing written.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from textgen import config as config_mod
from textgen import rundir
from textgen.cli import main
from textgen.errors import UsageError
from textgen.model.grow import grow_arrays
from textgen.text import fit_tokenizer
from textgen.text.vocab import EOS, PAD, UNK, Coverage, Vocab
from textgen.training import finetune
from textgen.training.loop import train

from .conftest import TOY_CONFIG, small_config

NEW_TEXT = "오늘 말이 뛰고 있다\n그의 새 말이 곱다\n새 말이 오늘 뛴다\n"  # 새, 오늘, 뛴다 are new
CHAR_A = "가나다라 마바사\n가나다 라마바사아\n" * 6
CHAR_B = "가나다 자차카\n타파하 가나\n" * 6  # 자 차 카 타 파 하 are new


def run_cli(*args: str) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result: object) -> str:
    """The single error line of a refused command (exit 1 or 2, no traceback)."""
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def weights(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "weights.npz") as data:
        return {k: data[k] for k in data.files}


def write_config(path: Path, corpus: Path, **sections: dict) -> Path:
    """A config file over ``corpus`` (no held-out part) with the keys of ``sections``."""
    sections = {"data": {"corpus": str(corpus), "val_split": 0.0} | sections.get("data", {})} | {
        k: v for k, v in sections.items() if k != "data"
    }
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {config_mod._toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- the vocabulary -------------------------------------------------------------------------
def test_extended_keeps_old_ids_and_orders_new_by_count():
    old = Vocab([PAD, UNK, EOS, "a", "b"])
    counts = Counter({"b": 9, "x": 1, "y": 3, EOS: 4, "z": 3, UNK: 2})
    grown = old.extended(counts)
    assert grown.tokens == (PAD, UNK, EOS, "a", "b", "y", "z", "x")  # ties: first seen
    assert old.extended(counts, min_freq=2).tokens[5:] == ("y", "z")
    assert old.extended(counts, max_size=6).tokens[5:] == ("y",)
    assert old.extended(counts, max_size=4).tokens == old.tokens  # already past the bound


@settings(max_examples=60, deadline=None)
@given(
    old=st.lists(st.text("abcdef", min_size=1, max_size=2), unique=True, max_size=8),
    new=st.lists(st.text("abcdefgh", min_size=1, max_size=2), max_size=40),
    min_freq=st.integers(1, 3),
    max_size=st.integers(0, 20),
)
def test_extended_property(old, new, min_freq, max_size):
    vocab = Vocab([PAD, UNK, *old])
    counts = Counter(new)
    grown = vocab.extended(counts, max_size=max_size, min_freq=min_freq)
    assert grown.tokens[: len(vocab)] == vocab.tokens  # every old id kept
    added = grown.tokens[len(vocab) :]
    assert all(counts[t] >= min_freq and t not in vocab for t in added)
    assert not max_size or len(grown) <= max(max_size, len(vocab))
    eligible = {t for t, n in counts.items() if n >= min_freq and t not in vocab}
    if not max_size:
        assert set(added) == eligible
    assert [counts[t] for t in added] == sorted((counts[t] for t in added), reverse=True)


def test_coverage_counts_missing_tokens():
    tok = fit_tokenizer(["a b c"], "word", eos=True)
    cov = tok.coverage(["a x y x", "b x z"])
    assert (cov.total, cov.missing_total, cov.most_common(2)) == (7, 5, [("x", 3), ("y", 1)])
    assert cov.missing_fraction == pytest.approx(5 / 7)
    assert Coverage(0).missing_fraction == 0.0


def test_char_and_jamo_grow_and_encode_old_text_the_same():
    for normalize in ("nfc", "nfd"):
        tok = fit_tokenizer(["말이 뛰고"], "char", eos=False, normalize=normalize)
        grown = tok.grown(tok.coverage(["새 말이 곱다"]))
        assert grown.vocab.tokens[: len(tok.vocab)] == tok.vocab.tokens
        assert np.array_equal(grown.encode("말이 뛰고"), tok.encode("말이 뛰고"))
        assert grown.decode(grown.encode("새 말이 곱다")) == "새 말이 곱다"
        assert (grown.level, grown.normalize) == ("char", normalize)


def test_subword_and_morpheme_say_why_they_cannot_grow():
    from textgen.text.morpheme import MorphemeTokenizer

    sub = fit_tokenizer(["경마장에 있는 말이 뛰고 있다"] * 3, "subword", eos=True, vocab_size=300)
    with pytest.raises(UsageError, match=r"sentencepiece model .* is fixed.*byte pieces"):
        sub.grown(Coverage(1, Counter({"x": 1})))
    morph = MorphemeTokenizer("morpheme", Vocab([PAD, UNK, EOS, "말/NNG"]))
    with pytest.raises(UsageError, match="cannot grow a morpheme vocabulary"):
        morph.grown(Coverage(1, Counter({"새/NNG": 1})))


# -- the rows -------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [False, True])
def test_grow_arrays_keeps_old_rows_and_starts_new_ones_at_the_mean(tied):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 4)).astype(np.float32)
    kernel = emb.T.copy() if tied else rng.normal(size=(4, 6)).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    arrays = {"cell": np.array("lstm"), "embedding": emb, "out_kernel": kernel, "out_bias": bias}
    arrays["rnn_0_kernel"] = np.ones(2)
    grown = grow_arrays(arrays, 9, specials=3, tied=tied)
    assert np.array_equal(grown["embedding"][:6], emb)
    assert np.array_equal(grown["out_kernel"][:, :6], kernel)
    assert np.array_equal(grown["out_bias"][:6], arrays["out_bias"])
    assert np.array_equal(grown["rnn_0_kernel"], arrays["rnn_0_kernel"])
    for row in range(6, 9):
        assert np.allclose(grown["embedding"][row], emb[3:].mean(0))
        assert np.allclose(grown["out_kernel"][:, row], kernel[:, 3:].mean(1))
        assert np.isclose(grown["out_bias"][row], arrays["out_bias"][3:].mean())
    if tied:
        assert np.array_equal(grown["out_kernel"], grown["embedding"].T)
    with pytest.raises(ValueError, match="only grows"):
        grow_arrays(arrays, 5, specials=3, tied=tied)


# -- real runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def new_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("new") / "new.txt"
    path.write_text(NEW_TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def still(tmp_path_factory, toy_run: Path, new_corpus: Path) -> dict[str, Path]:
    """Two fine-tunings of the toy run that cannot move a weight (SGD at 1e-30): one
    keeping the vocabulary, one extending it; both through the command line."""
    out = tmp_path_factory.mktemp("still")
    cfg = write_config(
        out / "new.toml", new_corpus,
        train={"epochs": 1, "batch_size": 4, "optimizer": "sgd", "learning_rate": 1e-30,
               "clipnorm": 0.0, "jit_compile": False},
    )  # fmt: skip
    runs = {}
    for name, extra in (("kept", ()), ("grown", ("--extend-vocab",))):
        result = run_cli("train", "--config", cfg, "--init-from", toy_run,
                         "--out", out / name, *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        runs[name] = out / name
        runs[f"{name}_stderr"] = result.stderr
    return runs


def test_a_fine_tuning_starts_from_the_parents_weights(toy_run, still):
    parent, kept = weights(toy_run), weights(still["kept"])
    assert kept.keys() == parent.keys()
    for key in parent:
        assert np.array_equal(kept[key], parent[key]), key
    assert rundir.run_tokenizer(still["kept"]) == rundir.run_tokenizer(toy_run)


def test_extend_vocab_keeps_old_ids_and_rows_exactly(toy_run, still):
    old_tok, new_tok = rundir.run_tokenizer(toy_run), rundir.run_tokenizer(still["grown"])
    n = len(old_tok.vocab)
    assert new_tok.vocab.tokens[:n] == old_tok.vocab.tokens
    assert set(new_tok.vocab.tokens[n:]) == {"새", "오늘", "뛴다"}
    parent, grown = weights(toy_run), weights(still["grown"])
    assert np.array_equal(grown["embedding"][:n], parent["embedding"])
    assert np.array_equal(grown["out_kernel"][:, :n], parent["out_kernel"])
    assert np.array_equal(grown["out_bias"][:n], parent["out_bias"])
    mean = parent["embedding"][3:].mean(0)
    assert np.allclose(grown["embedding"][n:], mean[None, :].repeat(3, 0))
    for key in parent:
        if key.startswith("rnn_"):
            assert np.array_equal(grown[key], parent[key])


def test_the_parent_is_recorded_and_shown(toy_run, still):
    meta = json.loads((still["grown"] / "metadata.json").read_text())
    parent_meta = json.loads((toy_run / "metadata.json").read_text())
    record = meta["parent"]
    assert record["path"] == str(toy_run.resolve())
    assert record["run_id"] == parent_meta["run_id"] and len(meta["run_id"]) == 32
    assert record["run_id"] != meta["run_id"]
    assert record["weights_sha256"] == rundir.sha256_file(toy_run / "weights.npz")
    assert record["vocab_size"] == len(rundir.run_tokenizer(toy_run).vocab)
    assert record["extended_to"] == meta["vocab_size"]
    info = run_cli("info", still["grown"])
    assert info.exit_code == 0
    line = next(x for x in info.output.splitlines() if x.startswith("parent:"))
    assert line == (
        f"parent: {toy_run.resolve()} (run id {record['run_id']}, weights sha256 "
        f"{record['weights_sha256'][:12]}), vocabulary extended {record['vocab_size']} -> "
        f"{record['extended_to']}"
    )
    assert "vocabulary 14 kept" in run_cli("info", still["kept"]).output


def test_coverage_is_printed_before_the_first_step(toy_run, still):
    err = still["kept_stderr"].splitlines()
    assert err[0] == (
        f"coverage: {toy_run}'s vocabulary (14 tokens) lacks 5 of the new corpus' 12 "
        "training tokens (41.67%, 3 distinct); most frequent: '오늘' 2, '새' 2, '뛴다' 1"
    )
    assert err[1].startswith("warning: 41.67% of the new corpus is not in")
    assert err[2].startswith("epoch 1/1")
    grown = still["grown_stderr"].splitlines()
    assert grown[1].startswith("--extend-vocab: 14 -> 17 tokens (3 new, ids 14-16; min_freq 1")
    assert grown[1].endswith("; 0 tokens (0.00%) stay <unk>")
    assert not any(line.startswith("warning") for line in grown)


def test_every_reader_takes_the_larger_model(still, new_corpus, tmp_path):
    grown = still["grown"]
    bundle = rundir.load_bundle(grown)
    assert bundle.lm.vocab_size == len(bundle.tokenizer.vocab) == 17
    logits, _ = bundle.lm.run(bundle.tokenizer.encode("새 말이")[None, :])
    assert logits.shape[-1] == 17 and np.isfinite(logits).all()
    gen = run_cli("generate", "--model", grown, "--seed", "새", "--length", "3")
    assert gen.exit_code == 0 and gen.output.startswith("새")
    ev = run_cli("eval", "--model", grown, new_corpus)
    assert ev.exit_code == 0 and "OOV 0.00%" in ev.output
    keras_model = rundir.load_keras_model(grown)
    ids = bundle.tokenizer.encode("새 말이 곱다")[None, :]
    assert np.allclose(np.asarray(keras_model(ids))[0, -1], bundle.lm.run(ids)[0][0, -1], atol=1e-5)
    # a later --init-from of the larger model, and a grandchild that grows it again
    (tmp_path / "more.txt").write_text("새 말이 달린다\n" * 2, encoding="utf-8")
    cfg = write_config(tmp_path / "more.toml", tmp_path / "more.txt",
                       train={"epochs": 1, "batch_size": 4, "jit_compile": False})  # fmt: skip
    again = run_cli("train", "-q", "--config", cfg, "--init-from", grown, "--extend-vocab",
                    "--out", tmp_path / "again")  # fmt: skip
    assert again.exit_code == 0, again.output
    tok = rundir.run_tokenizer(tmp_path / "again")
    assert tok.vocab.tokens[:17] == bundle.tokenizer.vocab.tokens
    assert tok.vocab.tokens[17:] == ("달린다",)
    assert rundir.load_bundle(tmp_path / "again").metadata["parent"]["path"] == str(grown.resolve())


def test_resume_of_a_fine_tuning_is_exact_and_keeps_the_parent(toy_run, new_corpus, tmp_path):
    cfg = write_config(tmp_path / "ft.toml", new_corpus,
                       train={"epochs": 2, "batch_size": 2, "jit_compile": False},
                       model={"output_dropout": 0.2})  # fmt: skip
    args = ("train", "-q", "--config", cfg, "--init-from", toy_run, "--extend-vocab")
    assert run_cli(*args, "--out", tmp_path / "straight").exit_code == 0
    first = run_cli(*args, "--out", tmp_path / "split", "--set", "train.epochs=1")
    assert first.exit_code == 0, first.output
    resumed = run_cli("train", "-q", "--resume", tmp_path / "split", "--set", "train.epochs=2")
    assert resumed.exit_code == 0, resumed.output
    a, b = rundir.load_state(tmp_path / "straight"), rundir.load_state(tmp_path / "split")
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        assert np.array_equal(x, y)
    assert a[1][0] == a[2]["global_step"]  # a fresh optimizer: its step count is this run's
    meta = json.loads((tmp_path / "split" / "metadata.json").read_text())
    straight = json.loads((tmp_path / "straight" / "metadata.json").read_text())
    assert meta["parent"] == straight["parent"]
    assert b[2]["parent"]["weights_sha256"] == rundir.sha256_file(toy_run / "weights.npz")
    assert config_mod.load(tmp_path / "split" / "config.toml").model.output_dropout == 0.2


LEVELS = [  # (the parent's data keys, the fine-tuning's data keys, --extend-vocab)
    ({"level": "char", "mode": "lines"}, {"mode": "stream", "seq_len": 8}, True),
    ({"level": "char", "normalize": "nfd", "mode": "stream", "seq_len": 8},
     {"mode": "stream", "seq_len": 8}, True),
    ({"level": "subword", "mode": "lines", "vocab_size": 300}, {"mode": "lines"}, False),
    ({"level": "morpheme", "mode": "lines"}, {"mode": "lines"}, False),
]  # fmt: skip


def fine_tune(parent: Path, corpus: Path, out: Path, data: dict, extend: bool, seed: str) -> object:
    """``textgen train --init-from parent`` on ``corpus`` for one epoch (checked: exit 0,
    the coverage line first, old ids kept, every reader takes the result)."""
    cfg = write_config(out.with_suffix(".toml"), corpus, data=data,
                       train={"epochs": 1, "batch_size": 4, "jit_compile": False})  # fmt: skip
    extra = ("--extend-vocab",) if extend else ()
    result = run_cli("train", "--config", cfg, "--init-from", parent, "--out", out, *extra)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"coverage: {parent}'s vocabulary")
    old, new = rundir.run_tokenizer(parent), rundir.run_tokenizer(out)
    assert new.vocab.tokens[: len(old.vocab)] == old.vocab.tokens
    assert (len(new.vocab) > len(old.vocab)) == extend
    assert (new.level, new.normalize) == (old.level, old.normalize)
    bundle = rundir.load_bundle(out)
    assert bundle.config.data.mode == data["mode"] and bundle.lm.vocab_size == len(new.vocab)
    ev = run_cli("eval", "--model", out, corpus)
    assert ev.exit_code == 0, ev.output
    gen = run_cli("generate", "--model", out, "--seed", seed, "--length", "3")
    assert gen.exit_code == 0, gen.output
    return result, ev


@pytest.mark.parametrize(
    "parent_data,data,extend", LEVELS, ids=["char", "jamo", "subword", "morpheme"]
)
def test_every_level_and_mode(parent_data, data, extend, tmp_path):
    (tmp_path / "a.txt").write_text(CHAR_A, encoding="utf-8")
    (tmp_path / "b.txt").write_text(CHAR_B, encoding="utf-8")
    parent_cfg = small_config(tmp_path / "a.txt", data=parent_data,
                              train={"epochs": 1, "jit_compile": False})  # fmt: skip
    train(parent_cfg, tmp_path / "parent", progress=False, log=lambda _m: None)
    args = (tmp_path / "parent", tmp_path / "b.txt", tmp_path / "child", data, extend)
    _, ev = fine_tune(*args, seed=CHAR_A.splitlines()[0])
    if extend:
        assert "OOV 0.00%" in ev.output


def test_word_stream_extend_respects_min_freq(toy_run, new_corpus, tmp_path):
    data = {"mode": "stream", "seq_len": 4, "min_freq": 2}
    result, _ = fine_tune(toy_run, new_corpus, tmp_path / "m", data, True, seed="오늘 말이")
    assert rundir.run_tokenizer(tmp_path / "m").vocab.tokens[14:] == ("오늘", "새")
    assert "1 tokens (8.33%) stay <unk>" in result.stderr
    assert "warning: 8.33% of the new corpus still trains as <unk>" in result.stderr


# -- contradictions and bad input -------------------------------------------------------------
def test_a_contradicting_model_or_tokenizer_key_names_both_values(toy_run, new_corpus, tmp_path):
    cfg = write_config(tmp_path / "c.toml", new_corpus, model={"units": 64})
    args = ("--init-from", toy_run, "--out", tmp_path / "o")
    line = one_line(run_cli("train", "--config", cfg, *args))
    assert line == (
        f"error: model.units = 64 ({cfg}) contradicts --init-from {toy_run}, which was "
        "trained with model.units = 32: [model] and tokenizer keys come from the run; "
        "leave model.units out"
    )
    ok = write_config(tmp_path / "same.toml", new_corpus, model={"units": 32})  # same: fine
    line = one_line(run_cli("train", "--config", ok, *args, "--set", "data.level=char"))
    assert line.startswith("error: data.level = 'char' (--set) contradicts --init-from ")
    assert line.endswith("which was trained with data.level = 'word': [model] and tokenizer "
                         "keys come from the run; leave data.level out")  # fmt: skip
    line = one_line(run_cli("train", "--config", ok, *args, "--set", "data.min_freq=2"))
    assert line.endswith("bound the new tokens of --extend-vocab only")
    assert not (tmp_path / "o").exists()


@pytest.fixture
def bad(tmp_path, toy_run, new_corpus):
    cfg = write_config(tmp_path / "b.toml", new_corpus, train={"epochs": 1})
    not_run = tmp_path / "plain"
    not_run.mkdir()
    empty = tmp_path / "empty"  # a run that committed its start but no epoch: no weights
    empty.mkdir()
    rundir.prepare_new(empty, False)
    with rundir.Commit(empty) as commit:
        commit.write_text(rundir.CONFIG, config_mod.load(TOY_CONFIG).to_toml())
        commit.write_text(rundir.TOKENIZER, rundir.run_tokenizer(toy_run).to_json())
    return {"cfg": cfg, "plain": not_run, "empty": empty, "toy": toy_run, "out": tmp_path / "o"}


BAD = [
    (["--init-from", "{plain}"], "error: --init-from {plain}: {plain} is not a textgen run"),
    (["--init-from", "{missing}"], "error: run directory not found: {missing}"),
    (["--init-from", "{empty}"], "error: --init-from {empty}: {empty} has no trained weights "
     "yet (weights.npz is written when an epoch ends); resume it for an epoch first"),
    (["--init-from", "{toy}", "--resume", "{toy}"], "error: --init-from starts a new run and "
     "--resume continues one: a resumed fine-tuning run keeps its parent on its own, so give "
     "--resume alone"),
    (["--extend-vocab"], "error: --extend-vocab grows the vocabulary of --init-from RUN; give "
     "--init-from"),
    (["--init-from", "{toy}", "--out", "{toy}"], "error: --out {toy} is the run --init-from "
     "reads; choose another --out"),
]  # fmt: skip


@pytest.mark.parametrize("args,message", BAD, ids=[m[7:40] for _, m in BAD])
def test_bad_input_is_one_line(bad, args, message):
    names = {k: str(v) for k, v in bad.items()} | {"missing": str(bad["out"].parent / "nope")}
    args = [a.format(**names) for a in args]
    config = [] if "--resume" in args else ["--config", bad["cfg"]]
    out = [] if "--out" in args or "--resume" in args else ["--out", bad["out"]]
    before = sorted(p.name for p in bad["out"].parent.iterdir())
    assert one_line(run_cli("train", *config, *out, *args)) == message.format(**names)
    assert sorted(p.name for p in bad["out"].parent.iterdir()) == before


def test_init_from_needs_a_config(toy_run):
    line = one_line(run_cli("train", "--init-from", toy_run))
    assert line == "error: give --config FILE with --init-from RUN (or --resume RUN_DIR)"


def test_subword_extend_and_stream_char_into_lines_are_refused(tmp_path, new_corpus):
    (tmp_path / "a.txt").write_text(CHAR_A, encoding="utf-8")
    cfg = write_config(tmp_path / "b.toml", new_corpus)
    sub = fit_tokenizer(CHAR_A.splitlines(), "subword", eos=True, vocab_size=300)
    char = fit_tokenizer([CHAR_A], "char", eos=False)
    base = small_config(tmp_path / "a.txt")
    for tok, data, extend, pattern in (
        (sub, {"level": "subword", "vocab_size": 300}, True, "cannot grow a subword"),
        (char, {"level": "char", "mode": "stream"}, False, "has no <eos>, which data.mode"),
    ):
        parent_cfg = config_mod.from_dict(base.to_dict() | {"data": base.to_dict()["data"] | data})
        parent = finetune.Parent(tmp_path, parent_cfg, tok, {}, "", "")
        with pytest.raises(UsageError, match=pattern):
            finetune.merge_config(parent, config_mod.load(cfg), {}, extend=extend)
    assert re.search("byte pieces already cover any character", sub.cannot_grow)


def test_the_benchmarks_scorer_is_evals_plus_the_stated_unk_charge(tmp_path):
    """bench/finetune.py's bits/char: eval's own loss on the held-out tail plus log K nats
    per predicted <unk> (K = alphabet characters the vocabulary lacks), and the column
    over known characters only counts their positions."""
    import importlib.util
    import math

    from textgen.corpus.examples import held_out_text
    from textgen.evaluate import evaluate_text

    from .conftest import ROOT

    spec = importlib.util.spec_from_file_location("bench_finetune", ROOT / "bench" / "finetune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (tmp_path / "a.txt").write_text(CHAR_A + CHAR_B[:15], encoding="utf-8")  # new: 자차카 …
    cfg = small_config(tmp_path / "a.txt", data={"level": "char", "mode": "stream",
                       "seq_len": 8, "val_split": 0.3, "min_freq": 2},
                       train={"epochs": 1, "jit_compile": False})  # fmt: skip
    train(cfg, tmp_path / "run", progress=False, log=lambda _m: None)
    bundle = rundir.load_bundle(tmp_path / "run")
    text = held_out_text(bundle.config.data)
    alphabet = set(CHAR_A + CHAR_B + "xyz")
    known = set(bundle.tokenizer.vocab.tokens[2:])
    scores = bench.fair_bits_per_char(tmp_path / "run", alphabet, known=known)
    fair, unk, missing, known_bpc = scores
    assert missing == len(alphabet - set(bundle.tokenizer.vocab.tokens)) > 0
    ev = evaluate_text(bundle, text)
    assert unk > 0 and ev.unknown > 0
    expected = (ev.nll + ev.unknown * math.log(missing)) / ev.characters / math.log(2)
    assert fair == pytest.approx(expected, rel=1e-6)
    assert known_bpc > 0 and math.isfinite(known_bpc)
