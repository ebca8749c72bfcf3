"""Training throughput: textgen's training step against PyTorch's nn.LSTM, side by side.

For each workload both frameworks train the same model (textgen's initial weights are
copied into PyTorch, Adam with the same learning rate and gradient clipping) on the same
batches, for ``--steps`` steps after ``--warmup`` steps, alternating A B A B ``--repeats``
times in one process. Printed per workload: tokens/s of both (median and range), their
ratio, the mean loss over the timed steps of each, and the fraction of the GEMM roofline
(sgemm GFLOP/s measured in the same run; FLOPs per token = 3 × forward, forward per layer
= 2·4H·(H+I), plus 2·H·V for the output layer).

    .venv/bin/python bench/train_throughput.py                    # all workloads
    .venv/bin/python bench/train_throughput.py --workload char --steps 20
    .venv/bin/python bench/train_throughput.py --precision both   # float32 and bf16, one run

With bf16 in ``--precision`` PyTorch also trains under ``torch.autocast("cpu",
torch.bfloat16)``, and the output gives textgen bf16 / PyTorch autocast beside textgen
float32 / PyTorch float32. PyTorch's OpenMP threads spin at their barriers: on a machine
whose cores are oversubscribed (load average above the core count) its rate collapses by
10x or more from one run to the next, so read its median with its runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import sgemm_gflops  # noqa: E402
from textgen import config as config_mod  # noqa: E402
from textgen.corpus.examples import prepare  # noqa: E402
from textgen.machine import machine_line  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"


@dataclass(frozen=True)
class Workload:
    name: str
    corpus: Path
    level: str
    embedding: int
    units: int
    seq_len: int
    batch: int
    max_vocab: int = 0


WORKLOADS = {
    "char": Workload("char", SHAKESPEARE, "char", 64, 256, 100, 64),
    # the 2x512 model of configs/shakespeare-char-hour.toml
    "char512": Workload("char512", SHAKESPEARE, "char", 64, 512, 100, 64),
    "word20": Workload("word20", DATA / "ptb" / "ptb.train.txt", "word", 200, 200, 20, 20, 10_002),
    "word64": Workload("word64", DATA / "ptb" / "ptb.train.txt", "word", 200, 200, 20, 64, 10_002),
}


def textgen_config(w: Workload) -> config_mod.Config:
    base = config_mod.Config()
    return config_mod.Config(
        data=replace(
            base.data, corpus=str(w.corpus), level=w.level, mode="stream", seq_len=w.seq_len,
            val_split=0.0, max_vocab=w.max_vocab,
        ),
        model=replace(base.model, cell="lstm", embedding_dim=w.embedding, units=w.units, layers=2),
        train=replace(base.train, batch_size=w.batch, learning_rate=0.002, clipnorm=5.0),
    )  # fmt: skip


def flops_per_token(w: Workload, vocab: int) -> float:
    forward = 2 * 4 * w.units * (w.units + w.embedding) + 2 * 4 * w.units * (2 * w.units)
    forward += 2 * w.units * vocab
    return 3.0 * forward


class TextgenSide:
    """textgen's own training step (the one ``textgen train`` runs), at ``precision``:
    float32 is the trainer's own step; bfloat16 is the same step built over
    ``training_forward(precision="bfloat16")``, compiled as ``step_jit`` says."""

    def __init__(self, cfg: config_mod.Config, prepared, precision: str = "float32") -> None:
        from textgen.training.loop import Trainer

        self.run = Trainer(cfg, prepared, Path("/nonexistent"), lambda _m: None)
        self.step = self.run._train_step  # the step `textgen train` runs, state handling included
        if precision != "float32":
            self.step = self._step_at(cfg, precision)

    def _step_at(self, cfg: config_mod.Config, precision: str):
        from textgen.model.network import training_forward
        from textgen.model.precision import step_jit
        from textgen.training.steps import Steps

        run = self.run
        forward = training_forward(run.model, cfg.model, mask_padding=False, precision=precision)
        jit = step_jit(precision, cfg.train.jit_compile)
        steps = Steps(
            run.model, run.optimizer, forward, jit, None, None, cfg.train.clipnorm,
            precision=precision, width=run.prepared.train.width,
        )  # fmt: skip
        zero = np.zeros((), np.float32)
        return lambda x, y: steps.train_step(x, y, zero)

    def initial_weights(self) -> dict[str, np.ndarray]:
        from textgen.model.network import weight_arrays

        return {k: v for k, v in weight_arrays(self.run.model).items() if k != "cell"}

    def train(self, batches) -> tuple[float, float]:
        total = count = 0.0
        start = time.perf_counter()
        for x, y in batches:
            loss_sum, tokens, _, _ = self.step(x, y)
            total, count = total + float(loss_sum), count + float(tokens)
        return time.perf_counter() - start, total / count


# Keras' Adam adds its epsilon to sqrt(v) before the bias correction, PyTorch's after it:
# Keras' step is lr·m̂ / (sqrt(v̂) + ε/sqrt(1 - β2^t)). The PyTorch side sets its epsilon
# to that value before every step, so both run the same update rule. (With a constant
# epsilon the first updates differ: early LSTM gradients are small enough, about 1e-6,
# for the placement to matter.)
KERAS_EPSILON = 1e-7


class TorchSide:
    """The same model in PyTorch: Embedding → nn.LSTM(2 layers) → Linear, Adam, clipping.

    ``autocast``: the forward (and so the backward) under ``torch.autocast("cpu",
    torch.bfloat16)``, PyTorch's bf16 mixed precision: bf16 products (oneDNN's bf16 LSTM and
    linear layers) over float32 parameters, the loss in float32."""

    def __init__(
        self, weights: dict[str, np.ndarray], lr: float, clipnorm: float, autocast: bool = False
    ) -> None:
        import torch

        self.autocast = autocast

        vocab, emb = weights["embedding"].shape
        units = weights["rnn_0_recurrent"].shape[0]
        self.torch = torch
        self.emb = torch.nn.Embedding(vocab, emb)
        self.rnn = torch.nn.LSTM(emb, units, num_layers=2, batch_first=True)
        self.out = torch.nn.Linear(units, vocab)
        with torch.no_grad():  # the very same initial weights (Keras i,f,c,o = torch i,f,g,o)
            self.emb.weight.copy_(torch.from_numpy(weights["embedding"]))
            for i in range(2):
                getattr(self.rnn, f"weight_ih_l{i}").copy_(
                    torch.from_numpy(weights[f"rnn_{i}_kernel"].T.copy())
                )
                getattr(self.rnn, f"weight_hh_l{i}").copy_(
                    torch.from_numpy(weights[f"rnn_{i}_recurrent"].T.copy())
                )
                getattr(self.rnn, f"bias_ih_l{i}").copy_(torch.from_numpy(weights[f"rnn_{i}_bias"]))
                # nn.LSTM adds a second bias (bias_hh); a trained second bias doubles the
                # bias' Adam step, so it stays at zero, frozen: one bias, as in Keras
                getattr(self.rnn, f"bias_hh_l{i}").zero_()
                getattr(self.rnn, f"bias_hh_l{i}").requires_grad_(False)
            self.out.weight.copy_(torch.from_numpy(weights["out_kernel"].T.copy()))
            self.out.bias.copy_(torch.from_numpy(weights["out_bias"]))
        modules = (self.emb, self.rnn, self.out)
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=lr, eps=KERAS_EPSILON)
        self.clipnorm = clipnorm
        self.steps = 0

    def keras_epsilon(self) -> None:
        """Make this step's Adam update Keras' (see KERAS_EPSILON)."""
        self.steps += 1
        beta2 = self.opt.param_groups[0]["betas"][1]
        for group in self.opt.param_groups:
            group["eps"] = KERAS_EPSILON / (1.0 - beta2**self.steps) ** 0.5

    def train(self, batches) -> tuple[float, float]:
        torch = self.torch
        total = 0.0
        n = 0
        start = time.perf_counter()
        for x, y in batches:
            xt = torch.from_numpy(x.astype(np.int64))
            yt = torch.from_numpy(y.astype(np.int64))
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=self.autocast):
                h, _ = self.rnn(self.emb(xt))
                logits = self.out(h)
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), yt.reshape(-1)
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.clipnorm)
            self.keras_epsilon()
            self.opt.step()
            total += float(loss.detach()) * yt.numel()
            n += yt.numel()
        return time.perf_counter() - start, total / n


def batches_for(prepared, batch: int, start: int, steps: int):
    x, y = prepared.train.inputs, prepared.train.targets
    order = np.random.default_rng(0).permutation(len(x))
    for s in range(start, start + steps):
        idx = order[(s * batch) % (len(x) - batch) :][:batch]
        yield x[idx], y[idx]


def run_workload(w: Workload, args, gflops: float) -> None:
    try:
        import torch
    except ImportError:
        torch = None
    cfg = textgen_config(w)
    prepared = prepare(cfg.data)
    vocab = len(prepared.tokenizer.vocab)
    sides: dict[str, object] = {}
    for precision in args.precisions:
        sides[f"textgen {precision}"] = TextgenSide(cfg, prepared, precision)
    first = next(iter(sides.values()))
    if torch is not None:
        weights = first.initial_weights()
        lr, clip = cfg.train.learning_rate, cfg.train.clipnorm
        sides["pytorch float32"] = TorchSide(weights, lr, clip)
        if "bfloat16" in args.precisions:
            sides["pytorch autocast"] = TorchSide(weights, lr, clip, autocast=True)
    tokens = args.steps * w.batch * w.seq_len
    for side in sides.values():  # trace, allocate, warm caches
        side.train(batches_for(prepared, w.batch, 0, args.warmup))
    times: dict[str, list[float]] = {name: [] for name in sides}
    losses: dict[str, list[float]] = {name: [] for name in sides}
    start = args.warmup
    for _ in range(args.repeats):  # A B A B ...: all see the same batches in the same order
        for name, side in sides.items():
            secs, loss = side.train(batches_for(prepared, w.batch, start, args.steps))
            times[name].append(secs)
            losses[name].append(loss)
        start += args.steps
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    fpt = flops_per_token(w, vocab)
    print(f"\n## {w.name}: vocab {vocab}, 2x{w.units} LSTM, embedding {w.embedding}, ", end="")
    print(f"seq {w.seq_len}, batch {w.batch}")
    print(
        f"{args.steps} timed steps x {args.repeats} runs after {args.warmup} warm-up steps; ",
        end="",
    )
    print(f"torch threads {torch.get_num_threads()}" if torch else "PyTorch not installed")
    for name in sides:
        spread = ", ".join(f"{tokens / s:,.0f}" for s in times[name])
        roof = rate[name] * fpt / (gflops * 1e9)
        print(
            f"{name:16} {rate[name]:>9,.0f} tokens/s  (runs {spread})  roofline {roof:.0%}  ",
            end="",
        )
        print(f"loss {losses[name][-1]:.4f}")
    base = "textgen float32"
    for name in sides:
        if name != base and base in sides:
            gap = abs(losses[name][-1] - losses[base][-1]) / losses[base][-1]
            print(f"{name} / {base}  {rate[name] / rate[base]:.2f}x   loss gap {gap:.1%}")
    pairs = [("textgen float32", "pytorch float32"), ("textgen bfloat16", "pytorch autocast")]
    for ours, theirs in pairs:
        if ours in sides and theirs in sides:
            print(f"{ours} / {theirs}  {rate[ours] / rate[theirs]:.2f}x")
    if torch is None:
        print("pytorch reference: not measured (torch is not installed)")
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


FIRST_STEP = """
import time, sys
start = time.perf_counter()
sys.path.insert(0, {root!r})
from pathlib import Path
from textgen import config as config_mod
from textgen.corpus.examples import prepare
from textgen.training.batches import batches
from textgen.training.loop import Trainer
cfg = config_mod.load({config!r}).with_overrides(['data.corpus="{corpus}"'])
prepared = prepare(cfg.data)
run = Trainer(cfg, prepared, Path("/nonexistent"), lambda _m: None)
_, x, y = next(batches(prepared.train, cfg.train.batch_size, cfg.train.seed, 1, 0))
float(run._train_step(x, y)[0])
print(time.perf_counter() - start)
"""


def time_to_first_step() -> float:
    """Seconds from a fresh interpreter to the first optimizer step of the char config
    (imports, reading and tokenizing the corpus, building and compiling included)."""
    import subprocess

    code = FIRST_STEP.format(
        root=str(ROOT),
        config=str(ROOT / "configs" / "shakespeare-char.toml"),
        corpus=DATA / "tinyshakespeare" / "input.txt",
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-first-step", action="store_true")
    parser.add_argument(
        "--precision", choices=["float32", "bfloat16", "both"], default="float32",
        help="textgen's compute precision; both: float32 and bfloat16 side by side",
    )  # fmt: skip
    args = parser.parse_args()
    args.precisions = ["float32", "bfloat16"] if args.precision == "both" else [args.precision]
    try:
        import torch
    except ImportError:
        torch = None

    from textgen._tf import tensorflow

    tf = tensorflow()
    gflops = sgemm_gflops()
    print(f"# {time.strftime('%Y-%m-%d')}  {machine_line()}, ", end="")
    print(f"sgemm {gflops:.0f} GFLOP/s (numpy, 1024^3)")
    torch_version = torch.__version__ if torch else "not installed"
    print(f"# tensorflow {tf.__version__}, torch {torch_version}, numpy {np.__version__}")
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    for name in names:
        run_workload(WORKLOADS[name], args, gflops)
    if not args.skip_first_step:
        runs = [time_to_first_step() for _ in range(2)]
        detail = f"runs {runs[0]:.1f}, {runs[1]:.1f}"
        print(f"\ntime to first step, char config: {min(runs):.1f} s ({detail})")


if __name__ == "__main__":
    main()
