"""What each regularization and schedule key does, one change at a time (BENCHMARKS.md
"Regularization, one key at a time").

The base is configs/ptb-small.toml (2x200 LSTM, SGD, clipping, halving after epoch 4, no
dropout) trained on the first ``--fraction`` of PTB's training lines, so that it overfits
within a few epochs and the keys that fight overfitting show their effect in minutes;
validation is the first ``--valid-lines`` lines of ptb.valid. Every variant changes one
thing from the base and trains for the same number of epochs with the same seed.

    python bench/regularization.py                    # all variants, ~50 min on 2 cores
    python bench/regularization.py base dropout       # some of them
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textgen.errors import DataError  # noqa: E402
from textgen.machine import machine_line  # noqa: E402
from textgen.plot import read_history  # noqa: E402

PTB = ROOT.parent / "shared" / "data" / "ptb"
CONFIG = ROOT / "configs" / "ptb-small.toml"
WORK = Path("/tmp/textgen-bench/regularization")
EPOCHS = 8
DROPOUT = ["model.input_dropout=0.3", "model.dropout=0.3", "model.output_dropout=0.3"]
AWD = ["model.locked_dropout=true", "model.weight_drop=0.3", "model.embedding_dropout=0.1",
       "train.ar=2", "train.tar=1", "train.asgd_nonmono=2"]  # fmt: skip

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "base": ("ptb-small recipe: SGD 20 (=1 summed), clip 0.25, x0.5/epoch after 4", []),
    "dropout": ("+ dropout 0.3 on embeddings, between layers, before logits", DROPOUT),
    "tied": ("+ weight tying", ["model.tie_weights=true"]),
    "no-decay": ("no learning-rate decay", ["train.lr_decay=1.0"]),
    "plateau": (
        "reduce-on-plateau x0.25 instead of the fixed decay",
        ["train.lr_decay=1.0", "train.plateau_factor=0.25"],
    ),
    "adam": ("Adam 0.002 instead of SGD", ["train.optimizer=adam", "train.learning_rate=0.002"]),
    "no-clip": ("no gradient clipping", ["train.clipnorm=0"]),
    "early-stop": (
        f"{2 * EPOCHS} epochs with early stopping, patience 1",
        [f"train.epochs={2 * EPOCHS}", "train.patience=1"],
    ),
    # the regularizers of AWD-LSTM (Merity et al. 2017), each alone, then all together
    "locked": (
        "+ dropout 0.3 as in `dropout`, one mask per sequence (locked / variational)",
        [*DROPOUT, "model.locked_dropout=true"],
    ),
    "weight-drop": ("+ DropConnect 0.3 on the hidden-to-hidden weights", ["model.weight_drop=0.3"]),
    "embedding-drop": (
        "+ embedding dropout 0.1 (whole word types)",
        ["model.embedding_dropout=0.1"],
    ),
    "ar-tar": ("+ activation regularization 2, temporal 1", ["train.ar=2", "train.tar=1"]),
    "asgd": ("+ NT-ASGD, averaging after 2 epochs without improvement", ["train.asgd_nonmono=2"]),
    "awd-all": (
        "all five: locked dropout 0.3, weight drop 0.3, embedding dropout 0.1, AR 2 / TAR 1, "
        "NT-ASGD 2",
        [*DROPOUT, *AWD],
    ),
}


def subset(src: Path, dst: Path, keep: int) -> int:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)[:keep]
    dst.write_text("".join(lines), encoding="utf-8")
    return sum(len(line.split()) + 1 for line in lines)


def run_variant(name: str, sets: list[str], train: Path, valid: Path) -> dict[str, object]:
    out = WORK / "runs" / name
    args = [f"train.epochs={EPOCHS}", f"data.valid_corpus={valid}", *sets]
    cmd = [sys.executable, "-m", "textgen", "train", "--config", str(CONFIG), "--corpus",
           str(train), "--out", str(out), "--overwrite", "-q"]  # fmt: skip
    for item in args:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    try:
        rows = read_history(out)
    except DataError:  # the run failed before its first epoch ended
        rows = []
    result: dict[str, object] = {"name": name, "wall": wall, "epochs": len(rows)}
    if done.returncode != 0:
        result["error"] = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"
    if rows:
        val = [r["val_loss"] for r in rows]
        best = min(range(len(val)), key=val.__getitem__)
        result |= {
            "best_ppl": math.exp(val[best]),
            "best_epoch": best + 1,
            "last_ppl": math.exp(val[-1]),
            "train_ppl_at_best": math.exp(rows[best]["train_loss"]),
        }
    return result


def main() -> None:
    names = sys.argv[1:] or list(VARIANTS)
    print(f"# {time.strftime('%Y-%m-%d')}  {machine_line()}")
    WORK.mkdir(parents=True, exist_ok=True)
    train_lines = 4200  # ~10% of ptb.train.txt
    train, valid = WORK / "ptb.train.10pct.txt", WORK / "ptb.valid.1000.txt"
    n_train = subset(PTB / "ptb.train.txt", train, train_lines)
    n_valid = subset(PTB / "ptb.valid.txt", valid, 1000)
    print(f"train: first {train_lines} lines of ptb.train ({n_train:,} tokens with <eos>); "
          f"valid: 1000 lines of ptb.valid ({n_valid:,} tokens); {EPOCHS} epochs")  # fmt: skip
    print("\n| variant | change from base | best valid ppl (epoch) | valid ppl after last "
          "epoch | train ppl at best | epochs run | wall s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in names:
        what, sets = VARIANTS[name]
        r = run_variant(name, sets, train, valid)
        if "best_ppl" in r:
            cells = (f"{r['best_ppl']:.1f} ({r['best_epoch']})", f"{r['last_ppl']:.1f}",
                     f"{r['train_ppl_at_best']:.1f}")  # fmt: skip
        else:
            cells = ("—", "—", "—")
        note = f" — {r['error']}" if "error" in r else ""
        print(f"| {name} | {what}{note} | {' | '.join(cells)} | {r['epochs']} | {r['wall']:.0f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
