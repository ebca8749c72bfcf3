"""generate's edges (issue 21): the decoding bench runs textgen by the interpreter it
runs under."""

from __future__ import annotations

from click.testing import CliRunner

from textgen.cli import main

GO = "가는 말이 고와야 오는 말이 곱다"  # what the toy run says after 가는
HIS = "그의 말이 법이다"  # and after 그의


def invoke(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


# -- 17. the bench runs textgen under its own interpreter ----------------------------------
def test_bench_generate_runs_textgen_under_its_own_interpreter(toy_run, tmp_path, monkeypatch):
    from .test_bench import load_bench

    bench = load_bench("generate")
    monkeypatch.setattr(bench, "ROOT", tmp_path)  # an install with no .venv/bin/textgen
    monkeypatch.setattr(bench, "SEED", "그의")
    assert 0 < bench.first_token_latency(toy_run) < 60
