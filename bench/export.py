"""Export: sizes and times, greedy equality, and LiteRT step latency against numpy.

Two runs, exported in this process through :func:`textgen.export.export_run` (the code
``textgen export`` runs) as a SavedModel, a float32 LiteRT model and a dynamic-int8 one:

* the Korean toy (word level, 1×32 LSTM): ``runs/ko-toy`` when it exists, else trained
  here from ``configs/ko-toy.toml`` (seconds);
* a 2×256 char LSTM (embedding 64, the tiny Shakespeare sizes of
  ``configs/shakespeare-char.toml``), **trained** here for ``--train-seconds`` (default
  45 s, ``train.max_minutes``) on ``../shared/data/tinyshakespeare/input.txt``, so that
  its held-out bits/char mean something.

Reported:

* each export's size on disk and the seconds it took;
* greedy equality: the SavedModel's ``generate`` (temperature 0) against ``Generator``
  (what ``textgen generate`` runs) for several seeds, and 50 greedy LiteRT steps (float
  and int8) against the numpy decoder's tokens;
* held-out bits/char of the char model's validation text (the last 10% of the corpus,
  its first ``--eval-chars`` characters, in 16 parallel slices each started from the zero
  state) with the numpy decoder, LiteRT float32 and LiteRT int8;
* step latency at batch 1 and 16: the numpy decoder (``NumpyLM.step``), the LiteRT
  interpreter (``ai_edge_litert``; ``--threads`` for both, default 1) and the SavedModel ``step``
  signature, alternating ``--repeats`` times; medians and the ratio LiteRT ÷ numpy in
  tokens per second, from this run.

    .venv/bin/python bench/export.py                  # about 2-3 minutes on 2 cores
    .venv/bin/python bench/export.py --train-seconds 10 --eval-chars 4000 --repeats 3
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _threads_from_argv() -> int:
    """--threads N, read before numpy is imported (BLAS reads its thread count then)."""
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 1


THREADS = _threads_from_argv()
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textgen import config as config_mod  # noqa: E402
from textgen.decoding.generate import Generator  # noqa: E402
from textgen.export import export_run  # noqa: E402
from textgen.machine import machine_line  # noqa: E402
from textgen.rundir import load_bundle  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
TOY_SEEDS = ["경마장에", "그의", "가는"]
CHAR_SEEDS = ["ROMEO:", "First Citizen:\n", "KING RICHARD", "O", "What"]


def versions() -> str:
    names = ("tensorflow", "keras", "ai-edge-litert", "numpy")
    out = []
    for name in names:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} -")
    return ", ".join(out)


def train_runs(tmp: Path, train_seconds: float) -> dict[str, Path]:
    from textgen.training.loop import train

    runs = {}
    toy = ROOT / "runs" / "ko-toy"
    if (toy / "weights.npz").exists():
        runs["toy"] = toy
    else:
        cfg = config_mod.load(ROOT / "configs" / "ko-toy.toml")
        train(cfg, tmp / "ko-toy", progress=False, log=lambda _m: None)
        runs["toy"] = tmp / "ko-toy"
    cfg = config_mod.load(ROOT / "configs" / "shakespeare-char.toml")
    cfg = config_mod.with_corpus(cfg, SHAKESPEARE)
    cfg = cfg.with_overrides(
        [f"train.max_minutes={train_seconds / 60}", "train.save_every_steps=0"]
    )
    start = time.perf_counter()
    train(cfg, tmp / "char-2x256", progress=False, log=lambda _m: None)
    print(f"trained the 2x256 char model for {time.perf_counter() - start:.0f} s "
          f"(train.max_minutes={train_seconds / 60:.2f}, then its validation)")  # fmt: skip
    runs["char"] = tmp / "char-2x256"
    return runs


def export_all(runs: dict[str, Path], tmp: Path) -> dict[tuple[str, str], Path]:
    out = {}
    print("\n## Export sizes and times\n")
    print("| model | format | size | seconds |")
    print("|---|---|---:|---:|")
    for name, run in runs.items():
        for fmt, quantize, label in (
            ("savedmodel", None, "savedmodel"),
            ("litert", None, "litert float32"),
            ("litert", "dynamic", "litert int8 (dynamic)"),
        ):
            folder = tmp / f"{name}-{label.split()[0]}-{quantize or 'f32'}"
            report = export_run(run, fmt, folder, quantize=quantize)
            model_bytes = (
                report.size if fmt == "savedmodel" else (folder / "model.tflite").stat().st_size
            )
            what = "folder" if fmt == "savedmodel" else "model.tflite"
            print(f"| {name} | {label} | {model_bytes:,} bytes ({what}) | "
                  f"{report.seconds:.1f} |")  # fmt: skip
            out[(name, label)] = folder
    return out


def litert_runner(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=THREADS).get_signature_runner("step")


def greedy_litert(runner, seed_ids, steps: int, state_size: int) -> list[int]:
    state = np.zeros((1, state_size), np.float32)
    for token in seed_ids:
        res = runner(ids=np.array([token], np.int32), state=state)
        state = res["state"]
    picked = []
    for _ in range(steps):
        token = int(np.argmax(res["logits"][0]))
        picked.append(token)
        res = runner(ids=np.array([token], np.int32), state=res["state"])
    return picked


def equality(runs, exported) -> None:
    from textgen._tf import tensorflow

    tf = tensorflow()
    print("\n## Greedy equality\n")
    print("| model | check | equal |")
    print("|---|---|---|")
    for name, seeds, length in (("toy", TOY_SEEDS, 50), ("char", CHAR_SEEDS, 200)):
        bundle = load_bundle(runs[name])
        gen = Generator(bundle.lm, bundle.tokenizer)
        loaded = tf.saved_model.load(str(exported[(name, "savedmodel")]))
        sig = loaded.signatures["generate"]
        same = 0
        for seed in seeds:
            text = (
                sig(
                    seed=tf.constant(seed),
                    max_tokens=tf.constant(length),
                    temperature=tf.constant(0.0),
                    rng_seed=tf.constant(0, tf.int64),
                )["text"]
                .numpy()
                .decode()
            )
            same += text == gen.generate(seed, length=length)[0]
        print(f"| {name} | SavedModel generate, {len(seeds)} seeds × ≤{length} tokens | "
              f"{same}/{len(seeds)} |")  # fmt: skip
        size = exported_state_size(bundle)
        for label in ("litert float32", "litert int8 (dynamic)"):
            runner = litert_runner(exported[(name, label)] / "model.tflite")
            same = 0
            for seed in seeds:
                ids = gen.encode_seed(seed)
                want = _numpy_greedy(bundle.lm, ids, 50)
                same += greedy_litert(runner, ids, 50, size) == want
            print(f"| {name} | {label}: 50 greedy steps, {len(seeds)} seeds | "
                  f"{same}/{len(seeds)} |")  # fmt: skip


def _numpy_greedy(lm, seed_ids, steps: int) -> list[int]:
    logits, state = lm.run(np.asarray(seed_ids)[None, :])
    logits = logits[:, -1]
    picked = []
    for _ in range(steps):
        token = np.argmax(logits, axis=-1)
        picked.append(int(token[0]))
        logits, state = lm.step(token, state)
    return picked


def exported_state_size(bundle) -> int:
    return sum(sum(part.shape[1] for part in layer) for layer in bundle.lm.initial_state(1))


def bits_per_char(runs, exported, eval_chars: int) -> None:
    bundle = load_bundle(runs["char"])
    text = SHAKESPEARE.read_text(encoding="utf-8")
    held = text[int(len(text) * 0.9) :][:eval_chars]
    ids = bundle.tokenizer.encode(held)
    slices = 16
    per = len(ids) // slices
    block = ids[: per * slices].reshape(slices, per)
    size = exported_state_size(bundle)

    def numpy_engine():
        state = bundle.lm.initial_state(slices)

        def step(tokens):
            nonlocal state
            logits, state = bundle.lm.step(tokens, state)
            return logits

        return step

    def litert_engine(label):
        runner = litert_runner(exported[("char", label)] / "model.tflite")
        state = np.zeros((slices, size), np.float32)

        def step(tokens):
            nonlocal state
            res = runner(ids=tokens.astype(np.int32), state=state)
            state = res["state"]
            return res["logits"]

        return step

    print(f"\n## Held-out bits/char (char 2x256, {per * slices:,} validation characters)\n")
    print("| engine | bits/char | change |")
    print("|---|---:|---:|")
    base = None
    for label, engine in (
        ("numpy decoder", numpy_engine()),
        ("litert float32", litert_engine("litert float32")),
        ("litert int8 (dynamic)", litert_engine("litert int8 (dynamic)")),
    ):
        total = 0.0
        for t in range(per - 1):
            logits = np.asarray(engine(block[:, t]), np.float64)
            shifted = logits - logits.max(axis=-1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            total -= logp[np.arange(slices), block[:, t + 1]].sum()
        bpc = total / (slices * (per - 1)) / math.log(2)
        base = bpc if base is None else base
        print(f"| {label} | {bpc:.4f} | {bpc - base:+.4f} |")


def latency(runs, exported, repeats: int, seconds: float) -> None:
    from textgen._tf import tensorflow

    tf = tensorflow()
    bundle = load_bundle(runs["char"])
    lm = bundle.lm
    size = exported_state_size(bundle)
    saved = tf.saved_model.load(str(exported[("char", "savedmodel")])).signatures["step"]
    print(f"\n## Step latency, char 2x256 (medians of {repeats} alternating rounds)\n")
    print("| batch | numpy tokens/s | LiteRT f32 tokens/s | LiteRT int8 tokens/s "
          "| SavedModel step tokens/s | LiteRT f32 ÷ numpy | LiteRT int8 ÷ numpy |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch in (1, 16):
        _latency_row(batch, lm, size, exported, saved, repeats, seconds)


def _latency_row(batch, lm, size, exported, saved, repeats: int, seconds: float) -> None:
    from textgen._tf import tensorflow

    tf = tensorflow()
    ids = (np.arange(batch) % lm.vocab_size).astype(np.int32)

    def run_numpy():
        state = lm.initial_state(batch)
        return _timed(lambda: lm.step(ids, state), seconds)

    def run_litert(label):
        runner = litert_runner(exported[("char", label)] / "model.tflite")
        state = np.zeros((batch, size), np.float32)
        runner(ids=ids, state=state)  # resize and warm up
        return lambda: _timed(lambda: runner(ids=ids, state=state), seconds)

    def run_saved():
        state = tf.constant(np.zeros((batch, size), np.float32))
        tids = tf.constant(ids)
        saved(ids=tids, state=state)
        return _timed(lambda: saved(ids=tids, state=state), seconds / 2)

    f32, int8 = run_litert("litert float32"), run_litert("litert int8 (dynamic)")
    rounds = {"numpy": [], "f32": [], "int8": [], "saved": []}
    for _ in range(repeats):
        rounds["numpy"].append(run_numpy())
        rounds["f32"].append(f32())
        rounds["int8"].append(int8())
        rounds["saved"].append(run_saved())
    med = {k: statistics.median(v) * batch for k, v in rounds.items()}
    print(f"| {batch} | {med['numpy']:,.0f} | {med['f32']:,.0f} | {med['int8']:,.0f} | "
          f"{med['saved']:,.0f} | {med['f32'] / med['numpy']:.2f} | "
          f"{med['int8'] / med['numpy']:.2f} |")  # fmt: skip


def _timed(call, seconds: float) -> float:
    """Calls per second of ``call`` over about ``seconds``."""
    n, start = 0, time.perf_counter()
    while True:
        for _ in range(20):
            call()
        n += 20
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seconds", type=float, default=45.0)
    parser.add_argument("--eval-chars", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per timing round")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS threads for numpy and LiteRT interpreter threads (default 1: on a shared "
        "2-core machine a second thread spins against the other jobs; numpy at batch 16 "
        "measured 30x slower with 2 OpenBLAS threads under load 8)",
    )
    args = parser.parse_args()
    os.environ.setdefault("TEXTGEN_CACHE", tempfile.mkdtemp(prefix="textgen-bench-cache-"))
    print(f"# {time.strftime('%Y-%m-%d')}  {machine_line()}")
    print(f"# {versions()}")
    print(f"# load average at start: {os.getloadavg()}")
    print(f"# threads: numpy BLAS {os.environ['OPENBLAS_NUM_THREADS']}, LiteRT {THREADS}, "
          "TensorFlow its default pools (it also trains here)")  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="textgen-bench-export-") as tmp:
        tmp = Path(tmp)
        runs = train_runs(tmp, args.train_seconds)
        exported = export_all(runs, tmp)
        equality(runs, exported)
        bits_per_char(runs, exported, args.eval_chars)
        latency(runs, exported, args.repeats, args.seconds)
    print(f"\n# {time.perf_counter() - start:.0f} s in all; load average at end: "
          f"{os.getloadavg()}")  # fmt: skip


if __name__ == "__main__":
    main()
