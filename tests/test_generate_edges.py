"""generate's edges (issue 21): plot's --out, eval's character count and its message for a
folder; the decoding bench runs textgen by the interpreter it runs under."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from textgen.cli import main

from .test_run_dir import assert_one_line_error

GO = "가는 말이 고와야 오는 말이 곱다"  # what the toy run says after 가는
HIS = "그의 말이 법이다"  # and after 그의


def invoke(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


# -- 6. plot --out ---------------------------------------------------------------------------
def test_plot_into_a_folder_writes_loss_png_inside(toy_run, tmp_path):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "plots"
    folder.mkdir()
    result = invoke("plot", toy_run, "--out", folder)
    assert result.exit_code == 0, result.output
    assert (folder / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert result.stdout == f"{folder / 'loss.png'}\n"


def test_plot_out_with_a_trailing_slash_is_a_folder(toy_run, tmp_path):
    pytest.importorskip("matplotlib")
    result = invoke("plot", toy_run, "--out", f"{tmp_path / 'plots'}/")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plots").is_dir()
    assert (tmp_path / "plots" / "loss.png").read_bytes().startswith(b"\x89PNG")


def test_plot_under_a_file_or_in_an_unwritable_place_is_one_line(toy_run, tmp_path):
    pytest.importorskip("matplotlib")
    note = tmp_path / "note.txt"
    note.write_text("mine\n")
    result = invoke("plot", toy_run, "--out", note / "loss.png")
    assert_one_line_error(result, 1, f"cannot write {note / 'loss.png'}: {note} is a file")
    assert note.read_text() == "mine\n"
    result = invoke("plot", toy_run, "--out", f"{note}/")
    assert_one_line_error(result, 1, f"{note} is a file")
    if Path("/sys").is_dir():  # not writable even by root
        result = invoke("plot", toy_run, "--out", "/sys/loss.png")
        assert_one_line_error(result, 1, "cannot write /sys/loss.png: permission denied")


# -- 12. eval ------------------------------------------------------------------------------
def test_crlf_scores_as_lf(toy_run, tmp_path):
    lf, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lf.write_bytes(f"{HIS}\n{GO}\n".encode())
    crlf.write_bytes(f"{HIS}\r\n{GO}\r\n".encode())
    scores = []
    for path in (lf, crlf):
        result = invoke("eval", "--model", toy_run, path, "--format", "json")
        assert result.exit_code == 0, result.output
        scores.append(json.loads(result.stdout)[str(path)])
    assert scores[0] == scores[1]
    assert scores[0]["characters"] == len(HIS) + len(GO) + 2


def test_eval_of_a_folder_says_it_is_a_folder(toy_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("eval", "--model", toy_run, ".")
    assert_one_line_error(result, 1, ". is a folder, not a text file")
    assert "data.corpus" not in result.stderr


# -- 17. the bench runs textgen under its own interpreter ----------------------------------
def test_bench_generate_runs_textgen_under_its_own_interpreter(toy_run, tmp_path, monkeypatch):
    from .test_bench import load_bench

    bench = load_bench("generate")
    monkeypatch.setattr(bench, "ROOT", tmp_path)  # an install with no .venv/bin/textgen
    monkeypatch.setattr(bench, "SEED", "그의")
    assert 0 < bench.first_token_latency(toy_run) < 60
