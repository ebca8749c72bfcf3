"""The benchmark scripts drive textgen's own training step; a change to that step's
signature must not leave ``make bench-train`` broken (PyTorch is not needed here)."""

from __future__ import annotations

import importlib.util
import math
import sys

from tests.conftest import ROOT, TOY_CORPUS


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_train_throughput_textgen_side_trains_through_the_real_step():
    from textgen.corpus.examples import prepare

    bench = load_bench("train_throughput")
    work = bench.Workload("toy", TOY_CORPUS, "char", 8, 16, 5, 4)
    cfg = bench.textgen_config(work)
    prepared = prepare(cfg.data)
    side = bench.TextgenSide(cfg, prepared)
    assert {"embedding", "rnn_0_recurrent", "out_kernel"} <= set(side.initial_weights())
    seconds, first = side.train(bench.batches_for(prepared, work.batch, 0, 1))
    _, later = side.train(bench.batches_for(prepared, work.batch, 0, 1))  # the same batch again
    assert seconds > 0 and math.isfinite(first) and later < first  # it trained
