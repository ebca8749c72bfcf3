"""Decoding speed: textgen's stateful decoding against the tutorial's re-feed and PyTorch.

One 2x256 char LSTM (embedding 64, vocabulary 65, the tiny Shakespeare sizes) with one
set of weights, decoded greedily for ``--tokens`` tokens after a 6-character seed, in
one process:

* textgen: ``Generator`` over the numpy twin (the path ``textgen generate`` runs),
  batch 1, and 16 samples as one batch;
* re-feed: the classic tutorial's loop, which pads the whole growing prefix and calls
  ``model.predict`` on the Keras model for every new token, then takes the argmax
  (padded only to the prefix's own length, which is cheaper than the tutorial's fixed
  ``max_len``);
* PyTorch: ``nn.Embedding`` + ``nn.LSTM`` + ``nn.Linear`` with the same weights, one step
  per token carrying ``(h, c)``, under ``torch.inference_mode`` (needs the ``bench`` extra).

textgen and PyTorch run alternately ``--repeats`` times (A B A B ...) and report medians;
all three must produce the same greedy tokens. Also reported: the per-token cost early
(tokens 10-110) against late (900-1000), and the time from starting ``textgen generate``
to its first generated character on a terminal (a pseudo-terminal here), TensorFlow-free,
run as ``python -m textgen`` by the interpreter the bench runs under.

    .venv/bin/python bench/generate.py                 # full run (re-feed takes minutes)
    .venv/bin/python bench/generate.py --tokens 200    # quick look
"""

from __future__ import annotations

import argparse
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

from bench.machine import machine_line  # noqa: E402
from textgen.config import ModelConfig  # noqa: E402
from textgen.decoding.generate import Generator  # noqa: E402
from textgen.decoding.numpy_lm import NumpyLM  # noqa: E402
from textgen.text import fit_tokenizer  # noqa: E402

SEED = "ROMEO:"
ALPHABET = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # 65 chars


def build(seed: int = 0):
    """A Keras char LSTM with random non-trivial weights, its tokenizer and numpy twin."""
    from textgen._tf import keras
    from textgen.model.network import build_model

    keras().utils.set_random_seed(seed)
    tokenizer = fit_tokenizer([ALPHABET], "char", eos=False)
    cfg = ModelConfig(cell="lstm", embedding_dim=64, units=256, layers=2)
    model = build_model(cfg, len(tokenizer.vocab), mask_padding=False)
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # spread the logits so greedy does not stall on one char
        weights = layer.get_weights()
        if weights:
            layer.set_weights(
                [w + 0.05 * rng.standard_normal(w.shape).astype(np.float32) for w in weights]
            )
    return model, tokenizer, NumpyLM.from_model(model)


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


def save_run(model, tokenizer, directory: Path) -> Path:
    """A minimal run directory for the latency measurement."""
    from textgen import rundir
    from textgen.config import Config, DataConfig

    run = directory / "bench-char"
    run.mkdir(parents=True)
    cfg = Config(
        data=DataConfig(level="char", mode="stream"),
        model=ModelConfig(embedding_dim=64, units=256, layers=2),
    )
    with rundir.Commit(run) as commit:
        commit.write_text(rundir.TOKENIZER, tokenizer.to_json())
        rundir.write_bundle(commit, model, cfg.to_toml(), {"parameters": model.count_params()})
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--skip-refeed", action="store_true")
    args = parser.parse_args()

    model, tokenizer, lm = build()
    import torch

    net = torch_model(lm)
    ours, theirs, flat = [], [], []
    for _ in range(args.repeats):  # A B A B ...
        ids, secs, per_token = textgen_decode(lm, tokenizer, args.tokens)
        ours.append(secs)
        if args.tokens >= 1000:
            flat.append(np.median(per_token[900:1000]) / np.median(per_token[10:110]))
        tids, tsecs = torch_decode(net, tokenizer, args.tokens)
        theirs.append(tsecs)
    assert tids == ids, "PyTorch and textgen disagree on the greedy tokens"
    batch_secs = [
        textgen_decode(lm, tokenizer, args.tokens, batch=args.batch)[1] for _ in range(args.repeats)
    ]

    n = args.tokens
    rate = n / statistics.median(ours)
    torch_rate = n / statistics.median(theirs)
    batch_rate = args.batch * n / statistics.median(batch_secs)
    print(f"# {time.strftime('%Y-%m-%d')}  {machine_line()}")
    print(
        f"# python {platform.python_version()}, numpy {np.__version__}, "
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}"
    )
    row("tokens per run", f"{n}")
    row("textgen batch 1 tokens/s", f"{rate:,.0f}", rates(n, ours))
    row("pytorch batch 1 tokens/s", f"{torch_rate:,.0f}", rates(n, theirs))
    row("textgen / pytorch", f"{rate / torch_rate:.2f}x")
    row(
        f"textgen batch {args.batch} tokens/s",
        f"{batch_rate:,.0f}",
        f"{batch_rate / rate:.1f}x batch 1",
    )
    if flat:
        row("per-token cost 900-1000 / 10-110", f"{statistics.median(flat):.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        run = save_run(model, tokenizer, Path(tmp))
        latencies = [first_token_latency(run) for _ in range(args.repeats)]
    detail = "runs " + ", ".join(f"{x:.2f}" for x in latencies)
    row("first char of `textgen generate`", f"{statistics.median(latencies):.2f} s", detail)
    if not args.skip_refeed:
        rids, rsecs = refeed_decode(model, tokenizer, n)
        same = next((i for i, (a, b) in enumerate(zip(rids, ids, strict=True)) if a != b), n)
        row("re-feed batch 1 tokens/s", f"{n / rsecs:,.1f}", f"{rsecs:.1f} s")
        row("re-feed tokens equal to textgen's", f"{same}/{n}")
        row("textgen / re-feed", f"{rate / (n / rsecs):,.0f}x")


def row(label: str, value: str, detail: str = "") -> None:
    print(f"{label:<34}{value:>10}" + (f"  ({detail})" if detail else ""))


def rates(n: int, seconds: list[float]) -> str:
    return "runs " + ", ".join(f"{n / s:,.0f}" for s in seconds)


if __name__ == "__main__":
    main()
