"""generate's edges (issue 21): bounds and one-line errors, seeds read as a pipeline's input,
one rule for --stop, seeds printed as the model reads them, eval's character count, plot's
--out, and the decoding bench run by the interpreter it runs under.

Word-level cases use the session's trained toy run. Char and jamo cases use a scripted
model (it emits a fixed text whatever it is fed), so that what a stop string must cut is
known exactly; it stands in for the run through ``load_bundle``.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from textgen.cli import generate as cli
from textgen.cli import main
from textgen.text import fit_tokenizer

from .test_run_dir import assert_one_line_error

GO = "가는 말이 고와야 오는 말이 곱다"  # what the toy run says after 가는
HIS = "그의 말이 법이다"  # and after 그의


def invoke(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def textgen(*args: str) -> list[str]:
    return [sys.executable, "-m", "textgen", *args]


# -- a scripted model ----------------------------------------------------------------------
class ScriptedLM:
    """Whatever it is fed, the next token is the next id of ``script`` (the last repeats);
    the state is the position in the script. Counts its recurrent steps."""

    def __init__(self, script: np.ndarray, vocab_size: int) -> None:
        self.script, self.vocab_size, self.steps = np.asarray(script), vocab_size, 0

    def _logits(self, pos: np.ndarray) -> np.ndarray:
        out = np.zeros((len(pos), self.vocab_size), np.float32)
        out[np.arange(len(pos)), self.script[np.minimum(pos, len(self.script) - 1)]] = 10.0
        return out

    def run(self, ids: np.ndarray, state):
        pos = np.zeros(len(ids), np.int64) if state is None else state
        logits = np.zeros((*ids.shape, self.vocab_size), np.float32)
        logits[:, -1] = self._logits(pos)
        return logits, pos

    def step(self, ids: np.ndarray, state):
        self.steps += 1
        pos = state + 1
        return self._logits(pos), pos


def scripted(monkeypatch, text: str, continuation: str, normalize: str = "nfc") -> ScriptedLM:
    """Make every run read as a char-level model (``normalize="nfd"``: jamo) fitted on
    ``text`` that continues any seed with ``continuation``."""
    import textgen.rundir

    tokenizer = fit_tokenizer([text], "char", eos=False, normalize=normalize)
    lm = ScriptedLM(tokenizer.encode(continuation), len(tokenizer.vocab))
    bundle = SimpleNamespace(lm=lm, tokenizer=tokenizer)
    monkeypatch.setattr(textgen.rundir, "resolve_run", lambda model: model)
    monkeypatch.setattr(textgen.rundir, "load_bundle", lambda run: bundle)
    return lm


def on_a_pty(args: list[str]) -> str:
    """The output of a command whose stdout is a terminal (a pseudo-terminal)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdout=slave, stderr=subprocess.DEVNULL, close_fds=True)
    os.close(slave)
    seen = b""
    try:
        while select.select([master], [], [], 60)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        assert proc.wait(60) == 0
    return seen.decode("utf-8").replace("\r\n", "\n")


# -- 6. bounds and errors ------------------------------------------------------------------
def test_non_utf8_seed_lines_name_the_line_and_byte_and_the_others_generate(toy_run):
    stdin = "그의\n".encode() + b"\xffab\n" + "가는\n".encode()
    result = invoke("generate", "--model", toy_run, "-", input=stdin)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stdout.splitlines() == [HIS, "", GO]
    errors = result.stderr.strip().splitlines()
    assert errors == ["error: stdin line 2: not valid UTF-8 at byte 7 (0xff)"], errors


def test_a_non_utf8_seeds_file_names_the_file(toy_run, tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_bytes(b"\xc3\x28\n")
    result = invoke("generate", "--model", toy_run, seeds)
    assert_one_line_error(result, 1, f"{seeds} line 1: not valid UTF-8 at byte 0 (0xc3)")
    assert result.stdout == "\n"


def test_a_seed_line_past_the_limit_is_refused_and_the_next_generates(toy_run, monkeypatch):
    monkeypatch.setattr(cli, "MAX_SEED_BYTES", 10)
    result = invoke("generate", "--model", toy_run, "-", input="그의 " * 30 + "\n가는\n")
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == ["", GO]
    assert result.stderr.strip() == "error: stdin line 1: longer than 10 bytes; a seed is one line"


def test_a_missing_seeds_file_is_one_line(toy_run, tmp_path):
    result = invoke("generate", "--model", toy_run, tmp_path / "nope.txt")
    assert_one_line_error(result, 1, "seeds file not found")
    result = invoke("generate", "--model", toy_run, tmp_path)
    assert_one_line_error(result, 1, "is a folder")


def test_a_seed_that_is_not_utf8_is_one_line(toy_run):
    result = invoke("generate", "--model", toy_run, "--seed", "그의\udcff")  # as argv decodes it
    assert_one_line_error(result, 2, "--seed is not valid UTF-8")


@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "10000", "--length", "1000000"], "-n × --length must be at most 10,000,000"),
        (["--strategy", "beam", "--beam-width", "1000", "--length", "1000000"],
         "--beam-width × --length must be at most 10,000,000"),
        (["--strategy", "beam", "--beam-width", "100000000"], "--beam-width must be at most 1,000"),
        (["--strategy", "beam", "--beam-width", "2", "-n", "3"],
         "-n 3 is more than --beam-width 2"),
    ],
)  # fmt: skip
def test_sizes_past_their_bounds_are_refused(toy_run, args, message):
    result = invoke("generate", "--model", toy_run, "--seed", "그의", *args)
    assert_one_line_error(result, 2, message)


