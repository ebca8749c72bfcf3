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
import itertools
import json
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from textgen.config import DataConfig
from textgen.corpus.read import BLOCK, Progress, scan, split_blocks, text_blocks
from textgen.errors import DataError
from textgen.text import load_tokenizer, tokenizer_for, tokenizer_options
from textgen.text.base import Tokenizer
from textgen.text.vocab import EOS, PAD, UNK, UNK_ID, Vocab

MAX_DISTINCT = 5_000_000  # distinct tokens counted before the vocabulary is cut to size
CACHE_FORMAT = 1
CACHE_ENV = "TEXTGEN_CACHE"
TRAIN, VALID, META, TOKENIZER = "train.ids", "valid.ids", "meta.json", "tokenizer.json"
OWNER = ".owner"  # in a temporary folder: locked by the process that writes it


def cache_root() -> Path:
    """Where prepared corpora are kept: ``$TEXTGEN_CACHE``, else the user cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "textgen"


# -- encoding -----------------------------------------------------------------------------
class _CharCoder:
    """Code points → ids through a table over all of Unicode (vectorized)."""

    def __init__(self, normalize: str, vocab: Vocab | None) -> None:
        self.form = normalize.upper()
        self.table = np.full(0x110000, -1, np.int32)
        self.fixed = vocab is not None
        self.tokens: list[str] = []
        if vocab is not None:
            self.table[:] = vocab.unk_id
            for i, tok in enumerate(vocab.tokens):
                if len(tok) == 1:
                    self.table[ord(tok)] = i
        self.counts = np.zeros(0, np.int64)

    def encode(self, text: str, count: bool) -> np.ndarray:
        text = unicodedata.normalize(self.form, text)
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
        ids = self.table[cps]
        if not self.fixed:
            unseen = np.flatnonzero(ids < 0)
            if len(unseen):
                self._add_new(cps, unseen)
                ids = self.table[cps]
            if count:
                self.counts = _add_counts(self.counts, ids, len(self.tokens))
        return ids

    def _add_new(self, cps: np.ndarray, unseen: np.ndarray) -> None:
        """Give the code points at positions ``unseen`` ids in order of first appearance.

        Sorting every unseen position (a whole first block) is slow; new code points
        cluster at the start, so each round sorts only the next 64k unseen positions and
        drops those the round has just named."""
        while len(unseen):
            head, unseen = unseen[:65536], unseen[65536:]
            fresh, first = np.unique(cps[head], return_index=True)
            fresh = fresh[np.argsort(first)]
            fresh = fresh[self.table[fresh] < 0]
            self.table[fresh] = np.arange(len(self.tokens), len(self.tokens) + len(fresh))
            self.tokens.extend(chr(c) for c in fresh)
            unseen = unseen[self.table[cps[unseen]] < 0]


class _WordCoder:
    """Whitespace-split words → ids, ``<eos>`` after every non-blank line."""

    def __init__(self, splitter: Tokenizer, eos: bool, vocab: Vocab | None) -> None:
        self.splitter, self.eos = splitter, eos
        self.fixed = vocab is not None
        specials = [PAD, UNK] + ([EOS] if eos else [])
        self.index: dict[str, int] = (
            {t: i for i, t in enumerate(vocab.tokens)}
            if vocab
            else {t: i for i, t in enumerate(specials)}
        )
        self.tokens: list[str] = list(self.index) if not self.fixed else []
        self.eos_id = self.index.get(EOS, -1)
        self.counts = np.zeros(0, np.int64)

    def encode(self, text: str, count: bool) -> np.ndarray:
        normalized = self.splitter.normalize_text(text)
        raw_lines, lines = text.splitlines(), normalized.splitlines()
        if len(raw_lines) != len(lines):  # normalization changed the line breaks
            lines = [self.splitter.normalize_text(line) for line in raw_lines]
        out: list[int] = []
        index = self.index
        if self.fixed:
            get = index.get
            for raw, line in zip(raw_lines, lines, strict=True):
                if raw.strip():
                    out.extend([get(t, UNK_ID) for t in line.split()])
                    out.append(self.eos_id)
        else:
            add = index.setdefault
            for raw, line in zip(raw_lines, lines, strict=True):
                if raw.strip():
                    out.extend([add(t, len(index)) for t in line.split()])
                    out.append(self.eos_id)
            new = len(index) - len(self.tokens)
            if new:  # the newest keys, read from the end: O(new), not O(vocabulary)
                self.tokens.extend(list(itertools.islice(reversed(index), new))[::-1])
        ids = np.asarray(out, np.int64)
        if count and not self.fixed:
            self.counts = _add_counts(self.counts, ids, len(self.tokens))
        return ids


def _add_counts(counts: np.ndarray, ids: np.ndarray, size: int) -> np.ndarray:
    """``counts`` (at least ``size`` long, grown by doubling) plus the ids of one block.

    The work is O(block) however large the vocabulary: a corpus whose every token is new
    must not pay O(vocabulary) per block.
    """
    if size > MAX_DISTINCT:
        raise DataError(
            f"the corpus has more than {MAX_DISTINCT:,} distinct tokens; a word vocabulary "
            'that large does not fit a model: use data.level = "subword" (or clean the text)'
        )
    if len(counts) < size:
        grown = np.zeros(max(size, 2 * len(counts)), np.int64)
        grown[: len(counts)] = counts
        counts = grown
    uniq, hits = np.unique(ids, return_counts=True)
    counts[uniq] += hits
    return counts


def _final_vocab(
    tokens: list[str], counts: np.ndarray, eos: bool, cfg: DataConfig
) -> tuple[Vocab, np.ndarray]:
    """The vocabulary :meth:`Vocab.build` would give for these counts, and the map from
    provisional ids to its ids."""
    specials = [PAD, UNK] + ([EOS] if eos else [])
    full = np.zeros(len(tokens), np.int64)
    full[: min(len(counts), len(tokens))] = counts[: len(tokens)]
    counts = full
    remap = np.full(len(tokens), UNK_ID, np.int64)  # unknown by default
    ordinary = [i for i, t in enumerate(tokens) if t not in specials and counts[i] > 0]
    ordinary.sort(key=lambda i: -counts[i])  # stable: ties keep first appearance
    ordinary = [i for i in ordinary if counts[i] >= cfg.min_freq]
    if cfg.max_vocab:
        ordinary = ordinary[: max(0, cfg.max_vocab - len(specials))]
    for i, t in enumerate(tokens):
        if t in specials:
            remap[i] = specials.index(t)
    remap[ordinary] = np.arange(len(specials), len(specials) + len(ordinary))
    return Vocab(specials + [tokens[i] for i in ordinary]), remap


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
    _sweep_abandoned(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=root))
        owner = _hold(tmp / OWNER)
    except OSError as err:
        raise DataError(
            f"cannot create the corpus cache in {root}: {err.strerror or err}"
        ) from None
    try:
        cut = int(chars * (1.0 - cfg.val_split)) if split else None
        made = _tokenize(cfg, tmp, cut, tokenizer, progress)
        made["sha256"] = {name: _sha256(tmp / name) for name in (TRAIN, VALID)}
        meta = {"format": CACHE_FORMAT, "corpus_sha256": sha, "corpus": str(cfg.corpus)} | made
        (tmp / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        (tmp / OWNER).unlink()
        if folder.exists() and _load_entry(folder, sha, tokenizer) is None:
            shutil.rmtree(folder, ignore_errors=True)  # a damaged or partial entry
        try:
            os.replace(tmp, folder)
        except OSError:  # another process made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(owner)
    entry = _load_entry(folder, sha, tokenizer)
    if entry is None:
        raise DataError(f"the corpus cache {folder} could not be read back")
    if log is not None:
        log(f"prepared {cfg.corpus} → {folder}")
    return dataclasses.replace(entry, cached=False)


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
    """Remove the temporary folders of prepares that died (SIGKILL, power loss)."""
    import fcntl

    if not root.is_dir():
        return
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
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_entry(folder: Path, sha: str, tokenizer: Tokenizer | None) -> PreparedIds | None:
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
    for part in (train, valid):  # the same size is not the same ids
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
    eos = cfg.level != "char"
    if cfg.level in ("subword", "morpheme") and tokenizer is None:
        tokenizer = _fit_streamed(cfg, cut)
    fixed = tokenizer.vocab if tokenizer is not None else None
    splitter = tokenizer or Tokenizer(
        cfg.level,
        Vocab([PAD, UNK]),
        lowercase=cfg.lowercase,
        strip_punctuation=cfg.strip_punctuation,
        normalize=cfg.normalize,
    )
    coder: Any
    if cfg.level == "char":
        coder = _CharCoder(cfg.normalize, fixed)
    elif cfg.level == "word":
        coder = _WordCoder(splitter, eos, fixed)
    else:
        coder = _LineCoder(splitter)
    # ids go out in their final dtype when the vocabulary is known, else as int32
    dtype = id_dtype(len(fixed)) if fixed is not None else np.dtype(np.int32)
    names = (TRAIN, VALID) if fixed is not None else ("train.prov", "valid.prov")
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
    if fixed is None:
        vocab, remap = _final_vocab(coder.tokens, coder.counts, eos, cfg)
        dtype = id_dtype(len(vocab))
        for prov, final in zip(names, (TRAIN, VALID), strict=True):
            _remap_file(out / prov, out / final, remap, dtype)
            (out / prov).unlink()
        splitter.vocab = vocab
        tokenizer = splitter
    assert tokenizer is not None
    (out / TOKENIZER).write_text(tokenizer.to_json(), encoding="utf-8")
    return {"dtype": dtype.str, "train_tokens": counts[0], "valid_tokens": counts[1]}


class _LineCoder:
    """Any fitted tokenizer, line by line with ``<eos>`` (subword and morpheme levels)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str, count: bool) -> np.ndarray:
        parts = [self.tokenizer.encode(ln, eos=True) for ln in text.splitlines() if ln.strip()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)


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
