"""Korean tokenization levels compared on the same held-out text (BENCHMARKS.md table).

For each ``configs/ko-constitution-LEVEL.toml``: train it with ``textgen train``, score
the Constitution's held-out 10% and Korean text of another kind (``data/ko-reviews``: Naver
movie reviews, CC0) in bits per character of the NFC text (``textgen eval``'s yardstick),
each next to a unigram model fitted to the same training text and scored on the same
tokens (add-one smoothing, ``<unk>`` charged what each model gives it:
:func:`textgen.evaluate.evaluate_unigram`), with the share of the bits spent on ``<unk>``;
and sample three continuations of "대한민국은". Prints a Markdown table and the samples.

    python bench/ko_levels.py                 # all levels, runs under runs/bench-ko/
    python bench/ko_levels.py jamo char       # some of them
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textgen.corpus.examples import held_out_text, training_text  # noqa: E402
from textgen.corpus.read import read_corpus  # noqa: E402
from textgen.evaluate import evaluate_text, evaluate_unigram  # noqa: E402
from textgen.machine import machine_line  # noqa: E402
from textgen.rundir import load_bundle  # noqa: E402

OTHER = ROOT / "data" / "ko-reviews" / "reviews.txt"  # Korean of another kind (CC0 1.0)

LEVELS = ("word", "char", "jamo", "bpe", "unigram", "morpheme")
SEED = "대한민국은"


def textgen(*args: str) -> str:
    cmd = [sys.executable, "-m", "textgen", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return done.stdout


def loose_jamo(text: str) -> int:
    return sum(0x1100 <= ord(c) <= 0x11FF for c in text)


def run_level(level: str, runs: Path) -> dict[str, object]:
    config = ROOT / "configs" / f"ko-constitution-{level}.toml"
    run_dir = runs / level
    t0 = time.perf_counter()
    textgen("train", "--config", str(config), "--out", str(run_dir), "--overwrite", "--quiet")
    wall = time.perf_counter() - t0
    with open(run_dir / "history.csv", encoding="utf-8") as fh:
        history = list(csv.DictReader(fh))
    bundle = load_bundle(run_dir)
    train_text = training_text(bundle.config.data)
    texts = {"held": held_out_text(bundle.config.data), "other": read_corpus(OTHER)[0]}
    scores = {}
    for name, text in texts.items():
        scores[name] = evaluate_text(bundle, text)
        scores[f"{name} unigram"] = evaluate_unigram(bundle, train_text, text)
    valid = scores["held"]
    vocab = len(json.loads((run_dir / "tokenizer.json").read_text(encoding="utf-8"))["vocab"])
    samples = textgen(
        "generate", "--model", str(run_dir), "--seed", SEED, "--length", "60",
        "--strategy", "sample", "--temperature", "0.7", "-n", "3", "--rng-seed", "1",
    ).splitlines()  # fmt: skip
    return {
        "level": level,
        "vocab": vocab,
        "epochs": len(history),
        "train_minutes": float(history[-1]["elapsed"]) / 60,
        "wall_minutes": wall / 60,
        "tokens": valid.tokens,
        "bits_per_char": valid.bits_per_char,
        "oov_rate": valid.oov_rate,
        "scores": scores,
        "samples": samples,
        "loose_jamo": sum(loose_jamo(s) for s in samples),
    }


def main() -> None:
    levels = sys.argv[1:] or list(LEVELS)
    print(f"# {time.strftime('%Y-%m-%d')}  {machine_line()}  load {os.getloadavg()}")
    runs = ROOT / "runs" / "bench-ko"
    # a fresh id cache: one kept from older code would hand back its tokenizer (the cache
    # key is the corpus and the settings, not the code that fitted the tokenizer)
    cache = runs / f"cache-{os.getpid()}"  # one per run of the bench, removed at its end
    os.environ["TEXTGEN_CACHE"] = str(cache)
    rows = []
    try:
        for level in levels:
            row = run_level(level, runs)
            rows.append(row)
            print(f"{level}: {row['bits_per_char']:.3f} bits/char", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"# load average at the end: {os.getloadavg()}")
    print(
        "| level | vocabulary | epochs | training min | held-out bits/char | unigram | "
        "reviews bits/char | unigram | beats it | reviews <unk> bits/char (model, unigram) "
        "| reviews OOV |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        sc = r["scores"]
        held, held_u, other, other_u = (
            sc[k] for k in ("held", "held unigram", "other", "other unigram")
        )
        print(
            f"| {r['level']} | {r['vocab']:,} | {r['epochs']} | {r['train_minutes']:.2f} | "
            f"{held.bits_per_char:.3f} | {held_u.bits_per_char:.3f} | "
            f"{other.bits_per_char:.3f} | {other_u.bits_per_char:.3f} | "
            f"{'yes' if other.bits_per_char < other_u.bits_per_char else '**no**'} | "
            f"{other.unknown_bits_per_char:.3f}, {other_u.unknown_bits_per_char:.3f} | "
            f"{other.oov_rate:.1%} |"
        )
    print()
    for r in rows:
        print(f"**{r['level']}** (loose jamo in samples: {r['loose_jamo']})")
        for sample in r["samples"]:
            print(f"- {sample}")
        print()


if __name__ == "__main__":
    main()
