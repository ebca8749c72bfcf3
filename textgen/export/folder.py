"""``export_run``: check everything, write the export into a temporary folder beside
``--out``, and rename it into place, so ``--out`` is the whole export or what it was.

An existing ``--out`` that is not empty is refused unless ``force``; with ``force`` only
an earlier export (a folder holding ``export.json``) is replaced, never a folder of
other files. A run without trained weights, a model a format cannot hold and a
``--quantize`` the format has not are refused before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from textgen.errors import DataError, UsageError

FORMATS = ("savedmodel", "litert")
MARKER = "export.json"  # what an export folder holds, and the sign that it is one
VOCAB = "vocab.json"
SENTENCEPIECE = "sentencepiece.model"
TFLITE = "model.tflite"

LEFT_TO_CALLER = {
    "word": "NFC of the seed (unicodedata.normalize('NFC', seed)); lowercasing, punctuation "
    "stripping and the white-space split are done in the graph as textgen does them, "
    "code point by code point, except one context rule of str.lower: a lowercasing model "
    "lowers a word-final Greek capital sigma to σ where Python gives ς, so pass "
    "NFC(seed).lower() to such a model (lowering twice changes nothing else)",
    "char": "NFC of the seed (unicodedata.normalize('NFC', seed))",
    "jamo": "the non-Hangul part of NFD of the seed (é -> e + U+0301; passing "
    "unicodedata.normalize('NFD', seed) is always right) and NFC of non-Hangul "
    "characters in the output; Hangul syllables are decomposed and recomposed in the "
    "graph (conjoining-jamo arithmetic)",
    "subword": "all of the tokenizer: encode with sentencepiece.model "
    "(sentencepiece.SentencePieceProcessor(model_file=...).encode(text)), whose ids are "
    "the model's, where text is NFC of the seed with U+10FFFD replaced by U+10FFFD 'e' "
    "and then U+2581 by U+10FFFD 's' (textgen's escape of sentencepiece's space mark); "
    "undo that escape in decoded text",
    "morpheme": "all of the tokenizer: analyse with kiwipiepy and look the 'form/TAG' "
    "tokens (with '\u2581' before a token that follows a space) up in vocab.json",
}


@dataclass
class ExportReport:
    """What an export wrote."""

    out: Path
    format: str
    signatures: list[str]
    seconds: float
    files: dict[str, int] = field(default_factory=dict)  # relative path -> bytes
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(self.files.values())


def check_out(out: Path, force: bool) -> bool:
    """Refuse an ``--out`` that may not be written; True when it exists and is replaced."""
    if out.is_symlink():
        raise UsageError(f"--out {out} is a symbolic link; give the folder's own path")
    if not out.exists():
        for parent in out.parents:
            if parent.exists() and not parent.is_dir():
                raise UsageError(f"--out {out}: {parent} is not a folder")
        return False
    if not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if not any(out.iterdir()):
        return True
    if not force:
        raise UsageError(f"--out {out} exists and is not empty; pass --force to replace it")
    if not (out / MARKER).is_file():
        raise UsageError(
            f"--out {out} is not an earlier export (no {MARKER}); --force replaces only "
            "those: remove it yourself or choose another folder"
        )
    return True


def _has_weights(run_dir: Path) -> None:
    from textgen.rundir import WEIGHTS, is_run, read_run

    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
    if is_run(run_dir) and not read_run(run_dir, lambda snap: snap.has(WEIGHTS)):
        raise DataError(
            f"{run_dir} has no trained weights yet ({WEIGHTS}): train it first, or wait "
            "for its first epoch to end"
        )


def check_tokens(tokens: list[str]) -> None:
    """Refuse a vocabulary that UTF-8 cannot spell (a lone surrogate): the graph's string
    tables and vocab.json hold UTF-8 text only."""
    for i, token in enumerate(tokens):
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                f"token {i} of the vocabulary ({token!r}) is not valid Unicode text (a lone "
                "surrogate); an export holds its tokens as UTF-8, which cannot spell it"
            ) from None


# what a jamo export's generate guarantees, and what a caller of step must do itself
SYLLABLES = (
    "generate picks only jamo that may follow the previous token in a syllable (an initial "
    "U+1100-1112, then a medial U+1161-1175, then at most one final U+11A8-11C2; nothing "
    "else after an initial, never an initial as the last token), so its text holds no "
    "loose jamo; a caller decoding with step applies these rules itself"
)


def _level_name(tokenizer: Any) -> str:
    if tokenizer.is_jamo:
        return "jamo"
    return tokenizer.level


def describe(bundle: Any, arrays: dict[str, np.ndarray], fmt: str, quantize: str | None,
             signatures: list[str]) -> dict[str, Any]:  # fmt: skip
    """The ``export.json`` of an export: what it is, from which run, and how to feed it."""
    from textgen import __version__
    from textgen.export.step_graph import state_layout, state_size

    tok, cfg = bundle.tokenizer, bundle.config
    files = bundle.metadata.get("files") if isinstance(bundle.metadata, dict) else None
    return {
        "format": fmt,
        "quantize": quantize,
        "textgen_version": __version__,
        "exported": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": {
            "path": str(Path(bundle.run_dir).resolve()),
            "weights_sha256": (files or {}).get("weights.npz"),
            "corpus_sha256": bundle.metadata.get("corpus_sha256"),
        },
        "level": _level_name(tok),
        "mode": cfg.data.mode,
        "lowercase": tok.lowercase,
        "strip_punctuation": tok.strip_punctuation,
        "cell": str(arrays["cell"]),
        "layers": len(state_layout(arrays)),
        "vocab_size": len(tok.vocab),
        "ids": {"pad": 0, "unk": 1, "eos": tok.eos_id},
        "signatures": signatures,
        "state_size": state_size(arrays),
        "state_layout": state_layout(arrays),
        "left_to_caller": LEFT_TO_CALLER[_level_name(tok)],
        "generate_sampling": "temperature 0 = greedy argmax (textgen generate's default); "
        "> 0 draws with tf.random.stateless_categorical seeded by (rng_seed, step)",
    } | ({"syllables": SYLLABLES} if _level_name(tok) == "jamo" else {})


def _write_files(staging: Path, bundle: Any, arrays: dict[str, np.ndarray], fmt: str,
                 quantize: str | None) -> list[str]:  # fmt: skip
    """Write the export into the empty folder ``staging``; return its signatures."""
    tok = bundle.tokenizer
    if fmt == "savedmodel":
        from textgen.export.savedmodel import write

        signatures = write(staging, arrays, tok)
    else:
        from textgen.export.litert import convert_step

        (staging / TFLITE).write_bytes(convert_step(arrays, quantize))
        signatures = ["step"]
    vocab = json.dumps(list(tok.vocab.tokens), ensure_ascii=False, indent=0)
    (staging / VOCAB).write_text(vocab + "\n", encoding="utf-8")
    if tok.level == "subword":
        (staging / SENTENCEPIECE).write_bytes(tok.model_proto)
    info = describe(bundle, arrays, fmt, quantize, signatures)
    (staging / MARKER).write_text(json.dumps(info, ensure_ascii=False, indent=1) + "\n",
                                  encoding="utf-8")  # fmt: skip
    return signatures


def export_run(
    run_dir: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    *,
    quantize: str | None = None,
    force: bool = False,
) -> ExportReport:
    """Export the run ``run_dir`` as ``fmt`` (savedmodel or litert) into the folder ``out``.

    Everything that can be refused is refused before anything is written; the export is
    built in a temporary folder beside ``out`` and renamed into place, so an error or a
    signal leaves ``out`` as it was and no temporary folder behind.
    """
    from textgen.export.litert import QUANTIZE, check_fits, weight_arrays
    from textgen.rundir import load_bundle
    from textgen.rundir.store import current_umask

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if quantize is not None:
        if quantize not in QUANTIZE:
            raise UsageError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
        if fmt != "litert":
            raise UsageError("--quantize applies to --format litert only")
    run_dir, out = Path(run_dir), Path(out)
    replace = check_out(out, force)
    _has_weights(run_dir)
    bundle = load_bundle(run_dir)
    arrays = weight_arrays(bundle.lm)
    check_tokens(list(bundle.tokenizer.vocab.tokens))
    if fmt == "litert":
        check_fits(arrays)
    start = time.perf_counter()
    made = [p for p in reversed(out.absolute().parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = aside = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700
        signatures = _write_files(staging, bundle, arrays, fmt, quantize)
        files = {
            str(p.relative_to(staging)): p.stat().st_size
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        if replace:
            aside = out.parent / f".{out.name}.replaced-{os.getpid()}"
            os.rename(out, aside)
        try:
            os.rename(staging, out)
        except BaseException:
            if aside is not None:
                os.rename(aside, out)
                aside = None
            raise
        staging = None
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    notes = []
    if "generate" not in signatures and fmt == "savedmodel":
        notes.append(
            f"a {bundle.tokenizer.level} model's tokenizer is not a TensorFlow operation: "
            "only the step signature is exported; see export.json's left_to_caller"
        )
    return ExportReport(out, fmt, signatures, time.perf_counter() - start, files, notes)
