"""Fine-tuning against training from scratch on the same new text (BENCHMARKS.md table).

A char model of ``configs/ko-constitution-char.toml`` is trained on the Korean
Constitution (``../shared/data/ko/constitution.txt``) once. Then, for each budget, three
arms train on the movie reviews of ``data/ko-reviews/reviews.txt`` back to back, with the
same config, corpus, held-out tail (the last 10%), seed and budget:

* ``scratch``: ``textgen train --config configs/ko-constitution-char.toml --corpus REVIEWS``
* ``init-from``: the same plus ``--init-from`` the Constitution run (its 380 characters:
  the reviews' others train as ``<unk>``)
* ``init-from + extend-vocab``: the same plus ``--extend-vocab``

A budget is ``train.max_minutes`` (and ``train.patience = 0``, so every arm uses all of
it); ``--epochs N`` adds a row at a fixed number of epochs, the same steps for every arm
whatever the machine's load. Each arm's best epoch (by held-out loss) is scored here on
the same held-out text with the same rule: bits per character of that NFC text, where a
model that predicts ``<unk>`` is charged ``log2 K`` bits more for spelling it, K being the
characters of the shared alphabet (every character of both corpora) that its vocabulary
lacks; its ``<unk>`` stands for those K evenly. Without that charge a model whose
vocabulary lacks 15% of the text would be scored on an easier task. A second column
scores only the held-out characters the Constitution model knows (every arm predicts a
real token there; no charge at all), and ``textgen eval --valid``'s own bits/char (no
charge) is printed beside them.

    python bench/finetune.py                      # budgets 0.5, 1, 2 minutes; runs/bench-finetune/
    python bench/finetune.py --budgets 0.5 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textgen.machine import machine_line  # noqa: E402

CONFIG = ROOT / "configs" / "ko-constitution-char.toml"
CONSTITUTION = ROOT.parent / "shared" / "data" / "ko" / "constitution.txt"
REVIEWS = ROOT / "data" / "ko-reviews" / "reviews.txt"
ARMS = {
    "scratch": (),
    "init-from": ("INIT",),
    "init-from + extend-vocab": ("INIT", "--extend-vocab"),
}


def textgen(*args: str) -> tuple[str, str]:
    cmd = [sys.executable, "-m", "textgen", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return done.stdout, done.stderr


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fair_bits_per_char(
    run: Path, alphabet: set[str], text: str | None = None, known: set[str] | None = None
) -> tuple[float, float, int, float]:
    """(bits/char with <unk> charged, the share of held-out tokens that are <unk>, K, bits
    per char over the held-out characters in ``known`` only) on ``text``, by default the
    run's own held-out tail. ``known`` is the Constitution model's vocabulary: on those
    characters every arm predicts a real token, so no charge is involved at all."""
    from textgen.corpus.examples import held_out_text
    from textgen.decoding.sampling import log_softmax
    from textgen.rundir import load_bundle

    bundle = load_bundle(run)
    tok, lm, cfg = bundle.tokenizer, bundle.lm, bundle.config
    text = held_out_text(cfg.data) if text is None else text
    missing = len(alphabet - set(tok.vocab.tokens))
    ids = tok.encode_stream(text)
    nll, window = 0.0, cfg.data.seq_len
    tokens = np.array(tok.vocab.tokens, dtype=object)
    is_known = np.array([t in (known or ()) for t in tokens])  # by id
    known_nll, known_n = 0.0, 0
    for start in range(0, len(ids) - 1, window):  # as eval reads a stream model
        chunk = ids[start : start + window + 1]
        logits, _ = lm.run(chunk[None, :-1])
        logp = log_softmax(logits[0])
        targets = chunk[1:]
        picked = logp[np.arange(len(targets)), targets]
        nll -= float(picked.sum())
        unknown = int(np.count_nonzero(targets == tok.vocab.unk_id))
        nll += unknown * math.log(max(missing, 1))
        mask = is_known[targets]
        known_nll -= float(picked[mask].sum())
        known_n += int(mask.sum())
    chars = len(unicodedata.normalize("NFC", text))
    unk = float(np.count_nonzero(ids[1:] == tok.vocab.unk_id)) / max(len(ids) - 1, 1)
    known_bpc = known_nll / known_n / math.log(2) if known_n else math.nan
    return nll / chars / math.log(2), unk, missing, known_bpc


def run_arm(
    arm: str, budget: list[str], parent: Path, out: Path, alphabet: set[str], known: set[str]
) -> dict:
    extra = [str(parent) if a == "INIT" else a for a in ARMS[arm]]
    if extra:
        extra.insert(0, "--init-from")
    before = load()
    t0 = time.perf_counter()
    _, err = textgen(
        "train", "--config", str(CONFIG), "--corpus", str(REVIEWS), "--out", str(out),
        "--overwrite", "--set", "train.patience=0", *budget, *extra,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    fair, unk, missing, known_bpc = fair_bits_per_char(out, alphabet, known=known)
    scores = json.loads(textgen("eval", "--model", str(out), "--valid", "--format", "json")[0])
    state = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    from textgen.rundir import load_state

    info = load_state(out, info_only=True)[2]
    coverage = next((line for line in err.splitlines() if line.startswith("coverage:")), "")
    return {
        "arm": arm,
        "vocab": state["vocab_size"],
        "steps": info["global_step"],
        "best_epoch": state["best_epoch"],
        "train_s": info["elapsed"],
        "wall_s": wall,
        "fair_bpc": fair,
        "known_bpc": known_bpc,
        "eval_bpc": scores["validation"]["bits_per_char"],
        "unk": unk,
        "missing": missing,
        "load": f"{before} -> {load()}",
        "coverage": coverage,
    }


def zero_shot(parent: Path, alphabet: set[str], known: set[str]) -> dict:
    """The Constitution model as it is, scored on the reviews' held-out tail (no step)."""
    from textgen import config as config_mod
    from textgen.corpus.examples import held_out_text

    data = config_mod.with_corpus(config_mod.load(CONFIG), REVIEWS).data
    fair, unk, missing, known_bpc = fair_bits_per_char(parent, alphabet, held_out_text(data), known)
    vocab = len(json.loads((parent / "tokenizer.json").read_text(encoding="utf-8"))["vocab"])
    return {"budget": "0", "arm": "the Constitution model, no step", "vocab": vocab,
            "steps": 0, "train_s": 0.0, "fair_bpc": fair, "known_bpc": known_bpc,
            "eval_bpc": float("nan"),
            "unk": unk, "missing": missing, "load": load()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="*", default=[0.5, 1.0, 2.0])
    parser.add_argument("--epochs", type=int, nargs="*", default=[], help="fixed-epoch rows")
    parser.add_argument("--parent-minutes", type=float, default=3.0)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-finetune")
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}  {machine_line()}  load {load()}", flush=True)
    parent = args.runs / "constitution-char"
    if not (parent / "weights.npz").exists():
        textgen("train", "--config", str(CONFIG), "--out", str(parent), "--overwrite", "-q",
                "--set", f"train.max_minutes={args.parent_minutes}")  # fmt: skip
    alphabet = set(unicodedata.normalize("NFC", REVIEWS.read_text(encoding="utf-8")))
    alphabet |= set(unicodedata.normalize("NFC", CONSTITUTION.read_text(encoding="utf-8")))
    budgets = [(f"{b:g} min", ["--set", f"train.max_minutes={b}", "--set", "train.epochs=1000"])
               for b in args.budgets]  # fmt: skip
    budgets += [(f"{e} epochs", ["--set", f"train.epochs={e}"]) for e in args.epochs]
    known = set(json.loads((parent / "tokenizer.json").read_text(encoding="utf-8"))["vocab"][2:])
    rows = [zero_shot(parent, alphabet, known)]
    for name, budget in budgets:
        for arm in ARMS:
            out = args.runs / f"{name.replace(' ', '')}-{arm.replace(' + ', '+')}"
            row = run_arm(arm, budget, parent, out, alphabet, known) | {"budget": name}
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), file=sys.stderr, flush=True)
    coverage = next((r["coverage"] for r in rows if r.get("coverage")), "")
    print(f"alphabet: {len(alphabet)} characters; {coverage}")
    print()
    print("| budget | arm | vocabulary | steps | training s | held-out bits/char (<unk> "
          "charged) | bits/char on the Constitution's characters | eval --valid bits/char "
          "| held-out <unk> | load (1, 5, 15 min) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ev = f"{r['eval_bpc']:.3f}" if math.isfinite(r["eval_bpc"]) else "-"
        print(
            f"| {r['budget']} | {r['arm']} | {r['vocab']:,} | {r['steps']} | {r['train_s']:.0f} | "
            f"**{r['fair_bpc']:.3f}** | {r['known_bpc']:.3f} | {ev} | {r['unk']:.1%} | "
            f"{r['load']} |"
        )


if __name__ == "__main__":
    main()
