"""Decoding speed: textgen's numpy step against LiteRT's, the GEMM roofline, PyTorch and
the tutorial's re-feed.

One 2x256 char LSTM (embedding 64, vocabulary 65, the tiny Shakespeare sizes; ``--cell
gru`` for a GRU) with one set of weights, in one process:

* step: textgen's ``NumpyLM.step`` and the same step exported to LiteRT
  (``textgen.export.litert.convert_step``, run by ``ai_edge_litert``'s interpreter with
  XNNPACK and 2 threads), each in the same loop (step, argmax, feed it back) at batch 1,
  16 and 32, interleaved (A B A B ...) ``--repeats`` times; medians. Each rate is also
  given as a fraction of the GEMM roofline: forward FLOPs per token from the model's
  sizes (every layer's input and recurrent products and the output layer) over sgemm
  GFLOP/s measured in the same run (numpy, 1024^3);
* generate: ``Generator.continue_ids`` (the path ``textgen generate`` runs: prefill,
  greedy picks, log-probabilities, stop checks) at the same batches;
* the first character of ``textgen generate`` on a terminal (a pseudo-terminal here),
  TensorFlow-free, run as ``python -m textgen`` by the interpreter the bench runs under;
* PyTorch (``nn.LSTM`` with the same weights, one step per token) when it is installed,
  and the classic tutorial's re-feed loop (``model.predict`` over the whole prefix per
  token) unless ``--skip-refeed``: it takes minutes.

* jamo: the same 2x256 sizes over the jamo vocabulary of the Korean Constitution
  (``../shared/data/ko/constitution.txt``, NFD), ``Generator.continue_ids`` with the
  syllable mask (``textgen.text.hangul``) and without it, greedy and sampling at
  temperature 2, interleaved in the same run (tokens per CPU-second of the process, the
  best round of each, as other processes slow some rounds), and the mask's own work per
  step timed against a model step: what
  the mask costs. ``--jamo`` runs only this table (about a minute, no TensorFlow).

LiteRT and textgen must agree (logits to 1e-4, and the greedy tokens of the step loop).
The CPU, its flags, the BLAS numpy uses and the load average are printed with the table,
since other processes on the machine slow every arm.

    .venv/bin/python bench/generate.py --skip-refeed           # the step table (~1 min)
    .venv/bin/python bench/generate.py --steps 200 --repeats 3 --skip-refeed   # quick look
    .venv/bin/python bench/generate.py --jamo                  # the syllable mask's cost
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textgen.config import ModelConfig  # noqa: E402
from textgen.decoding.blas import blas_threads, set_blas_threads  # noqa: E402
from textgen.decoding.generate import Generator  # noqa: E402
from textgen.decoding.numpy_lm import NumpyLM  # noqa: E402
from textgen.machine import machine_line  # noqa: E402
from textgen.text import fit_tokenizer  # noqa: E402

SEED = "ROMEO:"
ALPHABET = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # 65 chars


def build(seed: int = 0, cell: str = "lstm"):
    """A Keras 2x256 char model with random non-trivial weights, its tokenizer and numpy twin."""
    from textgen._tf import keras
    from textgen.model.network import build_model

    keras().utils.set_random_seed(seed)
    tokenizer = fit_tokenizer([ALPHABET], "char", eos=False)
    cfg = ModelConfig(cell=cell, embedding_dim=64, units=256, layers=2)
    model = build_model(cfg, len(tokenizer.vocab), mask_padding=False)
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # spread the logits so greedy does not stall on one char
        weights = layer.get_weights()
        if weights:
            layer.set_weights(
                [w + 0.05 * rng.standard_normal(w.shape).astype(np.float32) for w in weights]
            )
    return model, tokenizer, NumpyLM.from_model(model)


def forward_flops(lm) -> float:
    """Multiply-adds x 2 of one token's forward pass: every layer's input and recurrent
    products and the output layer (what LiteRT computes; textgen looks the first layer's
    input product up in a table, so this counts more than it does)."""
    flops = 0
    for layer in lm.layers:
        flops += 2 * (layer.kernel.size + layer.recurrent.size)
    return float(flops + 2 * lm.out_kernel.size)


def blas_line() -> str:
    """Which BLAS numpy runs its products on, and the thread setting it was given."""
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{info.get('name')} {info.get('version')}"
    except Exception:  # older numpy: no dict mode
        blas = "unknown BLAS"
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return f"numpy {np.__version__} on {blas}, threads {threads or f'default ({os.cpu_count()})'}"


def numpy_steps(lm, batch: int, steps: int) -> tuple[float, list[int]]:
    """``steps`` greedy steps of textgen's numpy step at ``batch``: seconds, row 0's ids."""
    ids = np.zeros(batch, np.int64)
    state = lm.initial_state(batch)
    out = []
    start = time.perf_counter()
    for _ in range(steps):
        logits, state = lm.step(ids, state)
        ids = np.argmax(logits, axis=-1)
        out.append(int(ids[0]))
    return time.perf_counter() - start, out


class LiteRTStep:
    """An exported LiteRT step (``model``, the .tflite bytes) at one batch size, run by
    LiteRT's interpreter (XNNPACK, ``threads``)."""

    def __init__(self, model: bytes, batch: int, threads: int = 2) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=model, num_threads=threads)
        runner = self.interpreter.get_signature_runner("step")
        details = {
            k: (v["index"], int(v["shape"][-1])) for k, v in runner.get_input_details().items()
        }
        del runner  # it holds the tensors that resizing replaces
        self.state_size = details["state"][1]
        for name, size in (("ids", [batch]), ("state", [batch, self.state_size])):
            self.interpreter.resize_tensor_input(details[name][0], size)
        self.interpreter.allocate_tensors()
        self.runner = self.interpreter.get_signature_runner("step")
        self.batch = batch

    def __call__(self, ids: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.runner(ids=ids, state=state)
        return out["logits"], out["state"]

    def steps(self, steps: int) -> tuple[float, list[int]]:
        """``steps`` greedy steps: seconds and row 0's ids (the loop of :func:`numpy_steps`)."""
        ids = np.zeros(self.batch, np.int32)
        state = np.zeros((self.batch, self.state_size), np.float32)
        out = []
        start = time.perf_counter()
        for _ in range(steps):
            logits, state = self(ids, state)
            ids = np.argmax(logits, axis=-1).astype(np.int32)
            out.append(int(ids[0]))
        return time.perf_counter() - start, out


def litert_model(lm) -> bytes:
    """The .tflite bytes of ``lm``'s step, as ``textgen export --format litert`` writes."""
    from textgen.export.litert import convert_step, weight_arrays

    return convert_step(weight_arrays(lm))


def check_litert(step: LiteRTStep, lm) -> float:
    """LiteRT's logits and state against textgen's for one step from a random state."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, lm.vocab_size, step.batch)
    state = lm.initial_state(step.batch)
    state = [tuple(rng.uniform(-0.9, 0.9, p.shape).astype(np.float32) for p in s) for s in state]
    ours, _ = lm.step(ids, state)
    flat = np.concatenate([p for layer in state for p in layer], axis=-1)
    theirs, _ = step(ids.astype(np.int32), flat)
    return float(np.abs(ours - theirs).max())


def textgen_decode(lm, tokenizer, tokens: int, batch: int = 1):
    """Greedy decoding through textgen's Generator; returns (ids, seconds, per-token times)."""
    gen = Generator(lm, tokenizer)
    stamps: list[float] = []
    start = time.perf_counter()
    out = gen.continue_ids(
        SEED,
        length=tokens,
        num=batch,
        on_token=lambda row, _t: row == 0 and stamps.append(time.perf_counter()),
    )
    return out.ids[0], time.perf_counter() - start, np.diff([start, *stamps])


KO_TEXT = ROOT.parent / "shared" / "data" / "ko" / "constitution.txt"
JAMO_SEED = "대한민국은"


def jamo_model(seed: int = 0, units: int = 256, layers: int = 2, embedding: int = 64):
    """A random-weight 2x256 LSTM (numpy only) over the Constitution's jamo vocabulary."""
    from textgen.decoding.numpy_lm import RNNWeights

    text = KO_TEXT.read_text(encoding="utf-8") if KO_TEXT.is_file() else "대한민국 헌법 " * 9
    tokenizer = fit_tokenizer([text], "char", eos=False, normalize="nfd")
    rng = np.random.default_rng(seed)
    vocab, stack, width = len(tokenizer.vocab), [], embedding
    for _ in range(layers):
        stack.append(
            RNNWeights(
                rng.normal(0, 0.3, (width, 4 * units)).astype(np.float32),
                rng.normal(0, 0.1, (units, 4 * units)).astype(np.float32),
                rng.normal(0, 0.1, 4 * units).astype(np.float32),
            )
        )
        width = units
    lm = NumpyLM(
        "lstm",
        rng.normal(0, 1.0, (vocab, embedding)).astype(np.float32),
        stack,
        rng.normal(0, 0.3, (units, vocab)).astype(np.float32),
        np.zeros(vocab, np.float32),
    )
    return lm, tokenizer


def jamo_decode(gen: Generator, tokens: int, batch: int, strategy, masked: bool) -> float:
    """CPU seconds of one ``continue_ids`` run, the syllable mask on or off (the process's
    CPU time: on a machine shared with other processes it varies less than wall time)."""
    from textgen.text.hangul import syllable_mask

    gen.syllables = syllable_mask(gen.tokenizer) if masked else None
    start = time.process_time()
    gen.continue_ids(JAMO_SEED, length=tokens, num=batch, strategy=strategy, rng_seed=0)
    return time.process_time() - start


def mask_step_costs(lm, tokenizer, batches: list[int]) -> tuple[dict, dict]:
    """Per batch: the microseconds of one model step and of the mask's work per step (apply
    to the logits, advance the states), each the best of 5 timings of 2,000 calls."""
    import timeit

    from textgen.text.hangul import syllable_mask

    mask = syllable_mask(tokenizer)

    def best(fn, *args) -> float:
        return min(timeit.repeat(lambda: fn(*args), number=2000, repeat=5)) / 2000 * 1e6

    def masked(logits: np.ndarray, states: np.ndarray) -> None:
        mask.advance(states, np.argmax(mask.apply(logits, states), axis=-1))

    def plain(logits: np.ndarray, _states: np.ndarray) -> None:
        np.argmax(logits, axis=-1)

    step_us, mask_us = {}, {}
    for b in batches:
        ids, states = np.zeros(b, np.int64), np.zeros(b, np.int64)
        logits, state = lm.step(ids, lm.initial_state(b))
        step_us[b] = best(lm.step, ids, state)
        mask_us[b] = max(best(masked, logits, states) - best(plain, logits, states), 0.0)
    return step_us, mask_us


def jamo_table(tokens: int, repeats: int, batches: list[int]) -> None:
    """Decoding tokens/s on a jamo model with and without the syllable mask, same run."""
    from textgen.decoding.generate import Strategy
    from textgen.text.hangul import loose_jamo

    lm, tokenizer = jamo_model()
    gen = Generator(lm, tokenizer, warn=lambda _m: None)
    strategies = {"greedy": Strategy(), "sample t=2": Strategy("sample", temperature=2.0)}
    secs = {(s, b, m): [] for s in strategies for b in batches for m in (False, True)}
    load = [os.getloadavg()[0]]
    for k in range(repeats):  # off, on, on, off, ...: neither always runs first
        order = (False, True) if k % 2 == 0 else (True, False)
        for name, strategy in strategies.items():
            for b in batches:
                for masked in order:
                    secs[name, b, masked].append(jamo_decode(gen, tokens, b, strategy, masked))
        load.append(os.getloadavg()[0])
    step_us, mask_us = mask_step_costs(lm, tokenizer, batches)
    loose = {}
    for masked in (False, True):  # what each writes: loose jamo in 8 samples at t=2
        jamo_decode(gen, 1, 1, strategies["sample t=2"], masked)  # sets gen.syllables
        out = gen.generate(JAMO_SEED, length=300, num=8, strategy=strategies["sample t=2"])
        loose[masked] = sum(len(loose_jamo(t)) for t in out)
    print(f"# {time.strftime('%Y-%m-%d')}  {machine_line()}")
    print(
        f"# jamo: 2x256 lstm, vocabulary {len(tokenizer.vocab)} ({KO_TEXT.name}, NFD), "
        f"random weights; {tokens} tokens per run, {repeats} rounds (off, on interleaved), "
        f"best round; load average {', '.join(f'{x:.2f}' for x in load)}"
    )
    print(
        "| strategy | batch | tokens per CPU-second without mask | with mask | mask's cost "
        "| mask µs/step, of a step's µs |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in strategies:
        for b in batches:
            off = b * tokens / min(secs[name, b, False])  # best round: the least disturbed
            on = b * tokens / min(secs[name, b, True])
            print(
                f"| {name} | {b} | {off:,.0f} | {on:,.0f} | {1 - on / off:+.1%} "
                f"| {mask_us[b]:.1f} of {step_us[b]:.0f} ({mask_us[b] / step_us[b]:.1%}) |"
            )
    print(
        f"# loose jamo in 8 samples of 300 tokens at t=2: {loose[False]:,} without the "
        f"mask, {loose[True]:,} with it"
    )


def refeed_decode(model, tokenizer, tokens: int):
    """The tutorial's method: pad the whole prefix, ``model.predict``, argmax, repeat."""
    from textgen._tf import keras

    pad = keras().utils.pad_sequences
    ids = list(tokenizer.encode(SEED))
    start = time.perf_counter()
    out = []
    for _ in range(tokens):
        # padded to the prefix itself: the kindest variant for re-feed (the tutorial pads to
        # a fixed max_len, which costs the full length at every step and, unmasked, lets
        # the padding change the state)
        x = pad([ids], maxlen=len(ids), padding="pre")
        probs = model.predict(x, verbose=0)[0, -1]
        nxt = int(np.argmax(probs))
        ids.append(nxt)
        out.append(nxt)
    return out, time.perf_counter() - start


def torch_model(lm):
    import torch

    vocab, emb = lm.embedding.shape
    units = lm.layers[0].units
    net = torch.nn.ModuleDict(
        {
            "emb": torch.nn.Embedding(vocab, emb),
            "rnn": torch.nn.LSTM(emb, units, num_layers=len(lm.layers), batch_first=True),
            "out": torch.nn.Linear(units, vocab),
        }
    )
    with torch.no_grad():
        net["emb"].weight.copy_(torch.from_numpy(lm.embedding))
        for i, layer in enumerate(lm.layers):  # Keras i,f,c,o == PyTorch i,f,g,o
            getattr(net["rnn"], f"weight_ih_l{i}").copy_(torch.from_numpy(layer.kernel.T.copy()))
            getattr(net["rnn"], f"weight_hh_l{i}").copy_(torch.from_numpy(layer.recurrent.T.copy()))
            getattr(net["rnn"], f"bias_ih_l{i}").copy_(torch.from_numpy(layer.bias))
            getattr(net["rnn"], f"bias_hh_l{i}").zero_()
        net["out"].weight.copy_(torch.from_numpy(lm.out_kernel.T.copy()))
        net["out"].bias.copy_(torch.from_numpy(lm.out_bias))
    return net.eval()


def torch_decode(net, tokenizer, tokens: int):
    import torch

    start = time.perf_counter()
    out = []
    with torch.inference_mode():
        seed = torch.from_numpy(tokenizer.encode(SEED).astype(np.int64))[None, :]
        y, state = net["rnn"](net["emb"](seed))
        nxt = net["out"](y[:, -1]).argmax(-1)
        for t in range(tokens):
            out.append(int(nxt))
            if t == tokens - 1:
                break
            y, state = net["rnn"](net["emb"](nxt[:, None]), state)
            nxt = net["out"](y[:, -1]).argmax(-1)
    return out, time.perf_counter() - start


def first_token_latency(run_dir: Path) -> float:
    """Seconds from spawning ``textgen generate`` on a pty to its first generated character."""
    master, slave = pty.openpty()
    cmd = [  # the interpreter this bench runs under, wherever textgen is installed
        sys.executable,
        "-m",
        "textgen",
        "generate",
        "--model",
        str(run_dir),
        "--seed",
        SEED,
        "--length",
        "50",
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.DEVNULL, close_fds=True)
    os.close(slave)
    seen = b""
    while len(seen.decode("utf-8", "ignore")) <= len(SEED):
        ready, _, _ = select.select([master], [], [], 10)
        if not ready:
            raise RuntimeError("no output from textgen generate within 10 s")
        seen += os.read(master, 1024)
    elapsed = time.perf_counter() - start
    proc.wait()
    os.close(master)
    return elapsed


def save_run(model, tokenizer, directory: Path, cell: str = "lstm") -> Path:
    """A minimal run directory for the latency measurement."""
    from textgen import rundir
    from textgen.config import Config, DataConfig

    run = directory / "bench-char"
    run.mkdir(parents=True)
    cfg = Config(
        data=DataConfig(level="char", mode="stream"),
        model=ModelConfig(cell=cell, embedding_dim=64, units=256, layers=2),
    )
    with rundir.Commit(run) as commit:
        commit.write_text(rundir.TOKENIZER, tokenizer.to_json())
        rundir.write_bundle(commit, model, cfg.to_toml(), {"parameters": model.count_params()})
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    parser.add_argument("--steps", type=int, default=1000, help="steps per timed step run")
    parser.add_argument("--tokens", type=int, default=500, help="tokens per generate run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,16,32")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT's threads")
    parser.add_argument("--skip-refeed", action="store_true")
    parser.add_argument("--jamo", action="store_true", help="only the syllable mask's table")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.jamo:
        jamo_table(args.tokens, args.repeats, batches)
        return

    model, tokenizer, lm = build(cell=args.cell)
    from bench.machine import sgemm_gflops

    tflite = litert_model(lm)
    litert = {b: LiteRTStep(tflite, b, args.threads) for b in batches}
    worst = max(check_litert(step, lm) for step in litert.values())
    assert worst < 1e-4, f"LiteRT and textgen disagree: logits differ by {worst}"
    threads = [1, 2] if blas_threads() is not None else [None]  # None: as numpy found it
    default = blas_threads()
    gflops, theirs = [], {b: [] for b in batches}
    ours = {(t, b): [] for t in threads for b in batches}
    gen = {(t, b): [] for t in threads for b in batches}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):  # A B A B ..., the roofline measured in every round
        gflops.append(sgemm_gflops(reps=10))
        for b in batches:
            for t in threads:
                if t is not None:
                    set_blas_threads(t)
                secs, ids = numpy_steps(lm, b, args.steps)
                ours[t, b].append(secs)
            if default is not None:
                set_blas_threads(default)
            secs, lids = litert[b].steps(args.steps)
            theirs[b].append(secs)
            same = next(
                (i for i, (x, y) in enumerate(zip(ids, lids, strict=True)) if x != y), len(ids)
            )
            assert same >= min(100, len(ids)), f"greedy tokens differ from step {same} (batch {b})"
        for b in batches:
            for t in threads:
                if t is not None:
                    set_blas_threads(t)
                gen[t, b].append(textgen_decode(lm, tokenizer, args.tokens, b)[1])
        if default is not None:
            set_blas_threads(default)
        load.append(os.getloadavg()[0])
    roof = statistics.median(gflops) * 1e9 / forward_flops(lm)  # tokens/s at the roofline

    from ai_edge_litert import __version__ as litert_version

    print(f"# {time.strftime('%Y-%m-%d')}  {machine_line()}")
    print(f"# python {platform.python_version()}, {blas_line()}, ai-edge-litert {litert_version}")
    print(
        f"# load average {', '.join(f'{x:.2f}' for x in load)} (before, after each round); "
        f"sgemm {statistics.median(gflops):.0f} GFLOP/s (runs "
        f"{', '.join(f'{g:.0f}' for g in gflops)}); 2x256 {args.cell}, "
        f"{forward_flops(lm) / 1e6:.2f} MFLOP/token; LiteRT {args.threads} threads; "
        f"{args.steps} steps per run, {args.repeats} rounds, medians"
    )
    names = [f"BLAS {t or 'default'}" for t in threads]
    print(
        f"| batch | textgen step: {', '.join(names)} | LiteRT step | best textgen / LiteRT "
        f"| roofline: textgen best, LiteRT | generate: {', '.join(names)} |"
    )
    print("|---:" * 6 + "|")
    for b in batches:
        rate = {t: b * args.steps / statistics.median(ours[t, b]) for t in threads}
        best = max(rate.values())
        lrate = b * args.steps / statistics.median(theirs[b])
        grate = [b * args.tokens / statistics.median(gen[t, b]) for t in threads]
        print(
            f"| {b} | {', '.join(f'{rate[t]:,.0f}' for t in threads)} | {lrate:,.0f} "
            f"| {best / lrate:.2f}x | {best / roof:.1%}, {lrate / roof:.1%} "
            f"| {', '.join(f'{g:,.0f}' for g in grate)} |"
        )
    for b in batches:
        runs = "; ".join(f"BLAS {t}: {rates(b * args.steps, ours[t, b])}" for t in threads)
        grun = "; ".join(f"BLAS {t}: {rates(b * args.tokens, gen[t, b])}" for t in threads)
        print(
            f"# batch {b} (tokens/s): textgen step {runs}; LiteRT "
            f"{rates(b * args.steps, theirs[b])}; generate {grun}"
        )

    with tempfile.TemporaryDirectory() as tmp:
        run = save_run(model, tokenizer, Path(tmp), args.cell)
        latencies = [first_token_latency(run) for _ in range(args.repeats)]
    detail = "runs " + ", ".join(f"{x:.2f}" for x in latencies)
    row("first char of `textgen generate`", f"{statistics.median(latencies):.2f} s", detail)
    n = max(args.tokens, 1000)  # the late tokens of the flatness ratio need 1,000
    ids, secs, per_token = textgen_decode(lm, tokenizer, n)
    rate = n / secs
    flat = np.median(per_token[900:1000]) / np.median(per_token[10:110])
    row("per-token cost 900-1000 / 10-110", f"{flat:.2f}", f"batch 1, {rate:,.0f} tokens/s")
    if args.cell == "lstm" and importlib.util.find_spec("torch") is not None:
        net = torch_model(lm)
        tids, tsecs = torch_decode(net, tokenizer, n)
        assert tids == ids, "PyTorch and textgen disagree on the greedy tokens"
        row("pytorch batch 1 tokens/s", f"{n / tsecs:,.0f}", f"textgen {rate:,.0f}")
    if not args.skip_refeed:
        rids, rsecs = refeed_decode(model, tokenizer, n)
        same = next((i for i, (a, b) in enumerate(zip(rids, ids, strict=True)) if a != b), n)
        row("re-feed batch 1 tokens/s", f"{n / rsecs:,.1f}", f"{rsecs:.1f} s")
        row("re-feed tokens equal to textgen's", f"{same}/{n}")
        row("textgen / re-feed", f"{rate / (n / rsecs):,.0f}x")
    print()
    jamo_table(args.tokens, args.repeats, batches)


def row(label: str, value: str, detail: str = "") -> None:
    print(f"{label:<34}{value:>10}" + (f"  ({detail})" if detail else ""))


def rates(n: int, seconds: list[float]) -> str:
    return "runs " + ", ".join(f"{n / s:,.0f}" for s in seconds)


if __name__ == "__main__":
    main()
