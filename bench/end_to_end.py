"""``textgen train`` end to end against its own training step, in one process run.

The harness rate is the step alone: the trainer's own ``_train_step`` (the step
``textgen train`` runs) over batches already in memory, as ``bench/train_throughput.py``
times it. The end-to-end rate is ``train()`` itself over whole epochs: the input pipeline,
the per-step bookkeeping, validation and every save included, read from history.csv's
``tokens_per_s``, and also the tokens trained over the wall time of the whole call. The
harness is timed before and after the training, so a change of load shows as a spread.

``--profile`` wraps the loop's parts with timers and prints where an epoch's seconds go:
the steps, waiting for the next batch, the saves, validation, and the rest (per-step
Python). The time from the command to the first step is a fresh ``textgen train`` process
(imports, tokenizing, building and compiling included), timed from its start until its
first step returns.

    .venv/bin/python bench/end_to_end.py                       # shakespeare-char, batch 64
    .venv/bin/python bench/end_to_end.py --chars 300000 --epochs 2 --profile
    .venv/bin/python bench/end_to_end.py --config configs/ptb-best-cpu.toml --batch 0 \
        --corpus ../shared/data/ptb/ptb.train.txt --chars 1500000 --epochs 2 --profile
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textgen import config as config_mod  # noqa: E402
from textgen.machine import machine_line  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CHAR_CONFIG = ROOT / "configs" / "shakespeare-char.toml"  # the first-step timings' model


def config_for(args: argparse.Namespace, corpus: Path) -> config_mod.Config:
    """``--config`` (configs/shakespeare-char.toml) over ``corpus``, ``--epochs`` epochs,
    at ``--batch`` when given (the config's own batch size otherwise)."""
    cfg = config_mod.load(args.config)
    batch = [f"train.batch_size={args.batch}"] if args.batch else []
    return cfg.with_overrides(
        [f'data.corpus="{corpus}"', *batch, f"train.epochs={args.epochs}", *args.set]
    )


def harness_rate(cfg: config_mod.Config, prepared, steps: int, warmup: int) -> float:
    """Tokens/s of the trainer's step over in-memory batches (the harness' measure)."""
    from textgen.training.batches import batches
    from textgen.training.loop import Trainer

    run = Trainer(cfg, prepared, Path("/nonexistent"), lambda _m: None)
    rows = [(x, y) for _, x, y in batches(prepared.train, cfg.train.batch_size, 7, 1, 0)]
    rows = (rows * (1 + (steps + warmup) // len(rows)))[: steps + warmup]
    for x, y in rows[:warmup]:
        float(run._train_step(x, y)[0])
    tokens = 0.0
    start = time.perf_counter()
    for x, y in rows[warmup:]:
        loss_sum, count, _, _ = run._train_step(x, y)
        float(loss_sum)
        tokens += float(count)
    return tokens / (time.perf_counter() - start)


class Profile:
    """Timers around the loop's parts (``--profile``): seconds per part, summed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.undo: list = []

    def restore(self) -> None:
        """Put every wrapped function back (the harness after the training is plain)."""
        for owner, name, original in reversed(self.undo):
            setattr(owner, name, original)
        self.undo.clear()

    def wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)
        self.undo.append((owner, name, original))

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.counts[label] += 1

        setattr(owner, name, timed)

    def wrap_stream(self, module: object) -> None:
        """Time each ``next()`` of the read-ahead pipeline (waiting for a batch)."""
        original = module.prefetched
        self.undo.append((module, "prefetched", original))
        profile = self

        def prefetched(*args, **kwargs):
            it = original(*args, **kwargs)
            while True:
                start = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    profile.seconds["next batch"] += time.perf_counter() - start
                    profile.counts["next batch"] += 1
                yield item

        module.prefetched = prefetched


def end_to_end(cfg: config_mod.Config, profile: Profile | None) -> dict[str, float]:
    """Train ``cfg`` into a temporary folder; its history's rates and the wall time."""
    from textgen.training import loop, steps

    if profile is not None:
        profile.wrap_stream(loop)
        profile.wrap(loop.Trainer, "_train_step", "step")
        profile.wrap(loop.Trainer, "save", "save")
        profile.wrap(steps.Steps, "evaluate", "validation")
        profile.wrap(loop.Trainer, "_end_epoch", "epoch end (validation + row)")
        profile.wrap(loop.Trainer, "_train_steps", "epoch steps (all of it)")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = loop.train(cfg, Path(tmp) / "run", progress=False, log=lambda _m: None)
        wall = time.perf_counter() - start
    if profile is not None:
        profile.restore()
    rows = result.history
    trained = sum(r["tokens_per_s"] * r["seconds"] for r in rows)
    return {
        "history_tokens_per_s": rows[-1]["tokens_per_s"],
        "history_all": [r["tokens_per_s"] for r in rows],
        "wall": wall,
        "tokens_over_wall": trained / wall,
        "epoch_seconds": sum(r["seconds"] for r in rows),
    }


FIRST_STEP = r"""
import os, sys, time
start = time.perf_counter()
sys.path.insert(0, {root!r})
def stage(name):
    print(f"STAGE {{name}} {{time.perf_counter() - start:.2f}}", flush=True)
import textgen.training.loop as loop
stage("imports")
prepare, init, original = loop.read_corpus, loop.Trainer.__init__, loop.Trainer._train_step
def prepared(*args, **kwargs):
    out = prepare(*args, **kwargs)
    stage("corpus read and tokenized")
    return out
def built(self, *args, **kwargs):
    init(self, *args, **kwargs)
    stage("model and optimizer built")
def first(self, x, y):
    stage("run folder written, first batch read")
    out = original(self, x, y)
    float(out[0])
    stage("first step done")
    os._exit(0)
loop.read_corpus, loop.Trainer.__init__, loop.Trainer._train_step = prepared, built, first
from textgen.cli import main
sys.argv = ["textgen", "train", "--config", {config!r}, "--corpus", {corpus!r}, "--out",
            {out!r}, "--set", "train.batch_size={batch}"]
main()
"""


def time_to_first_step(corpus: Path, batch: int) -> tuple[float, list[tuple[str, float]]]:
    """Seconds from starting a fresh ``textgen train`` process to its first step's end,
    and the seconds (from the interpreter's start) at which each stage ended."""
    with tempfile.TemporaryDirectory() as tmp:
        code = FIRST_STEP.format(
            root=str(ROOT),
            config=str(CHAR_CONFIG),
            corpus=str(corpus),
            out=str(Path(tmp) / "run"),
            batch=batch,
        )
        env = dict(os.environ, TEXTGEN_CACHE=str(Path(tmp) / "cache"))
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
        )
        seconds = time.perf_counter() - start
    if "first step done" not in proc.stdout:
        raise SystemExit(f"error: the first-step run failed: {proc.stderr.strip()[-500:]}")
    stages = []
    for line in proc.stdout.splitlines():
        if line.startswith("STAGE "):
            name, at = line[6:].rsplit(" ", 1)
            stages.append((name, float(at)))
    return seconds, stages


TORCH_FIRST_STEP = r"""
import time
start = time.perf_counter()
import numpy as np
import torch
text = open({corpus!r}, encoding="utf-8").read()
vocab = sorted(set(text))
index = {{c: i for i, c in enumerate(vocab)}}
ids = np.array([index[c] for c in text[: int(len(text) * 0.9)]], dtype=np.int64)
emb = torch.nn.Embedding(len(vocab), 64)
rnn = torch.nn.LSTM(64, 256, num_layers=2, batch_first=True)
out = torch.nn.Linear(256, len(vocab))
params = [*emb.parameters(), *rnn.parameters(), *out.parameters()]
opt = torch.optim.Adam(params, lr=0.004)
windows = torch.from_numpy(ids[: {batch} * 101].reshape({batch}, 101))
h, _ = rnn(emb(windows[:, :-1]))
logits = out(h)
loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), windows[:, 1:].reshape(-1))
loss.backward()
torch.nn.utils.clip_grad_norm_(params, 5.0)
opt.step()
float(loss)
print(time.perf_counter() - start)
"""


def torch_first_step(corpus: Path, batch: int) -> float | None:
    """The same for twenty lines of PyTorch (read, tokenize, build, one Adam step), or
    None without PyTorch."""
    code = TORCH_FIRST_STEP.format(corpus=str(corpus), batch=batch)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DATA)
    parser.add_argument("--chars", type=int, default=0, help="use the first N characters")
    parser.add_argument("--config", type=Path, default=CHAR_CONFIG)
    parser.add_argument("--batch", type=int, default=64, help="0: the config's own")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="harness steps per timing")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-first-step", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="a config override")
    args = parser.parse_args()
    if not args.corpus.is_file():
        raise SystemExit(f"error: corpus not found: {args.corpus}")

    from textgen.corpus.examples import prepare

    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if args.chars:
            corpus = Path(tmp) / "corpus.txt"
            text = args.corpus.read_text(encoding="utf-8")[: args.chars]
            corpus.write_text(text, encoding="utf-8")
        os.environ.setdefault("TEXTGEN_CACHE", str(Path(tmp) / "cache"))
        cfg = config_for(args, corpus)
        print(machine_line())
        name = args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config
        print(f"config: {name}, batch {cfg.train.batch_size}, {args.epochs} epochs")
        prepared = prepare(cfg.data)
        tokens = prepared.train.num_tokens
        print(f"corpus: {corpus.name}, {tokens:,} training tokens per epoch")
        before = harness_rate(cfg, prepared, args.steps, args.warmup)
        profile = Profile() if args.profile else None
        e2e = end_to_end(cfg, profile)
        after = harness_rate(cfg, prepared, args.steps, args.warmup)
        harness = statistics.mean([before, after])
        # the first-step timings (and their PyTorch twin) are of the char model only
        timed_first = not args.no_first_step and args.config.resolve() == CHAR_CONFIG
        batch = cfg.train.batch_size
        first = time_to_first_step(corpus, batch) if timed_first else None
        torch_first = torch_first_step(corpus, batch) if timed_first else None
        # a cold tokenizer cache above; the corpus' ids are cached for the next command
    spread = f"before {before:,.0f}, after {after:,.0f}"
    print(f"harness step rate     {harness:>9,.0f} tokens/s ({spread})")
    rates = ", ".join(f"{r:,.0f}" for r in e2e["history_all"])
    ratio = e2e["history_tokens_per_s"] / harness
    print(
        f"textgen train         {e2e['history_tokens_per_s']:>9,.0f} tokens/s "
        f"(history.csv, last epoch; all: {rates}) = {ratio:.2f}x the harness"
    )
    over_wall = e2e["tokens_over_wall"] / harness
    print(
        f"  over the whole call {e2e['tokens_over_wall']:>9,.0f} tokens/s "
        f"({e2e['wall']:.1f} s, preparing and building included) = {over_wall:.2f}x"
    )
    if first is None and not args.no_first_step:
        print(f"command to first step: timed for {CHAR_CONFIG.relative_to(ROOT)} only")
    if first is not None:
        seconds, stages = first
        print(f"command to first step {seconds:.1f} s (a fresh process; stages end at:)")
        for name, at in stages:
            print(f"  {at:6.2f} s  {name}")
        if torch_first is not None:
            print(f"PyTorch, the same model, command to first step {torch_first:.1f} s")
    if profile is not None:
        total = e2e["epoch_seconds"]
        print(f"where the {total:.1f} s of the epochs went (history.csv's seconds):")
        for label, secs in sorted(profile.seconds.items(), key=lambda kv: -kv[1]):
            print(
                f"  {label:30} {secs:8.2f} s  {secs / total:6.1%}  ({profile.counts[label]} calls)"
            )
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; numpy {np.__version__}")


if __name__ == "__main__":
    main()
