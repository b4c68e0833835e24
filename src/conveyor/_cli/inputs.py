"""Where a batch job's items come from, read lazily: a 100-million-line file is read a
line at a time, never held in memory.

Sources, in this order: ``--args`` values, ``--glob`` matches (sorted), then the files
named on the command line (``-`` is stdin; stdin when nothing at all is given). Each
file is parsed by the job's format:

- ``lines`` (default): one item per line, without its line ending;
- ``nul`` (``-0``): items separated by NUL bytes;
- ``jsonl``: each non-blank line is a JSON value;
- ``csv``: each row is a dict keyed by the header row.

Every item is then ``(value, canonical)``: the value given to the function or command,
and the compact JSON text the journal keys it by (``_batch_journal.canonical``).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any

from conveyor._cli.journal import canonical

FORMATS = ("lines", "nul", "jsonl", "csv")


class InputError(Exception):
    """An input cannot be read or parsed; names the file and the line."""


class Inputs:
    """The job's input, as an iterator of ``(value, canonical)``.

    Example::

        for value, text in Inputs(["urls.txt"], fmt="lines"):
            ...
    """

    def __init__(self, files: Sequence[str], fmt: str = "lines", args: Sequence[str] = (),
                 globs: Sequence[str] = (), stdin: IO[bytes] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"input format must be one of {FORMATS}, got {fmt!r}")
        self.files = list(files)
        self.fmt = fmt
        self.args = list(args)
        self.globs = list(globs)
        self._stdin = stdin
        if not (self.files or self.args or self.globs):
            self.files = ["-"]

    def __iter__(self) -> Iterator[tuple[Any, str]]:
        for value in self.args:
            yield value, canonical(value)
        for pattern in self.globs:
            for path in sorted(glob.glob(pattern, recursive=True)):
                yield path, canonical(path)
        for name in self.files:
            yield from self._read(name)

    def total(self) -> int | None:
        """The number of items, if cheap to know: every file is a regular file in the
        ``lines`` or ``nul`` format (counted by scanning bytes, in bounded memory)."""
        n = len(self.args) + sum(len(glob.glob(p, recursive=True)) for p in self.globs)
        for name in self.files:
            if name == "-" or self.fmt not in ("lines", "nul"):
                return None
            try:
                if not stat.S_ISREG(os.stat(name).st_mode):
                    return None
                sep = b"\n" if self.fmt == "lines" else b"\0"
                with open(name, "rb") as f:
                    last = b""
                    while block := f.read(1 << 20):
                        n += block.count(sep)
                        last = block
                    if last and not last.endswith(sep):
                        n += 1  # a last item without its separator
            except OSError:
                return None
        return n

    def _open(self, name: str) -> IO[bytes]:
        if name == "-":
            return self._stdin or sys.stdin.buffer
        try:
            return open(name, "rb")
        except OSError as exc:
            raise InputError(f"cannot read input {name}: {exc.strerror}") from None

    def _read(self, name: str) -> Iterator[tuple[Any, str]]:
        stream = self._open(name)
        try:
            if self.fmt == "nul":
                yield from _split(stream, b"\0")
            elif self.fmt == "lines":
                for line in _split(stream, b"\n"):
                    value = line[0][:-1] if line[0].endswith("\r") else line[0]
                    yield value, canonical(value)
            elif self.fmt == "jsonl":
                text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape")
                for number, raw in enumerate(text, 1):
                    if not raw.strip():
                        continue
                    try:
                        value = json.loads(raw)
                    except ValueError as exc:
                        raise InputError(f"{name}, line {number}: not JSON ({exc}): "
                                         f"{raw.strip()[:60]!r}") from None
                    yield value, canonical(value)
                text.detach()
            else:
                text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape",
                                        newline="")
                for row in csv.DictReader(text):
                    yield row, canonical(row)
                text.detach()
        finally:
            if stream is not self._stdin and stream is not sys.stdin.buffer:
                stream.close()


def _split(stream: IO[bytes], sep: bytes) -> Iterator[tuple[str, str]]:
    """Items separated by ``sep``; a trailing separator ends the last item, not a new one.
    Bytes that are not UTF-8 survive as surrogates (``surrogateescape``)."""
    rest = b""
    while block := stream.read(1 << 16):
        parts = (rest + block).split(sep)
        rest = parts.pop()
        for part in parts:
            value = part.decode("utf-8", "surrogateescape")
            yield value, canonical(value)
    if rest:
        value = rest.decode("utf-8", "surrogateescape")
        yield value, canonical(value)