def test_beam_search_does_not_widen_the_beam_to_n():
    from textgen.decoding.sampling import beam_search

    logits = np.zeros((1, 5))
    with pytest.raises(ValueError, match="num"):
        beam_search(lambda ids, s: (np.zeros((len(ids), 5)), s), logits, None, width=2,
                    length=3, num=3)  # fmt: skip


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


# -- 7. seeds from stdin are a pipeline's input --------------------------------------------
def test_every_stdin_line_gets_its_result_in_order_and_bad_ones_an_error(toy_run):
    result = invoke("generate", "--model", toy_run, "-", input="그의\nxyz\n\n가는\n")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stdout.splitlines() == [HIS, "", "", GO]
    errors = result.stderr.strip().splitlines()
    unknown = "no token of the seed is in the model's vocabulary: 'xyz'"
    assert errors[0] == f"error: stdin line 2: {unknown}"
    assert errors[1].startswith("error: stdin line 3: the seed is empty")
    assert len(errors) == 2


def test_jsonl_from_stdin_gives_bad_lines_an_error_record(toy_run):
    result = invoke(
        "generate", "--model", toy_run, "-", "--format", "jsonl", "-n", "2",
        input="그의\r\nxyz\n가는",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("text") for r in records] == [HIS, HIS, None, None, GO, GO]
    assert (
        records[2]
        == records[3]
        == {
            "seed": "xyz",
            "line": 2,
            "error": "no token of the seed is in the model's vocabulary: 'xyz'",
        }
    )
    assert records[0]["seed"] == "그의" and records[0]["line"] == 1


