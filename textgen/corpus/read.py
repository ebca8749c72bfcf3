"""Reading a corpus file: the one place a corpus is opened, decoded and checked, and where
the held-out validation text is split off.

Every reader goes through :func:`text_blocks` (pieces that end at a line break, in linear
time and bounded memory) and gets the same one-line errors: a missing file, a folder, a
device, a NUL byte, bad bytes with their offset, a line over :data:`MAX_LINE_BYTES`, text
with nothing but whitespace. :func:`read_corpus` is the whole text at once, for corpora
kept in memory (``lines`` mode); :func:`scan` is the sha256 and the character count.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from textgen.errors import DataError
from textgen.text import level_class

BLOCK = 4 << 20  # bytes read at a time
MAX_LINE_BYTES = 256 << 20  # a longer line is refused: it would be held whole in memory

Progress = Callable[[int], None]  # called with the number of bytes just processed


def open_corpus(path: str | Path) -> Any:
    path = Path(path)
    if not str(path) or str(path) == ".":
        raise DataError("no corpus given: set data.corpus in the config or pass --corpus")
    if path.is_dir():
        raise DataError(f"corpus {path} is a folder, not a text file")
    if path.exists() and not path.is_file():
        raise DataError(
            f"corpus {path} is not a regular file (a device or a pipe); give a text file"
        )
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise DataError(f"corpus not found: {path}") from None
    except OSError as err:
        raise DataError(f"cannot read corpus {path}: {err.strerror}") from None


def scan(path: str | Path, encoding: str = "utf-8", count_chars: bool = True) -> tuple[str, int]:
    """One fast pass over the bytes: ``(sha256, number of characters)``; the count is the
    length of the decoded text without a byte-order mark (-1 when not asked for). UTF-8
    is counted without decoding: every byte that is not a continuation byte starts one."""
    try:
        utf8 = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}") from None
    decoder = None if utf8 else codecs.getincrementaldecoder(encoding)("replace")
    sha, chars, first = hashlib.sha256(), 0, True
    with open_corpus(path) as f:
        while block := f.read(BLOCK):
            sha.update(block)
            if count_chars and decoder is None:
                chars += int(np.count_nonzero((np.frombuffer(block, np.uint8) & 0xC0) != 0x80))
                chars -= first and block.startswith(codecs.BOM_UTF8)
            elif count_chars:
                text = decoder.decode(block)
                chars += len(text.removeprefix("\ufeff") if first else text)
            first = False
    return sha.hexdigest(), chars if count_chars else -1


def _ascii_compatible(encoding: str) -> bool:
    try:
        return "\n".encode(encoding) == b"\n" and "a".encode(encoding) == b"a"
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}") from None


def text_blocks(
    path: str | Path,
    encoding: str = "utf-8",
    progress: Progress | None = None,
    digest: Any = None,
) -> Iterator[str]:
    """The decoded text of ``path`` in pieces that each end at a line break (the last one
    may not). A NUL byte, bad bytes (with their offset) and a text with nothing but
    whitespace are errors. ``digest`` (a ``hashlib`` object) is fed every byte read.

    A line is held whole until its break, in linear time; one longer than
    :data:`MAX_LINE_BYTES` is an error rather than unbounded memory."""
    compatible = _ascii_compatible(encoding)
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset, first, nonblank = 0, True, False
    held: list[Any] = []  # the unfinished line: bytes (compatible) or str pieces
    held_size = 0
    with open_corpus(path) as f:
        while True:
            block = f.read(BLOCK)
            if digest is not None:
                digest.update(block)
            if compatible and not offset and b"\x00" in block[:65536]:  # the first block
                raise DataError(f"corpus {path} looks binary (NUL byte); give a text file")
            if compatible:
                cut = block.rfind(b"\n") + 1 if block else len(block)
                if cut:
                    piece = b"".join([*held, block[:cut]])
                    held, held_size = [block[cut:]], len(block) - cut
                elif block:
                    piece = b""
                    held.append(block)
                    held_size += len(block)
                else:  # the end: whatever is held is the last line
                    piece, held, held_size = b"".join(held), [], 0
                try:
                    text = piece.decode(encoding)
                except UnicodeDecodeError as err:
                    raise _bad_bytes(path, encoding, offset + err.start, piece[err.start]) from None
                offset += len(piece)
            else:
                try:
                    decoded = decoder.decode(block, final=not block)
                except UnicodeDecodeError as err:
                    raise _bad_bytes(path, encoding, offset + max(err.start, 0), 0) from None
                except UnicodeError as err:  # e.g. utf-16 without its byte-order mark
                    raise DataError(f"corpus {path} cannot be read as {encoding}: {err}") from None
                offset += len(block)
                cut = decoded.rfind("\n") + 1 if block else len(decoded)
                if cut or not block:
                    text = "".join([*held, decoded[:cut]])
                    held, held_size = [decoded[cut:]], len(decoded) - cut
                else:
                    text = ""
                    held.append(decoded)
                    held_size += len(decoded)
            if held_size > MAX_LINE_BYTES:
                raise DataError(
                    f"corpus {path} has a line longer than {MAX_LINE_BYTES >> 20} MB; "
                    "stream-mode text needs line breaks"
                )
            if first and text:
                text = text.removeprefix("\ufeff")
                first = False
            if text:
                nonblank = nonblank or not text.isspace()
                yield text
            if progress is not None:
                progress(len(block))
            if not block:
                break
    if not nonblank:
        raise DataError(f"corpus {path} is empty (no text besides whitespace)")


def _bad_bytes(path: object, encoding: str, offset: int, byte: int) -> DataError:
    return DataError(
        f"corpus {path} is not valid {encoding} at byte {offset} (0x{byte:02x}); "
        "convert it or pass --encoding"
    )


def tail_start(chars: int, val_split: float) -> int:
    """The character where the held-out tail of a ``chars``-character text starts, before
    :func:`split_blocks` moves it to a line start."""
    return int(chars * (1.0 - val_split))


def split_blocks(blocks: Iterator[str], cut: int | None, level: str) -> Iterator[tuple[str, str]]:
    """``(training part, validation part)`` of each block: the held-out tail starts at
    character ``cut`` moved forward to the start of the next line, so every level (word
    to jamo) holds out the same text; a text with no later line break is cut at the next
    whitespace (exactly at ``cut`` where every token is a character: ``tokens_are_chars``,
    the char level). ``cut=None``: all is training text.

    This is the one split rule: training, ``textgen eval --valid`` and the benchmarks
    all go through it."""
    seen = 0
    for text in blocks:
        if cut is None or seen + len(text) <= cut:
            seen += len(text)
            yield text, ""
            continue
        if seen > cut:
            yield "", text
            continue
        local = cut - seen
        newline = text.find("\n", local)
        if newline >= 0:
            local = newline + 1
        elif not level_class(level).tokens_are_chars:
            while local < len(text) and not text[local].isspace():
                local += 1
        seen += len(text)
        cut = -1  # everything after this block is validation text
        yield text[:local], text[local:]


def read_corpus(path: str | Path, encoding: str = "utf-8") -> tuple[str, str]:
    """Read a whole corpus; return ``(text, sha256 of the bytes)``, with the checks of
    :func:`text_blocks` (one path for every reader)."""
    digest = hashlib.sha256()
    text = "".join(text_blocks(path, encoding, digest=digest))
    return text, digest.hexdigest()
