"""Stream-mode corpora → token-id files on disk, in one streaming pass, cached.

A corpus larger than memory never exists here as one string. It is read in blocks that end
at a line break, each block is normalized and tokenized, and the ids go straight to a file:

1. a fast byte pass: the corpus' sha256 (the cache key) and, when a validation tail is held
   out, its length in characters (the split rule of :func:`split_blocks` needs it before
   the first training token is written);
2. the tokenizing pass. At the char and word levels the vocabulary is counted in the same
   pass: every new token gets a provisional id in order of first appearance (the tie order
   of :class:`~textgen.text.vocab.Vocab`), the provisional ids are written as int32, and a
   vectorized pass over that binary file maps them to the final ids (most frequent first)
   in the smallest dtype that holds the vocabulary. Subword and morpheme tokenizers are
   fitted first on the streamed training lines, then encode line by line.

The result lives in a cache folder keyed by the sha256 of the corpus (and of a separate
validation file) and every tokenizer setting, so the next ``train`` of the same corpus
starts at once. Training reads windows of ids from these files with ``os.pread``
(:class:`Windows`), so its memory does not grow with the corpus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from textgen._tf import cache_folder
from textgen.config import DataConfig
from textgen.corpus.read import BLOCK, Progress, scan, split_blocks, tail_start, text_blocks
from textgen.errors import DataError
from textgen.text import level_class, load_tokenizer, tokenizer_for, tokenizer_options
from textgen.text.base import Tokenizer
from textgen.text.stream import counter_for, final_vocab
from textgen.text.vocab import PAD, UNK, Vocab

# bumped whenever the code that fits a tokenizer or writes ids changes its output for the
# same corpus and settings, so an entry made by older code is rebuilt, never reused:
# 2 = subword tokenizers spell the characters seen once in byte pieces
CACHE_FORMAT = 2
CACHE_ENV = "TEXTGEN_CACHE"
TRAIN, VALID, META, TOKENIZER = "train.ids", "valid.ids", "meta.json", "tokenizer.json"
OWNER = ".owner"  # in a temporary folder: locked by the process that writes it


def cache_root() -> Path:
    """Where prepared corpora are kept: textgen's cache folder (``$TEXTGEN_CACHE``, else the
    user cache folder's ``textgen``), the one the XLA cache and the compiled cell use."""
    return cache_folder()


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _remap_file(src: Path, dst: Path, remap: np.ndarray, dtype: np.dtype) -> None:
    table = remap.astype(dtype)
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(max(BLOCK // 4, 1) * 4):  # whole int32 ids
            fout.write(table[np.frombuffer(chunk, np.int32)].tobytes())


# -- the cache entry ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PreparedIds:
    """A prepared corpus: its tokenizer and the id files of its two parts."""

    folder: Path
    tokenizer: Tokenizer
    train: IdFile
    valid: IdFile | None
    corpus_sha256: str
    cached: bool  # found in the cache rather than made now


def settings_key(cfg: DataConfig, corpus_sha: str, valid_sha: str | None) -> str:
    """What a prepared corpus depends on, hashed: its bytes and every tokenizer setting."""
    settings = {
        "format": CACHE_FORMAT,
        "corpus": corpus_sha,
        "valid": valid_sha,
        "encoding": cfg.encoding,
        "val_split": 0.0 if valid_sha else cfg.val_split,
    } | tokenizer_options(cfg)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def prepare_ids(
    cfg: DataConfig,
    tokenizer: Tokenizer | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> PreparedIds:
    """Tokenize a stream-mode corpus into the cache (or find it there).

    ``tokenizer`` (a resumed run's) is used as it is; otherwise one is fitted on the
    training part. ``progress`` gets the bytes read as the tokenizing pass goes.
    """
    split = not cfg.valid_corpus and cfg.val_split > 0
    sha, chars = scan(cfg.corpus, cfg.encoding, count_chars=split)
    valid_sha = (
        scan(cfg.valid_corpus, cfg.encoding, count_chars=False)[0] if cfg.valid_corpus else None
    )
    key = settings_key(cfg, sha, valid_sha)
    root = cache_root()
    candidates = [root / key]
    if tokenizer is not None:
        tok_hash = hashlib.sha256(tokenizer.to_json().encode()).hexdigest()[:16]
        candidates.append(root / f"{key}-{tok_hash}")
    for folder in candidates:
        found = _load_entry(folder, sha, tokenizer)
        if found is not None:
            return found
    folder = candidates[-1]
    cut = tail_start(chars, cfg.val_split) if split else None
    ours = _write_entry(cfg, folder, sha, cut, tokenizer, progress)
    # the ids just written were hashed a moment ago: only another process' entry is checked
    entry = _load_entry(folder, sha, tokenizer, verify=not ours)
    if entry is None:
        raise DataError(f"the corpus cache {folder} could not be read back")
    if log is not None:
        log(f"prepared {cfg.corpus} → {folder}")
    return dataclasses.replace(entry, cached=False)


def _write_entry(
    cfg: DataConfig,
    folder: Path,
    sha: str,
    cut: int | None,
    tokenizer: Tokenizer | None,
    progress: Progress | None,
) -> bool:
    """Tokenize into a temporary folder beside ``folder`` and rename it into place;
    False when another process made the entry meanwhile (its entry is kept)."""
    root = folder.parent
    _sweep_abandoned(root)
    # the name is chosen before the folder exists, so that a signal at any moment after
    # (even inside mkdir) finds it to remove
    tmp = root / f"{folder.name}.tmp-{secrets.token_hex(8)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(mode=0o700)
        owner = _hold(tmp / OWNER)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(
            f"cannot create the corpus cache in {root}: {err.strerror or err}"
        ) from None
    except BaseException:  # a signal between the folder and its owner file
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        made = _tokenize(cfg, tmp, cut, tokenizer, progress)
        made["sha256"] = {name: _sha256(tmp / name) for name in (TRAIN, VALID)}
        meta = {"format": CACHE_FORMAT, "corpus_sha256": sha, "corpus": str(cfg.corpus)} | made
        (tmp / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        (tmp / OWNER).unlink()
        if folder.exists() and _load_entry(folder, sha, tokenizer) is None:
            shutil.rmtree(folder, ignore_errors=True)  # a damaged or partial entry
        try:
            os.replace(tmp, folder)
            return True
        except OSError:  # another process made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(owner)


def _hold(path: Path) -> int:
    """Create ``path`` and hold an exclusive lock on it until the returned fd is closed.

    The kernel drops the lock when the process dies, however it dies, so a temporary
    folder whose owner file can be locked by someone else was abandoned.
    """
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _sweep_abandoned(root: Path) -> None:
    """Remove the temporary folders of prepares that died (SIGKILL, power loss), and the
    entries an older textgen wrote in an older :data:`CACHE_FORMAT`: their key holds the
    format, so they are never found again (an entry of a newer format is another
    installation's and is kept)."""
    import fcntl

    if not root.is_dir():
        return
    for meta_file in root.glob(f"*/{META}"):
        folder = meta_file.parent
        if ".tmp-" in folder.name:
            continue
        try:
            made_by = json.loads(meta_file.read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, AttributeError):
            continue  # unreadable: _load_entry rebuilds it when its key comes up
        if isinstance(made_by, int) and made_by < CACHE_FORMAT:
            shutil.rmtree(folder, ignore_errors=True)
    for tmp in root.glob("*.tmp-*"):
        try:
            fd = os.open(tmp / OWNER, os.O_RDWR)
        except OSError:
            continue  # finishing right now (its owner file is gone), or not ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # alive: another prepare is writing it
        finally:
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _load_entry(
    folder: Path, sha: str, tokenizer: Tokenizer | None, *, verify: bool = True
) -> PreparedIds | None:
    """A complete cache entry for this corpus (and tokenizer, when given), or None."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        saved = load_tokenizer(folder / TOKENIZER)
    except (OSError, ValueError, DataError):
        return None
    if meta.get("format") != CACHE_FORMAT or meta.get("corpus_sha256") != sha:
        return None
    if tokenizer is not None and saved != tokenizer:
        return None
    dtype = np.dtype(meta["dtype"])
    train = IdFile(folder / TRAIN, dtype, meta["train_tokens"])
    valid = IdFile(folder / VALID, dtype, meta["valid_tokens"]) if meta["valid_tokens"] else None
    if not train.intact() or (valid is not None and not valid.intact()):
        return None
    digests = meta.get("sha256", {})
    for part in (train, valid) if verify else ():  # the same size is not the same ids
        if part is not None and digests.get(part.path.name) != _sha256(part.path):
            return None
    return PreparedIds(folder, saved, train, valid, sha, cached=True)


def _tokenize(
    cfg: DataConfig,
    out: Path,
    cut: int | None,
    tokenizer: Tokenizer | None,
    progress: Progress | None,
) -> dict[str, Any]:
    """The tokenizing pass into ``out``; returns what meta.json records about the ids."""
    eos = level_class(cfg.level).eos_in_stream  # the id cache holds stream-mode ids
    if cfg.level in ("subword", "morpheme") and tokenizer is None:
        tokenizer = _fit_streamed(cfg, cut)
    splitter = tokenizer or level_class(cfg.level)(
        cfg.level,
        Vocab([PAD, UNK]),
        lowercase=cfg.lowercase,
        strip_punctuation=cfg.strip_punctuation,
        normalize=cfg.normalize,
    )
    # a known vocabulary: the tokenizer's own encode, ids in their final dtype; else
    # provisional ids (int32) while the vocabulary is counted in the same pass
    coder = _Known(tokenizer) if tokenizer is not None else counter_for(splitter)
    known = tokenizer is not None
    dtype = id_dtype(len(splitter.vocab)) if known else np.dtype(np.int32)
    names = (TRAIN, VALID) if known else ("train.prov", "valid.prov")
    counts, val_blank = [0, 0], True
    blocks = text_blocks(cfg.corpus, cfg.encoding, progress)
    with (out / names[0]).open("wb") as ftrain, (out / names[1]).open("wb") as fvalid:
        for train_text, val_text in split_blocks(blocks, cut, cfg.level):
            for part, text, f in ((0, train_text, ftrain), (1, val_text, fvalid)):
                if text:
                    val_blank = val_blank and (part == 0 or text.isspace())
                    ids = coder.encode(text, count=part == 0)
                    f.write(ids.astype(dtype).tobytes())
                    counts[part] += len(ids)
        if cfg.valid_corpus:
            for text in text_blocks(cfg.valid_corpus, cfg.encoding):
                val_blank = val_blank and text.isspace()
                ids = coder.encode(text, count=False)
                fvalid.write(ids.astype(dtype).tobytes())
                counts[1] += len(ids)
        if val_blank:  # a held-out tail of blank lines validates nothing
            fvalid.truncate(0)
            counts[1] = 0
    if not known:
        vocab, remap = final_vocab(coder.tokens, coder.counts, eos, cfg.max_vocab, cfg.min_freq)
        dtype = id_dtype(len(vocab))
        for prov, final in zip(names, (TRAIN, VALID), strict=True):
            _remap_file(out / prov, out / final, remap, dtype)
            (out / prov).unlink()
        splitter.vocab = vocab
        tokenizer = splitter
    assert tokenizer is not None
    (out / TOKENIZER).write_text(tokenizer.to_json(), encoding="utf-8")
    return {"dtype": dtype.str, "train_tokens": counts[0], "valid_tokens": counts[1]}


class _Known:
    """A fitted tokenizer as a coder of the cache: its own
    :meth:`~textgen.text.base.Tokenizer.encode_stream` (there is nothing to count)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str, count: bool) -> np.ndarray:
        return self.tokenizer.encode_stream(text)


def _fit_streamed(cfg: DataConfig, cut: int | None) -> Tokenizer:
    """Fit a subword or morpheme tokenizer on the training lines, read as a stream."""

    def lines() -> Iterator[str]:
        for train_text, _ in split_blocks(text_blocks(cfg.corpus, cfg.encoding), cut, cfg.level):
            yield from train_text.splitlines()

    return tokenizer_for(cfg, lines())


# -- reading ids back ---------------------------------------------------------------------
class IdFile:
    """A file of token ids read by position, without mapping it into memory."""

    def __init__(self, path: Path, dtype: np.dtype, length: int) -> None:
        self.path, self.dtype, self.length = Path(path), np.dtype(dtype), int(length)
        self._fd: int | None = None

    def intact(self) -> bool:
        try:
            return self.path.stat().st_size == self.length * self.dtype.itemsize
        except OSError:
            return False

    def __len__(self) -> int:
        return self.length

    def read(self, start: int, count: int) -> np.ndarray:
        """Ids ``start .. start + count`` as int32."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        size = self.dtype.itemsize
        raw = os.pread(self._fd, count * size, start * size)
        if len(raw) != count * size:
            raise DataError(f"{self.path} is shorter than recorded; delete it to re-prepare")
        return np.frombuffer(raw, self.dtype).astype(np.int32)

    def zeros(self, limit: int | None = None) -> int:
        """How many of the first ``limit`` ids (all by default) are 0 (``<pad>``)."""
        end = self.length if limit is None else min(limit, self.length)
        total = 0
        for start in range(0, end, BLOCK):
            total += int(np.count_nonzero(self.read(start, min(BLOCK, end - start)) == 0))
        return total

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