def test_seeds_from_a_pipe_are_answered_as_they_arrive(toy_run):
    proc = subprocess.Popen(
        textgen("generate", "--model", str(toy_run), "-"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        proc.stdin.write("그의\n".encode())
        proc.stdin.flush()
        ready = select.select([proc.stdout], [], [], 30)[0]
        assert ready, "no text for the first seed while stdin is still open"
        assert proc.stdout.readline().decode() == HIS + "\n"
        proc.stdin.write("가는\n".encode())
        proc.stdin.close()
        assert proc.stdout.read().decode() == GO + "\n"
        assert proc.wait(30) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_closed_output_pipe_ends_generate_quietly(toy_run):
    proc = subprocess.Popen(
        textgen("generate", "--model", str(toy_run), "-"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        proc.stdin.write("그의\n".encode())
        proc.stdin.flush()
        assert select.select([proc.stdout], [], [], 30)[0], "no text for the first seed"
        assert proc.stdout.readline().decode() == HIS + "\n"
        proc.stdout.close()  # like `| head -1`
        proc.stdin.write("가는\n가는\n".encode())
        proc.stdin.close()
        assert proc.wait(30) == 141
        assert proc.stderr.read().decode() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- 8. one rule for --stop ----------------------------------------------------------------
JAMO_TEXT = "아가나다라마바사 자차카타파하"


def test_a_jamo_stop_of_two_syllables_stops_decoding(monkeypatch):
    lm = scripted(monkeypatch, JAMO_TEXT, "가나다라마바사 " * 20, normalize="nfd")
    result = invoke(
        "generate", "--model", "x", "--seed", "아", "--stop", "라마", "--length", "100",
        "--format", "jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["text"] == "아가나다"
    assert record["tokens"] == 6  # 가 나 다, two jamo each
    # decoding stopped at the 11th jamo: the 10th completed 라마, but 마 could still take a
    # final consonant until the next jamo (ᄇ of 바) showed it did not
    assert lm.steps == 10


def test_a_stop_that_begins_in_the_seed_does_not_count(monkeypatch):
    scripted(monkeypatch, "ROMEO: eat", "a tea", normalize="nfc")
    result = invoke("generate", "--model", "x", "--seed", "ROMEO: e", "--stop", "ea")
    assert result.stdout == "ROMEO: ea t\n"


@pytest.mark.parametrize("terminal", [False, True])
def test_a_stop_string_cuts_the_same_on_a_terminal_and_a_pipe(monkeypatch, terminal):
    scripted(monkeypatch, "ROMEO: eat,my lord", "eat, my lord")
    monkeypatch.setattr(cli, "_terminal", lambda: terminal)
    result = invoke("generate", "--model", "x", "--seed", "ROMEO:", "--stop", "ea")
    assert result.exit_code == 0, result.output
    assert result.stdout == "ROMEO:\n"
    result = invoke("generate", "--model", "x", "--seed", "ROMEO:", "--stop", "t,")
    assert result.stdout == "ROMEO:ea\n"


@pytest.mark.parametrize("stop", ["라마", "맘", "사 가", "ᄆ"])
def test_a_jamo_stop_cuts_the_same_on_a_terminal(monkeypatch, stop):
    scripted(monkeypatch, JAMO_TEXT, "가나다라마바사 " * 20, normalize="nfd")
    args = ["generate", "--model", "x", "--seed", "아", "--stop", stop]
    piped = invoke(*args).stdout
    monkeypatch.setattr(cli, "_terminal", lambda: True)
    assert invoke(*args).stdout == piped
    if stop == "라마":
        assert piped == "아가나다\n"


def test_a_stop_string_cuts_the_same_on_a_real_terminal(toy_run):
    args = textgen("generate", "--model", str(toy_run), "--seed", "가는", "--stop", "오는")
    assert on_a_pty(args) == "가는 말이 고와야\n"


def test_jsonl_tokens_count_what_the_stop_kept(toy_run):
    result = invoke(
        "generate", "--model", toy_run, "--seed", "가는", "--stop", "오는", "--format", "jsonl"
    )
    record = json.loads(result.stdout)
    assert record["text"] == "가는 말이 고와야" and record["tokens"] == 2


def test_beam_search_honours_stop(toy_run):
    result = invoke(
        "generate", "--model", toy_run, "--seed", "가는", "--strategy", "beam",
        "--stop", "오는", "--format", "jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["text"] == "가는 말이 고와야" and record["tokens"] == 2


def test_beam_search_stops_a_beam_at_its_stop_test():
    from textgen.decoding.sampling import beam_search

    table = np.full((6, 6), -5.0)
    table[:, 3] = 0.0  # every step prefers token 3

    def next_fn(ids, state):
        return table[np.asarray(ids)], state

    seen = []

    def stop(_row, ids):
        seen.append(len(ids))
        return ids[-2:] == [3, 3]

    out = beam_search(next_fn, table[[0]], np.zeros((1, 1)), width=2, length=50,
                      should_stop=stop, lookback=2)  # fmt: skip
    assert out.ids[0] == [3, 3]
    assert max(seen) <= 2  # the stop test sees a bounded tail, never the whole beam


# -- 11. seeds as the model reads them -----------------------------------------------------
def test_an_nfd_seed_is_printed_nfc(toy_run):
    result = invoke("generate", "--model", toy_run, "--seed", unicodedata.normalize("NFD", "그의"))
    assert result.exit_code == 0, result.output
    assert result.stdout == HIS + "\n"


def test_a_seed_with_extra_spaces_prints_single_spaces(toy_run):
    result = invoke("generate", "--model", toy_run, "--seed", " 그의 ")
    assert result.stdout == HIS + "\n"


def test_special_token_spellings_in_a_seed_are_text(toy_run):
    for special in ("<eos>", "<unk>", "<pad>"):
        result = invoke("generate", "--model", toy_run, "--seed", special)
        assert_one_line_error(result, 1, f"vocabulary: '{special}'")
    result = invoke("generate", "--model", toy_run, "--seed", "<eos> 그의", "--length", "1")
    assert result.exit_code == 0, result.output
    assert "read as <unk>: '<eos>'" in result.stderr
    assert result.stdout.startswith("<eos> 그의 ")


def test_jamo_seed_is_printed_composed(monkeypatch):
    scripted(monkeypatch, JAMO_TEXT, "나다", normalize="nfd")
    result = invoke("generate", "--model", "x", "--seed", unicodedata.normalize("NFD", "아가"),
                    "--length", "4")  # fmt: skip
    assert result.stdout == "아가나다\n"


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
