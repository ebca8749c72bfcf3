"""Corpora larger than memory: ``textgen prepare`` throughput and peak memory, and what a
huge corpus costs training in memory (BENCHMARKS.md "Preparing large corpora").

1. Writes a synthetic corpus of ``--mb`` MB (tiny Shakespeare repeated) and a 2 MB one.
2. ``textgen prepare`` on the big one at the char and the word level, each in a fresh
   process with an empty cache: MB/s and the process' peak RSS (``wait4``'s ru_maxrss).
3. ``textgen train`` on the big and on the small corpus for the same short time budget
   (``train.max_minutes``) from the prepared cache: the peak RSS of each and their ratio.

    python bench/prepare.py                  # 200 MB, work files under /tmp/textgen-bench
    python bench/prepare.py --mb 50 --train-seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textgen.machine import machine_line  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CONFIG = ROOT / "configs" / "shakespeare-char.toml"


def synthetic(path: Path, megabytes: float) -> None:
    """Tiny Shakespeare repeated until the file holds ``megabytes`` MB."""
    if path.is_file() and path.stat().st_size >= megabytes * 1e6:
        return
    text = SHAKESPEARE.read_bytes()
    with path.open("wb") as f:
        written = 0
        while written < megabytes * 1e6:
            f.write(text)
            written += len(text)


def run(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``textgen ARGS``: (wall seconds, peak RSS in MB from the child's rusage, stdout)."""
    cmd = [sys.executable, "-m", "textgen", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return wall, usage.ru_maxrss / 1024, out


def main() -> None:
    parser = argparse.ArgumentParser(description="textgen prepare on a large corpus: MB/s, RSS")
    parser.add_argument("--mb", type=float, default=200.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/textgen-bench"))
    parser.add_argument("--train-seconds", type=float, default=30.0)
    opts = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}  {machine_line()}")
    opts.work.mkdir(parents=True, exist_ok=True)
    big, small = opts.work / f"shakespeare-{opts.mb:g}mb.txt", opts.work / "shakespeare-2mb.txt"
    synthetic(big, opts.mb)
    synthetic(small, 2.0)
    size_mb = big.stat().st_size / 1e6
    print(f"corpus: {big} ({size_mb:.1f} MB); small: {small} ({small.stat().st_size / 1e6:.1f} MB)")

    rows = []
    for level in ("char", "word"):
        cache = opts.work / f"cache-{level}"
        shutil.rmtree(cache, ignore_errors=True)
        env = dict(os.environ, TEXTGEN_CACHE=str(cache))
        sets = ["--set", f"data.level={level}", "--set", "data.val_split=0.0"]
        wall, rss, out = run(
            ["prepare", "--config", str(CONFIG), "--corpus", str(big), *sets, "-q",
             "--format", "json"], env)  # fmt: skip
        info = json.loads(out)
        rows.append((level, size_mb / wall, wall, rss, info))
        print(
            f"prepare {level}: {wall:.1f} s, {size_mb / wall:.1f} MB/s (command wall time), "
            f"{info['mb_per_s']} MB/s (tokenizing pass), peak RSS {rss:.0f} MB, "
            f"vocab {info['vocab_size']}, {info['train_tokens']:,} tokens ({info['id_dtype']})"
        )

    env = dict(os.environ, TEXTGEN_CACHE=str(opts.work / "cache-char"))
    peaks = {}
    for name, corpus in (("2 MB", small), (f"{size_mb:.0f} MB", big)):
        out_dir = opts.work / f"run-{name.replace(' ', '')}"
        minutes = f"train.max_minutes={opts.train_seconds / 60:.4f}"
        sets = ["--set", "data.val_split=0.0", "--set", minutes, "--set", "train.epochs=1"]
        wall, rss, _ = run(
            ["train", "--config", str(CONFIG), "--corpus", str(corpus), "--out", str(out_dir),
             "--overwrite", "-q", *sets], env)  # fmt: skip
        peaks[name] = rss
        print(f"train on {name}: peak RSS {rss:.0f} MB ({wall:.0f} s command wall time)")
    small_rss, big_rss = peaks.values()
    print(f"training peak RSS ratio, big / small corpus: {big_rss / small_rss:.3f}")

    print("\n| level | corpus MB | wall s | MB/s | peak RSS MB | vocab | tokens | id dtype |")
    print("|---|---|---|---|---|---|---|---|")
    for level, mbs, wall, rss, info in rows:
        print(
            f"| {level} | {size_mb:.0f} | {wall:.1f} | {mbs:.1f} | {rss:.0f} | "
            f"{info['vocab_size']:,} | {info['train_tokens']:,} | {info['id_dtype']} |"
        )


if __name__ == "__main__":
    main()
