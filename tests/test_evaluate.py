"""textgen eval against cross-entropies computed by hand."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from textgen import config as config_mod
from textgen.cli import main
from textgen.decoding.numpy_lm import NumpyLM, RNNWeights
from textgen.evaluate import evaluate_text
from textgen.rundir import Bundle
from textgen.text import fit_tokenizer

PROBS = {"<pad>": 0.05, "<unk>": 0.05, "<eos>": 0.3, "a": 0.2, "b": 0.4}


def constant_bundle(mode: str) -> Bundle:
    """A model whose next-token distribution is PROBS whatever the input."""
    tok = fit_tokenizer(["b b a"], "word", eos=True)
    assert tok.vocab.tokens == ("<pad>", "<unk>", "<eos>", "b", "a")
    vocab, units = len(tok.vocab), 3
    layer = RNNWeights(np.zeros((2, 4 * units)), np.zeros((units, 4 * units)), np.zeros(4 * units))
    bias = np.log([PROBS[t] for t in tok.vocab.tokens])
    lm = NumpyLM("lstm", np.zeros((vocab, 2)), [layer], np.zeros((units, vocab)), bias)
    cfg = config_mod.Config().with_overrides([f'data.mode="{mode}"'])
    return Bundle(None, cfg, tok, lm, {})


def test_stream_mode_by_hand():
    result = evaluate_text(constant_bundle("stream"), "a b\nb\n")
    # stream: a b <eos> b <eos>; predicted: b <eos> b <eos>
    nll = -(2 * math.log(PROBS["b"]) + 2 * math.log(PROBS["<eos>"]))
    assert result.tokens == 4 and result.characters == 6
    assert result.nll == pytest.approx(nll, abs=1e-5)
    assert result.cross_entropy == pytest.approx(nll / 4, abs=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / 4), rel=1e-5)
    assert result.bits_per_char == pytest.approx(nll / math.log(2) / 6, abs=1e-5)
    assert result.oov_rate == 0


def test_lines_mode_by_hand_with_unknown_words():
    result = evaluate_text(constant_bundle("lines"), "a b\nb c\n")
    # each line alone: (a) b <eos> | (b) <unk> <eos>
    nll = -(math.log(PROBS["b"]) + 2 * math.log(PROBS["<eos>"]) + math.log(PROBS["<unk>"]))
    assert result.tokens == 4
    assert result.nll == pytest.approx(nll, abs=1e-5)
    assert result.unknown == 1 and result.oov_rate == pytest.approx(0.25)


def test_eval_cli(toy_run, tmp_path):
    text = tmp_path / "held.txt"
    text.write_text("그의 말이 법이다\n", encoding="utf-8")
    out = CliRunner().invoke(main, ["eval", "--model", str(toy_run), str(text), "--format", "json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)[str(text)]
    assert result["tokens"] == 3 and result["oov_rate"] == 0
    assert 0 <= result["cross_entropy"] < 0.1  # the toy model has learned this line
    out = CliRunner().invoke(main, ["eval", "--model", str(toy_run), str(text)])
    assert out.stdout.startswith(f"{text}: 3 tokens, cross-entropy ")
    missing = CliRunner().invoke(
        main, ["eval", "--model", str(toy_run), str(tmp_path / "none.txt")]
    )
    assert missing.exit_code == 1 and "corpus not found" in missing.stderr


def test_eval_valid_reproduces_the_training_validation_loss(tmp_path):
    """Blank lines are text too, and a window-trained model is scored in its windows."""
    from textgen.corpus.examples import held_out_text
    from textgen.evaluate import evaluate_text
    from textgen.rundir import load_bundle
    from textgen.training.loop import train

    from .conftest import small_config

    corpus = tmp_path / "play.txt"
    corpus.write_text("ROMEO:\nO she doth teach\n\nJULIET:\ngood night\n\n" * 30, encoding="utf-8")
    cfg = small_config(
        corpus,
        data={"level": "char", "mode": "stream", "seq_len": 12, "val_split": 0.2},
        train={"epochs": 1, "jit_compile": False},
    )
    result = train(cfg, tmp_path / "run", progress=False, log=lambda _m: None)
    bundle = load_bundle(tmp_path / "run")
    held = held_out_text(bundle.config.data)
    scored = evaluate_text(bundle, held)
    assert scored.characters == len(held)  # blank lines and newlines counted
    # training scores whole windows only; the eval also scores the short last window
    assert abs(scored.cross_entropy - result.history[0]["val_loss"]) < 0.02
