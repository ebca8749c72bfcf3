"""Behaviour pinned before the redesign ("the house"): per-epoch losses and generated texts of
five runs, and the ids the cache writes for every level, recorded from the code as it was
before any module moved. The same scenarios must give the same numbers (1e-6 relative)
and the same texts and ids after every structural change.

Record (only ever before a refactor, never to make a failing comparison pass):

    TEXTGEN_RECORD_FIXTURES=1 .venv/bin/python -m pytest tests/test_house_fixtures.py

Float results depend on the CPU's kernels: on the CPU kind that recorded them they are
compared at 1e-6, on any other kind at :data:`OTHER_KIND_REL` with the texts that stay the
same across kinds (see there); the ids of the tokenizers are compared exactly everywhere.
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import pytest

from textgen import config as config_mod

from .conftest import ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "house.json"
SHARED = ROOT.parent / "shared" / "data"
RECORD = os.environ.get("TEXTGEN_RECORD_FIXTURES") == "1"
# Hangul composed and decomposed (NFD), CRLF line ends, an emoji with a joiner, a
# character outside the BMP, and a line that is only spaces
TRICKY = (
    "경마장에 있는 말이 뛰고 있다\r\n"
    "\u1100\u1161\u11a8 그의 말이 법이다 😀👩\u200d💻\r\n"
    "  \r\n"
    "가는 말이 고와야 𝔘𝔫𝔦 오는 말이 곱다\n"
    "경마장에 있는 말이 고와야 😀\n"
) * 3


def cpu_kind() -> str:
    """The CPU model and the vector extensions that decide the float kernels."""
    flags, model = set(), platform.processor()
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    kinds = [f for f in ("avx2", "avx512f", "amx_bf16") if f in flags]
    return f"{model} [{' '.join(kinds)}]"


def trained(cfg: config_mod.Config, run: Path, seeds: dict[str, dict]) -> dict:
    """Train ``cfg`` into ``run``; its per-epoch losses and the texts of ``seeds``."""
    from textgen.decoding.generate import Generator, Strategy
    from textgen.rundir import load_bundle
    from textgen.training.loop import train

    result = train(cfg, run, progress=False, log=lambda _m: None)
    bundle = load_bundle(run)
    generator = Generator(bundle.lm, bundle.tokenizer, warn=lambda _m: None)
    texts = {}
    for name, spec in seeds.items():
        spec = dict(spec)
        seed, length = spec.pop("seed"), spec.pop("length")
        rng = spec.pop("rng_seed", None)
        decoded = generator.continue_ids(
            seed, length=length, strategy=Strategy(**spec), rng_seed=rng
        )
        texts[name] = generator.join(seed, decoded.ids[0])
    return {
        "loss": [row["train_loss"] for row in result.history],
        "val_loss": [row["val_loss"] for row in result.history],
        "best_epoch": result.best_epoch,
        "texts": texts,
    }


def head_file(source: Path, out: Path, *, chars: int = 0, lines: int = 0) -> Path:
    text = source.read_text(encoding="utf-8")
    text = text[:chars] if chars else "".join(text.splitlines(keepends=True)[:lines])
    out.write_text(text, encoding="utf-8")
    return out


def run_scenarios(tmp: Path) -> dict:
    """Every pinned scenario, run on the current code."""
    small = ["model.embedding_dim=32", "model.units=64"]
    out: dict = {}
    toy = config_mod.load(ROOT / "configs" / "ko-toy.toml")
    out["ko-toy word/lines"] = trained(
        toy, tmp / "toy",
        {
            "greedy 경마장에": {"seed": "경마장에", "length": 10},
            "greedy 그의": {"seed": "그의", "length": 10},
            "greedy 가는": {"seed": "가는", "length": 10},
            "sample 그의": {"seed": "그의", "length": 10, "name": "sample", "rng_seed": 1},
            "beam 가는": {"seed": "가는", "length": 10, "name": "beam", "beam_width": 3},
        },
    )  # fmt: skip
    shakespeare = head_file(SHARED / "tinyshakespeare" / "input.txt", tmp / "s.txt", chars=200_000)
    cfg = config_mod.load(ROOT / "configs" / "shakespeare-char.toml")
    cfg = config_mod.with_corpus(cfg, shakespeare).with_overrides(
        [*small, "train.save_every_steps=0", "train.learning_rate=0.02"]
    )
    out["shakespeare char/stream 200 KB"] = trained(
        cfg, tmp / "shakespeare",
        {
            "greedy": {"seed": "ROMEO:", "length": 60},
            "sample": {"seed": "ROMEO:", "length": 60, "name": "sample", "rng_seed": 3,
                       "temperature": 0.8},
        },
    )  # fmt: skip
    ptb = head_file(SHARED / "ptb" / "ptb.train.txt", tmp / "ptb.txt", lines=6300)
    ptb_valid = head_file(SHARED / "ptb" / "ptb.valid.txt", tmp / "ptb.valid.txt", lines=300)
    cfg = config_mod.load(ROOT / "configs" / "ptb-small.toml")
    cfg = cfg.with_overrides(
        [*small, "model.embedding_dim=64", "train.epochs=2", "train.save_every_steps=0",
         f"data.corpus={json.dumps(str(ptb))}", f"data.valid_corpus={json.dumps(str(ptb_valid))}"]
    )  # fmt: skip
    out["ptb word/stream carry-state"] = trained(
        cfg, tmp / "ptb",
        {
            "greedy": {"seed": "the company said", "length": 15},
            "sample": {"seed": "the", "length": 15, "name": "sample", "rng_seed": 5},
        },
    )  # fmt: skip
    for name, level in (("ko-constitution-bpe", "subword bpe"), ("ko-constitution-jamo", "jamo")):
        cfg = config_mod.load(ROOT / "configs" / f"{name}.toml").with_overrides(
            [*small, "train.epochs=2", "train.max_minutes=0", "train.learning_rate=0.01"]
        )
        out[f"ko {level}"] = trained(
            cfg, tmp / name,
            {
                "greedy": {"seed": "대한민국은", "length": 30},
                "sample": {"seed": "국민은", "length": 30, "name": "sample", "rng_seed": 7},
            },
        )  # fmt: skip
    out["cache ids"] = cache_ids(tmp)
    return out


LEVELS = {
    "word": {"level": "word"},
    "char": {"level": "char"},
    "jamo": {"level": "char", "normalize": "nfd"},
    "subword bpe": {"level": "subword", "subword_model": "bpe", "vocab_size": 300},
    "subword unigram": {"level": "subword", "subword_model": "unigram", "vocab_size": 300},
    "morpheme": {"level": "morpheme"},
    "word lowercase, no punctuation": {
        "level": "word", "lowercase": True, "strip_punctuation": True,
    },
}  # fmt: skip


def cache_ids(tmp: Path) -> dict:
    """The ids (train and held-out) and vocabulary the id cache writes, for every level."""
    from textgen.config import DataConfig
    from textgen.corpus.cache import prepare_ids

    corpus = tmp / "tricky.txt"
    corpus.write_bytes(TRICKY.encode("utf-8"))
    out = {}
    for name, options in LEVELS.items():
        cfg = DataConfig(corpus=str(corpus), mode="stream", val_split=0.2, **options)
        entry = prepare_ids(cfg)
        out[name] = {
            "vocab": list(entry.tokenizer.vocab.tokens),
            "train": entry.train.read(0, len(entry.train)).tolist(),
            "valid": entry.valid.read(0, len(entry.valid)).tolist() if entry.valid else [],
        }
    return out


SAME_KIND_REL = 1e-6
# Another CPU kind runs other float kernels. Measured on the recording machine with oneDNN
# held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2, the kernels of a CPU without AVX-512), the worst
# relative difference of a loss was 2.2e-3 (ptb carry-state, after 2 epochs of a chaotic
# sum), 1.1e-5 for the toy (at losses near 7e-4) and at most 2e-7 for the other three;
# held to AVX512_CORE (no AMX) every number was identical, and so with oneDNN's custom
# operations off. 1e-2 leaves a factor of about 4.6 over the worst measured, and is still
# far below what a changed step, rate or loss does to these curves.
OTHER_KIND_REL = 1e-2
# Under the AVX2 kernels every best epoch, every greedy and beam text and every text of the
# toy (a converged model) stayed the same; the sample of the undertrained ptb model did not
# (one draw near a boundary of the cumulative probabilities changes the rest). So on
# another kind the sampled texts are compared for the toy only.


def close(a: float, b: float, rel: float = SAME_KIND_REL) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def stable_across_kinds(scenario: str, text: str) -> bool:
    """Whether a pinned text is compared on a CPU kind other than the recording one."""
    return scenario == "ko-toy word/lines" or not text.startswith("sample")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not here (the shared corpora)")
    pytest.importorskip("kiwipiepy")
    got = run_scenarios(tmp_path_factory.mktemp("house"))
    if RECORD:
        FIXTURES.parent.mkdir(exist_ok=True)
        record = {"cpu": cpu_kind(), "scenarios": got}
        FIXTURES.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n")
    return got


def saved() -> dict:
    return json.loads(FIXTURES.read_text(encoding="utf-8"))


RUNS = [
    "ko-toy word/lines", "shakespeare char/stream 200 KB", "ptb word/stream carry-state",
    "ko subword bpe", "ko jamo",
]  # fmt: skip


@pytest.mark.slow  # trains five runs (80 s): make test-slow (CI) and before and after a refactor
@pytest.mark.parametrize("scenario", RUNS)
def test_the_same_losses_and_texts(results, scenario):
    """On every machine: at 1e-6 with every text on the CPU kind that recorded the
    fixtures, at OTHER_KIND_REL with the texts stable across kinds on any other."""
    record = saved()
    same_kind = record["cpu"] == cpu_kind()
    rel = SAME_KIND_REL if same_kind else OTHER_KIND_REL
    want, got = record["scenarios"][scenario], results[scenario]
    for key in ("loss", "val_loss"):
        assert len(got[key]) == len(want[key])
        pairs = enumerate(zip(got[key], want[key], strict=True))
        bad = [(i, a, b) for i, (a, b) in pairs if not close(a, b, rel)]
        assert not bad, f"{key} differs at epochs {bad} (relative tolerance {rel})"
    assert got["best_epoch"] == want["best_epoch"]
    names = [n for n in want["texts"] if same_kind or stable_across_kinds(scenario, n)]
    assert names, "no text compared"
    assert {n: got["texts"][n] for n in names} == {n: want["texts"][n] for n in names}


@pytest.mark.slow  # shares the five runs' fixture: make test-slow (CI)
@pytest.mark.parametrize("level", list(LEVELS))
def test_the_cache_writes_the_same_ids(results, level):
    assert results["cache ids"][level] == saved()["scenarios"]["cache ids"][level]


@pytest.mark.parametrize("level", list(LEVELS))
def test_the_cache_ids_are_the_tokenizers_encode(tmp_path, level):
    """One meaning of "text → ids": what the id cache writes for a stream corpus equals
    the cache's own tokenizer encoding the same training text (line by line with <eos>,
    or the whole text at the char level)."""
    from textgen.config import DataConfig
    from textgen.corpus.cache import prepare_ids
    from textgen.corpus.read import split_blocks, text_blocks

    if level == "morpheme":
        pytest.importorskip("kiwipiepy")
    corpus = tmp_path / "tricky.txt"
    corpus.write_bytes(TRICKY.encode("utf-8"))
    cfg = DataConfig(corpus=str(corpus), mode="stream", val_split=0.0, **LEVELS[level])
    entry = prepare_ids(cfg)
    text = "".join(train for train, _ in split_blocks(text_blocks(corpus), None, cfg.level))
    tok = entry.tokenizer
    if cfg.level == "char":
        expected = tok.encode(text)
    else:
        expected = np.concatenate(
            [tok.encode(line, eos=True) for line in text.splitlines() if line.strip()]
        )
    np.testing.assert_array_equal(entry.train.read(0, len(entry.train)), expected)
