"""The numpy decoder's step against LiteRT's, in the same run, at batch 1, 16 and 32.

A 2×256 char LSTM, or with ``--cell gru`` a GRU (embedding 64, vocabulary 65, random
weights: speed does not depend on what they say). Each arm runs the same loop,
``--steps`` times: one step, an argmax, the argmax fed back. The arms:

* ``textgen`` : :meth:`textgen.decoding.numpy_lm.NumpyLM.step`, with numpy's OpenBLAS on
  1 thread and on 2 (switched at run time with ``set_blas_threads``);
* ``textgen native`` : the same model's compiled multi-core step
  (:meth:`~textgen.decoding.numpy_lm.NumpyLM.use_native`, numba's threads, one per core),
  where numba is installed; its logits must match LiteRT's to 1e-4 too;
* ``before``  : with ``--baseline FILE``, the ``NumpyLM`` of another copy of
  ``numpy_lm.py`` (e.g. ``git show HEAD~3:textgen/decoding/numpy_lm.py > /tmp/old.py``)
  on 1 thread, so a change is measured against what it replaced in the same run;
* ``LiteRT``  : the same step exported by ``textgen.export.litert.convert_step`` and run
  by ``ai_edge_litert``'s interpreter (XNNPACK) with 2 threads, the target's reference,
  and with ``--litert-one-thread`` also with 1 (the same single core as textgen's).

The arms take turns in each of ``--repeats`` rounds, each round starting with the next
arm (the first one after the round's sgemm ran slower), and the figures are medians. The
roofline is the forward FLOPs of a token (every layer's input and recurrent products and
the output layer: 1.74 MFLOP for the LSTM, 1.31 for the GRU) times tokens/s over numpy's
sgemm GFLOP/s (1024³, the better of 1 and 2 BLAS threads), measured in every round. The
first lines name the CPU, its SIMD flags, the load average before and after each round
and the versions. LiteRT's logits must match textgen's to 1e-4 and the greedy tokens of
the loops must agree, or the bench stops.

``--breakdown`` prints instead where one step's time goes at each batch size: the gate
products, the output layer and the gate arithmetic timed alone, in CPU time.

    .venv/bin/python bench/step.py                      # about 1-2 minutes on 2 cores
    .venv/bin/python bench/step.py --baseline /tmp/old.py
    .venv/bin/python bench/step.py --breakdown
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate import LiteRTStep, check_litert, numpy_steps  # noqa: E402
from bench.machine import sgemm_gflops  # noqa: E402
from textgen.decoding.blas import blas_threads, set_blas_threads  # noqa: E402
from textgen.decoding.numpy_lm import NumpyLM  # noqa: E402
from textgen.machine import machine_line  # noqa: E402

EMBED, UNITS, VOCAB, LAYERS = 64, 256, 65, 2


def weights(seed: int = 0, cell: str = "lstm") -> dict[str, np.ndarray]:
    """The arrays of a 2×256 char LSTM or GRU (``weights.npz``'s names), random but spread
    enough that greedy decoding does not settle on one character."""
    rng = np.random.default_rng(seed)

    def rand(*shape: int, scale: float = 0.15) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    gates = {"lstm": 4, "gru": 3}[cell]
    arrays = {"cell": np.array(cell), "embedding": rand(VOCAB, EMBED, scale=1.0)}
    for i in range(LAYERS):
        arrays[f"rnn_{i}_kernel"] = rand(EMBED if i == 0 else UNITS, gates * UNITS)
        arrays[f"rnn_{i}_recurrent"] = rand(UNITS, gates * UNITS)
        bias_shape = (2, gates * UNITS) if cell == "gru" else (gates * UNITS,)
        arrays[f"rnn_{i}_bias"] = rand(*bias_shape)
    arrays["out_kernel"] = rand(UNITS, VOCAB, scale=1.0)
    arrays["out_bias"] = rand(VOCAB)
    return arrays


def forward_flops(arrays: dict[str, np.ndarray]) -> float:
    """2 × the multiply-adds of one token: all input, recurrent and output products."""
    return float(2 * sum(v.size for k, v in arrays.items() if k.endswith(("kernel", "recurrent"))))


def load_baseline(path: Path, arrays: dict[str, np.ndarray]):
    """The ``NumpyLM`` of another copy of ``numpy_lm.py`` built from ``arrays``."""
    spec = importlib.util.spec_from_file_location("baseline_numpy_lm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.NumpyLM.from_arrays(arrays)


def best_time(func: Callable[[], object], calls: int = 20, rounds: int = 40) -> float:
    """CPU microseconds per call of ``func`` (this thread's CPU time, so time spent
    waiting for a core on a shared machine is left out), the best of ``rounds`` runs."""
    func()
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(calls):
            func()
        best = min(best, (time.thread_time() - start) / calls)
    return best * 1e6


def breakdown(arrays: dict[str, np.ndarray], batches: list[int]) -> None:
    """Where one step's time goes, each part timed alone on 1 BLAS thread; the parts run
    with their weights in cache, so "rest" is Python, numpy's call overhead and the
    cache misses of a step whose weights (3.1 MB for the LSTM) exceed a core's L2."""
    rng = np.random.default_rng(2)
    lm = NumpyLM.from_arrays(arrays)
    gates_count = lm._gm[0]["kernel"].shape[0]
    parts = 2 if lm.cell == "lstm" else 1
    print("CPU µs per call (thread time, best of 40 × 20 calls), 1 BLAS thread:\n")
    print("| batch | row groups | step | 3 gate products | output layer | gate arithmetic ×2 "
          "| table lookup | rest | one (B, gates·256) product, as before |")  # fmt: skip
    print("|---:" * 9 + "|")
    for b in batches:
        split = lm.row_groups(b)
        h = rng.uniform(-0.9, 0.9, (b, UNITS)).astype(np.float32)
        z = rng.uniform(-2, 2, (gates_count, b, UNITS)).astype(np.float32)
        state = [tuple(h.copy() for _ in range(parts)) for _ in range(LAYERS)]
        ids = rng.integers(0, VOCAB, b)
        step = best_time(lambda ids=ids, state=state: lm.step(ids, state))
        prods = sum(
            best_time(lambda h=h, w=lm._gm[layer][name], s=split: lm._gate_product(h, w, s))
            for layer, name in ((0, "recurrent"), (1, "kernel"), (1, "recurrent"))
        )
        out = best_time(lambda h=h: lm._logits(h))
        gates = 2 * best_time(lambda z=z, s=state[1]: lm._gated_layer(z.copy(), z.copy(), 1, s))
        table = best_time(lambda ids=ids: np.take(lm._table, ids, axis=1))
        before = best_time(lambda h=h, w=arrays["rnn_1_recurrent"]: h @ w)
        rest = step - prods - out - gates - table
        print(
            f"| {b} | {split[0]} × {split[1]} | {step:.0f} | {prods:.0f} | {out:.0f} | {gates:.0f} "
            f"| {table:.0f} | {rest:.0f} | {before:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps per timed loop")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of all arms")
    parser.add_argument("--batches", default="1,16,32")
    parser.add_argument("--litert-one-thread", action="store_true", help="a 1-thread arm too")
    parser.add_argument("--baseline", type=Path, help="another numpy_lm.py, timed on 1 thread")
    parser.add_argument("--breakdown", action="store_true", help="time a step's parts")
    parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    arrays = weights(cell=args.cell)
    default = blas_threads()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {machine_line()}")
    print(f"# python {platform.python_version()}, numpy {np.__version__}, "
          f"OpenBLAS threads found: {default}, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    if args.breakdown:
        if default is not None:
            set_blas_threads(1)
        breakdown(arrays, batches)
        return

    from ai_edge_litert import __version__ as litert_version

    from textgen.export.litert import convert_step

    lm = NumpyLM.from_arrays(arrays)
    model = convert_step(arrays)
    litert = {b: LiteRTStep(model, b, 2) for b in batches}
    single = {b: LiteRTStep(model, b, 1) for b in batches} if args.litert_one_thread else {}
    worst = max(check_litert(step, lm) for step in [*litert.values(), *single.values()])
    assert worst < 1e-4, f"LiteRT and textgen disagree: logits differ by {worst}"
    arms: dict[str, tuple[Callable[[int], tuple[float, list[int]]], int | None]] = {}
    threads = [1, 2] if default is not None else [None]
    for t in threads:
        arms[f"textgen, BLAS {t or 'default'}"] = (lambda b: numpy_steps(lm, b, args.steps), t)
    fast = NumpyLM.from_arrays(arrays)
    if fast.use_native():  # compiled (or loaded from numba's cache) there, before the rounds
        worst = max(worst, *(check_litert(step, fast) for step in litert.values()))
        assert worst < 1e-4, f"LiteRT and the native step disagree: logits differ by {worst}"
        arms["textgen native"] = (lambda b: numpy_steps(fast, b, args.steps), 1)
    if args.baseline is not None:
        old = load_baseline(args.baseline, arrays)
        arms["before, BLAS 1"] = (lambda b: numpy_steps(old, b, args.steps), 1)
    arms["LiteRT"] = (lambda b: litert[b].steps(args.steps), default)
    if single:
        arms["LiteRT, 1 thread"] = (lambda b: single[b].steps(args.steps), default)
    times: dict[tuple[str, int], list[float]] = {(a, b): [] for a in arms for b in batches}
    gflops, load = [], [os.getloadavg()[0]]
    for round_ in range(args.repeats):
        rates = []
        for t in (1, 2) if default is not None else (None,):
            if t is not None:
                set_blas_threads(t)
            rates.append(sgemm_gflops(reps=10))
        if default is not None:
            set_blas_threads(default)
        gflops.append(max(rates))  # the most this machine gave, whatever the thread count
        time.sleep(0.5)  # OpenBLAS's threads spin a while after the sgemm: let them sleep
        names = list(arms)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]  # each arm first
        for b in batches:
            tokens = {}
            for name in names:
                run, t = arms[name]
                if t is not None:
                    set_blas_threads(t)
                secs, tokens[name] = run(b)
                times[name, b].append(secs)
            if default is not None:
                set_blas_threads(default)
            first = tokens["LiteRT"]
            for name, ids in tokens.items():
                same = next(
                    (i for i, (x, y) in enumerate(zip(ids, first, strict=True)) if x != y), len(ids)
                )
                assert same >= min(100, len(ids)), f"{name}: tokens differ at {same} (batch {b})"
        load.append(os.getloadavg()[0])
    roof = statistics.median(gflops) * 1e9 / forward_flops(arrays)
    print(
        f"# ai-edge-litert {litert_version} (2 threads, XNNPACK); "
        f"load average {', '.join(f'{x:.1f}' for x in load)} (before, after each round); "
        f"sgemm {statistics.median(gflops):.0f} GFLOP/s (rounds "
        f"{', '.join(f'{g:.0f}' for g in gflops)}); {forward_flops(arrays) / 1e6:.2f} "
        f"MFLOP/token; {args.steps} steps per loop, {args.repeats} rounds, medians; "
        f"LiteRT's logits within {worst:.1e} of textgen's"
    )
    names = list(arms)
    print(f"| batch | {' | '.join(names)} | best textgen ÷ LiteRT | roofline: textgen, LiteRT |")
    print("|---:" * (len(names) + 3) + "|")
    for b in batches:
        rate = {n: b * args.steps / statistics.median(times[n, b]) for n in names}
        ours = max(rate[n] for n in names if n.startswith("textgen"))
        print(
            f"| {b} | {' | '.join(f'{rate[n]:,.0f}' for n in names)} "
            f"| **{ours / rate['LiteRT']:.2f}×** | {ours / roof:.1%}, {rate['LiteRT'] / roof:.1%} |"
        )
    for b in batches:
        spread = "; ".join(
            f"{n}: {min(b * args.steps / s for s in times[n, b]):,.0f}-"
            f"{max(b * args.steps / s for s in times[n, b]):,.0f}"
            for n in names
        )
        print(f"# batch {b}, tokens/s per round: {spread}")


if __name__ == "__main__":
    main()
