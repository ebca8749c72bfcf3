"""textgen export's refusals: each is one ``error:`` line, a non-zero exit, no traceback,
and nothing written (every file under the test folder hashed before and after)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from textgen.cli import main


def _tree(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with the sha256 of its bytes (folders and links too)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "link:" + str(path.readlink())
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _refused(args: list[str], where: Path, code: int) -> str:
    """Run ``textgen export ARGS``; check it fails with one line and touches nothing."""
    before = _tree(where)
    result = CliRunner().invoke(main, ["export", *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    assert _tree(where) == before
    return lines[0]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me\n", encoding="utf-8")
    return tmp_path


def test_run_without_weights(work, toy_run):
    from textgen import rundir

    run = work / "untrained"
    run.mkdir()
    with rundir.Commit(run) as commit:  # what a run holds before its first best model
        commit.write_text(rundir.CONFIG, (toy_run / rundir.CONFIG).read_text(encoding="utf-8"))
    line = _refused([str(run), "--format", "savedmodel", "--out", str(work / "x")], work, 1)
    assert line == (
        f"error: {run} has no trained weights yet (weights.npz): train it first, or wait "
        "for its first epoch to end"
    )


def test_missing_run(work):
    line = _refused([str(work / "nope"), "--format", "litert", "--out", str(work / "x")], work, 1)
    assert line == f"error: run directory not found: {work / 'nope'}"


def test_unknown_format(work, toy_run):
    line = _refused([str(toy_run), "--format", "onnx", "--out", str(work / "x")], work, 2)
    assert line == (
        "error: Invalid value for '--format': 'onnx' is not one of 'savedmodel', 'litert'; "
        "see 'main export --help'"
    )


def test_quantize_is_for_litert_only(work, toy_run):
    args = [str(toy_run), "--format", "savedmodel", "--out", str(work / "x")]
    line = _refused([*args, "--quantize", "dynamic"], work, 2)
    assert line == "error: --quantize applies to --format litert only"


def test_existing_out_is_refused_without_force(work, toy_run):
    out = work / "mine"
    line = _refused([str(toy_run), "--format", "litert", "--out", str(out)], work, 2)
    assert line == f"error: --out {out} exists and is not empty; pass --force to replace it"


def test_force_replaces_only_an_earlier_export(work, toy_run):
    out = work / "mine"
    args = [str(toy_run), "--format", "litert", "--out", str(out), "--force"]
    line = _refused(args, work, 2)
    assert line == (
        f"error: --out {out} is not an earlier export (no export.json); --force replaces "
        "only those: remove it yourself or choose another folder"
    )


def test_force_replaces_an_earlier_export(work, toy_run):
    out = work / "exports" / "toy"  # missing parents are made
    cli = CliRunner()
    first = cli.invoke(main, ["export", str(toy_run), "--format", "litert", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith(f"wrote {out} (litert: step; ")
    again = cli.invoke(main, ["export", str(toy_run), "--format", "litert", "--out", str(out)])
    assert again.exit_code == 2
    args = ["export", str(toy_run), "--format", "litert", "--out", str(out), "--force"]
    forced = cli.invoke(main, [*args, "--quantize", "dynamic"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "export.json").read_text(encoding="utf-8"))["quantize"] == "dynamic"
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy"]  # nothing left aside
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.tflite", "vocab.json"]


def test_out_that_is_a_file_or_under_one(work, toy_run):
    line = _refused(
        [str(toy_run), "--format", "litert", "--out", str(work / "mine" / "notes.txt")], work, 2
    )
    assert line == f"error: --out {work / 'mine' / 'notes.txt'} exists and is not a folder"
    under = work / "mine" / "notes.txt" / "x"
    line = _refused([str(toy_run), "--format", "litert", "--out", str(under)], work, 2)
    assert line == f"error: --out {under}: {work / 'mine' / 'notes.txt'} is not a folder"


def test_model_too_large_for_litert(work, toy_run, monkeypatch):
    from textgen.export import litert

    monkeypatch.setattr(litert, "MAX_BYTES", 1000)
    size = sum(v.size * 4 for k, v in litert.weight_arrays(toy_run).items() if k != "cell")
    line = _refused([str(toy_run), "--format", "litert", "--out", str(work / "x")], work, 1)
    assert line == (
        f"error: the model's weights are {size:,} bytes of float32 and a LiteRT file holds "
        "at most 1,000 (one FlatBuffer with 32-bit offsets); export it with --format savedmodel"
    )


@pytest.mark.parametrize("fmt", ["savedmodel", "litert"])
def test_interrupted_export_leaves_nothing(work, toy_run, monkeypatch, fmt):
    """Ctrl-C in the middle of writing: exit 130, --out not made, no temporary folder."""
    from textgen.export import litert, savedmodel

    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(litert if fmt == "litert" else savedmodel,
                        "convert_step" if fmt == "litert" else "write", interrupt)  # fmt: skip
    before = _tree(work)
    out = work / "new" / "x"
    result = CliRunner().invoke(main, ["export", str(toy_run), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 130 and result.stderr == "interrupted\n"
    assert _tree(work) == before  # neither new/ nor new/.x.export-* is left


def test_converter_failure_is_one_line(work, toy_run, monkeypatch):
    """Whatever LiteRT's converter raises becomes one line naming it; nothing is left."""
    from textgen._tf import tensorflow

    class Failing:
        optimizations = ()  # what convert_step sets for --quantize

        def convert(self):
            raise RuntimeError("unsupported op: Foo\nmore detail")

    converter = tensorflow().lite.TFLiteConverter
    monkeypatch.setattr(converter, "from_saved_model", lambda *_a, **_k: Failing())
    line = _refused([str(toy_run), "--format", "litert", "--out", str(work / "x")], work, 1)
    assert line == (
        "error: LiteRT's converter cannot hold this model (RuntimeError: unsupported op: Foo)"
    )


def test_a_vocabulary_utf8_cannot_spell_is_refused():
    """No corpus textgen reads yields a lone surrogate, but a tokenizer.json can hold one:
    the export says which token, not a UnicodeEncodeError traceback."""
    from textgen.errors import DataError
    from textgen.export.folder import check_tokens

    check_tokens(["<pad>", "<unk>", "가", "\U0010fffd"])
    with pytest.raises(DataError) as err:
        check_tokens(["<pad>", "<unk>", "a\ud800"])
    assert str(err.value) == (
        "token 2 of the vocabulary ('a\\ud800') is not valid Unicode text (a lone surrogate); "
        "an export holds its tokens as UTF-8, which cannot spell it"
    )
