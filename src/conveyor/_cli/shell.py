"""``conveyor run``: a command template, filled in per item, run in its own session.

Replacement strings are GNU parallel's::

    {}    the item                  {.}   the item without its extension
    {/}   its basename              {//}  its directory
    {/.}  basename, no extension    {#}   the item's number in the input (from 1)
    {name} a field of a --jsonl object or --csv row (not after "$": ${HOME} is the shell's)

A template without any of them gets `` {}`` appended. Values are shell-quoted, so an
item with spaces, quotes or ``$(...)`` is one argument and never code. A template made
only of plain words (no quotes, pipes, redirections, globs or variables) needs no shell:
it is split into argv and executed directly, which is what makes a run of many tiny
commands about as fast as ``xargs`` (the shell's own start-up is most of their cost).

Each command runs in a new session (``start_new_session``), so it is not stopped by
the Ctrl-C meant for conveyor, and a timeout or an interrupt kills its whole process
group: ``sh -c 'sleep 100 & wait'`` leaves no ``sleep`` behind.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

_REPLACEMENT = re.compile(r"(?<!\$)\{(//|/\.|/|\.|#|[A-Za-z_][A-Za-z0-9_]*|)\}")
_PLAIN = re.compile(r"[A-Za-z0-9_./:,@%+=\-]*")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _without_ext(path: str) -> str:
    head, tail = os.path.split(path)
    stem, _ = os.path.splitext(tail)
    return os.path.join(head, stem) if head else stem


def replacement(kind: str, value: Any, seq: int) -> str:
    """The text of one replacement string for an item."""
    if kind == "#":
        return str(seq)
    if kind and kind not in ("/", "//", ".", "/."):  # a field of an object item
        if not isinstance(value, dict):
            raise ValueError(f"{{{kind}}} needs items that are objects (--jsonl or --csv), "
                             f"got {_text(value)[:60]!r}")
        if kind not in value:
            raise ValueError(f"{{{kind}}}: the item has no field {kind!r} "
                             f"(it has {', '.join(map(str, value)) or 'none'})")
        return _text(value[kind])
    text = _text(value)
    if kind == "":
        return text
    if kind == ".":
        return _without_ext(text)
    if kind == "/":
        return os.path.basename(text)
    if kind == "//":
        return os.path.dirname(text) or "."
    return _without_ext(os.path.basename(text))  # "/."


class Template:
    """A command template. ``command(values, seq)`` gives what to execute: an argv list
    (no shell needed) or a string for ``sh -c``.

    Example::

        Template("gzip -k {}").command(["my file.txt"], 1)   # ['gzip', '-k', 'my file.txt']
        Template("wc -l {} > {.}.n").command(["a.txt"], 1)   # "wc -l a.txt > a.n"
    """

    def __init__(self, template: str) -> None:
        if not template.strip():
            raise ValueError("the command template is empty")
        if not _REPLACEMENT.search(template):
            template += " {}"
        self.template = template
        words = template.split()
        self.direct = all(_PLAIN.fullmatch(_REPLACEMENT.sub("", w)) for w in words)
        self._words = words

    def command(self, values: Sequence[Any], seq: int) -> list[str] | str:
        def fill(text: str, quote: bool) -> str:
            def one(m: re.Match[str]) -> str:
                parts = [replacement(m.group(1), v, seq) for v in values]
                if m.group(1) == "#":
                    parts = parts[:1]
                return " ".join(shlex.quote(p) for p in parts) if quote else " ".join(parts)
            return _REPLACEMENT.sub(one, text)

        if not self.direct:
            return fill(self.template, quote=True)
        argv: list[str] = []
        for word in self._words:
            if word == "{}" and len(values) > 1:  # --batch: one argument per item
                argv += [replacement("", v, seq) for v in values]
            else:
                argv.append(fill(word, quote=False))
        return argv


# One command's outcome: exit code (None if killed), signal name, stdout, stderr,
# seconds, pid, started, timed out.
CommandResult = tuple[int | None, str | None, str, str, float, int, float, bool]


def run_command(command: list[str] | str, timeout: float | None,
                on_start: Any = None) -> CommandResult:
    """Run one command in its own session; on timeout kill its process group.

    ``on_start(proc)`` is called once the process exists (the runner keeps it, to kill
    its group if the job is interrupted)."""
    argv = command if isinstance(command, list) else ["/bin/sh", "-c", command]
    started = time.time()
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:  # a direct command that does not exist: what the shell says
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        return (code, None, "", f"conveyor: {argv[0]}: {exc.strerror}\n",
                time.perf_counter() - t0, 0, started, False)
    if on_start is not None:
        on_start(proc)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc, signal.SIGKILL)
        out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    code = proc.returncode
    sig = None
    if code < 0:
        sig = signal.Signals(-code).name
    return (None if code < 0 else code, sig, out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"), seconds, proc.pid, started, timed_out)


def kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the command's whole process group (its pid is the group id: own session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
