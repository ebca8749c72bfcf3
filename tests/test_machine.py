"""The machine a run trained on: the CPU line ``textgen train`` ends with, the tokens it
trained and the wall time since the process started (what a one-hour record reports), and
the machine recorded in metadata.json."""

from __future__ import annotations

import json
import math
import os
import re

from click.testing import CliRunner

from textgen import machine
from textgen.cli import main
from textgen.report import tokens_trained, training_line
from textgen.rundir import parse_history

from .conftest import TOY_CONFIG


def test_the_machine_line_names_the_cpu_its_flags_and_cores():
    line = machine.machine_line()
    assert line.startswith(machine.cpu_model())
    assert line.endswith(f", {machine.cores()} cores") and 1 <= machine.cores() <= (
        os.cpu_count() or 1
    )
    shown = machine.shown_flags()
    assert set(shown) <= set(machine.SHOWN_FLAGS) and set(shown) <= machine.cpu_flags()
    assert f"[{' '.join(shown) or 'no AVX2'}]" in line


def test_process_seconds_counts_from_the_process_start():
    first = machine.process_seconds()
    assert 0.0 < first < 24 * 3600  # a test process started within the day
    assert machine.process_seconds() >= first


def test_tokens_trained_sums_each_epoch_and_skips_what_was_not_measured():
    rows = [
        {"epoch": 1, "tokens_per_s": 1000.0, "seconds": 2.5},
        {"epoch": 2, "tokens_per_s": 2000.0, "seconds": 1.25},
        {"epoch": 3, "tokens_per_s": math.nan, "seconds": 1.0},  # a cut epoch with no rate
    ]
    assert tokens_trained(rows) == 5000
    assert tokens_trained([]) == 0
    line = training_line(rows, 90.0, 150.0, "Some CPU [avx2], 2 cores")
    assert line == (
        "trained 5,000 tokens in 1.5 min of training steps "
        "(2.5 min since this process started) on Some CPU [avx2], 2 cores"
    )


def test_train_ends_with_the_tokens_the_time_and_the_cpu(tmp_path):
    out = tmp_path / "toy"
    result = CliRunner().invoke(
        main, ["train", "--config", str(TOY_CONFIG), "--out", str(out), "--set", "train.epochs=3"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    found = [ln for ln in lines if ln.startswith("trained ")]
    assert len(found) == 1, lines
    match = re.fullmatch(
        r"trained ([\d,]+) tokens in ([\d.]+) min of training steps "
        r"\(([\d.]+) min since this process started\) on (.+)",
        found[0],
    )
    assert match, found[0]
    history = parse_history((out / "history.csv").read_text(encoding="utf-8"))
    assert len(history) == 3
    assert int(match[1].replace(",", "")) == tokens_trained(history) > 0
    assert match[4] == machine.machine_line()
    assert lines[-1].startswith(f"saved {out}")  # the last line is still where the run is
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert meta["machine"] == {
        "cpu": machine.cpu_model(),
        "flags": machine.shown_flags(),
        "cores": machine.cores(),
    }


def test_each_field_comes_from_the_first_source_that_has_it(monkeypatch):
    """An ARM cpuinfo (flags as Features, no model name): the flags come from it without
    asking lscpu, the model from lscpu; where neither names a model, the platform's."""
    lines = ["processor\t: 0", "Features\t: fp asimd neon", "CPU implementer\t: 0x41"]
    assert machine._fields(lines, "model name", ("flags", "Features")) == (
        "", {"fp", "asimd", "neon"},
    )  # fmt: skip

    def no_lscpu() -> tuple[str, frozenset[str]]:
        raise AssertionError("lscpu asked for a field /proc/cpuinfo has")

    monkeypatch.setattr(machine, "_proc", lambda: ("", frozenset({"neon"})))
    monkeypatch.setattr(machine, "_lscpu", no_lscpu)
    assert machine.cpu_flags() == {"neon"}
    monkeypatch.setattr(machine, "_lscpu", lambda: ("Neoverse-N1", frozenset()))
    assert machine.cpu_model() == "Neoverse-N1"
    monkeypatch.setattr(machine, "_lscpu", lambda: ("", frozenset()))
    assert machine.cpu_model() == (machine.platform.processor() or machine.platform.machine())
