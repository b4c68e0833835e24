"""``conveyor map``, ``run``, ``status`` and ``results``: the command line of batch jobs.

This module turns arguments into a ``JobSpec`` (``_batch_job``) and reads journals for
``status`` and ``results``. Option spellings follow GNU parallel where they fit
(``-j``, ``--timeout``, ``--retries``, ``--halt``, ``-k``, ``-0``, ``--dry-run``,
``--bar``); ``--args`` plays the part of GNU's ``:::``.

Exit codes: 0 all items ok; 1 some failed; 2 a usage error or a journal that does not
match the job; 3 stopped by ``--halt``; 130 and 143 interrupted by SIGINT and SIGTERM,
after the journal is saved.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import inspect
import json
import os
import re
import shlex
import sys
from collections import Counter
from typing import Any

from conveyor._cli.inputs import InputError, Inputs
from conveyor._cli.job import EXIT_USAGE, Job, JobSpec, UsageError
from conveyor._cli.journal import Journal, JournalError

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def duration(text: str) -> float:
    """``30``, ``30s``, ``250ms``, ``5m``, ``1.5h``: seconds, > 0."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 30, 30s, 250ms, 5m or 2h, got {text!r}")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def size(text: str) -> int:
    """``1024``, ``512K``, ``500M``, ``2G`` (powers of 1024; ``MB``/``MiB`` also read)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size such as 500M or 2G, got {text!r}")
    value = int(float(m.group(1)) * _SIZES[m.group(2).lower()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def halt(text: str) -> tuple[str, int, bool] | None:
    """GNU parallel's ``--halt``: ``never``, ``now,fail=N``, ``soon,fail=N%``."""
    if text == "never":
        return None
    m = re.fullmatch(r"(now|soon),fail=(\d+)(%?)", text)
    if not m or int(m.group(2)) < 1 or (m.group(3) and int(m.group(2)) > 100):
        raise argparse.ArgumentTypeError(
            f"expected never, now,fail=N, soon,fail=N or now,fail=N% (N >= 1), got {text!r}")
    return m.group(1), int(m.group(2)), bool(m.group(3))


def _positive(text: str) -> int:
    from conveyor._cli.main import positive_int

    return positive_int(text)


def _nonnegative(text: str) -> int:
    from conveyor._cli.main import whole_number

    return whole_number(text, 0)


def _trace_file(text: str) -> str:
    from conveyor._trace._api import check_path

    try:
        return check_path(text, "--trace")
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _common(p: argparse.ArgumentParser, shell: bool) -> None:
    g = p.add_argument_group("input (read lazily; stdin when none is given)")
    g.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="files of items, one per line; - is stdin")
    g.add_argument("--args", nargs="+", default=[], metavar="ITEM",
                   help="take these values as items (GNU parallel's :::)")
    g.add_argument("--glob", action="append", default=[], metavar="PATTERN",
                   help="take the paths matching PATTERN as items, sorted (** recurses); "
                        "repeatable")
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument("-0", "--null", action="store_const", dest="fmt", const="nul",
                     help="items in files are separated by NUL bytes, not lines")
    fmt.add_argument("--jsonl", action="store_const", dest="fmt", const="jsonl",
                     help="each line of the files is a JSON value")
    fmt.add_argument("--csv", action="store_const", dest="fmt", const="csv",
                     help="each row of the CSV files is an item: a dict keyed by the header")
    if not shell:
        g.add_argument("--kwargs", action="store_true",
                       help="call FUNCTION(**item) when an item is an object (--jsonl, --csv)")
    g.add_argument("--batch", type=_positive, default=1, metavar="N",
                   help="pass N items per call: a list to FUNCTION, which returns a list "
                        "of N results" if not shell else
                        "put N items per command: {} becomes all of them")
    g.add_argument("--allow-duplicates", action="store_true",
                   help="run an item as often as it occurs (default: once per content)")

    e = p.add_argument_group("execution")
    e.add_argument("-j", "--jobs", type=_positive, default=_default_jobs(), metavar="N",
                   help="run N items at once (default: the CPUs available, %(default)s)")
    e.add_argument("--timeout", type=duration, metavar="TIME",
                   help="stop an item after TIME (30, 30s, 250ms, 5m); it fails with "
                        "TaskTimeoutError" + (" and its process group is killed" if shell
                                              else " and its worker is replaced"))
    e.add_argument("--retries", type=_nonnegative, default=0, metavar="N",
                   help="run a failed item up to N more times: " + (
                       "any failure (non-zero exit, signal, timeout)" if shell else
                       "a lost worker or a timeout, and the exceptions named by --retry-on"))
    if not shell:
        e.add_argument("--retry-on", action="append", default=[], metavar="EXCEPTION",
                       help="with --retries, also retry items that raise EXCEPTION (a class "
                            "name such as OSError, or a dotted name); repeatable")
        e.add_argument("--init", metavar="MODULE:FUNCTION",
                       help="run FUNCTION once in each worker; what it returns is "
                            "conveyor.worker_state() in the calls")
        e.add_argument("--maxtasksperchild", type=_positive, metavar="N",
                       help="replace a worker after N calls")
        e.add_argument("--max-worker-memory", type=size, metavar="SIZE",
                       help="replace a worker whose memory (RSS) exceeds SIZE (500M, 2G) "
                            "between calls")
    e.add_argument("--trace", type=_trace_file, metavar="FILE",
                   help="write a timeline of every " + ("command" if shell else "call")
                        + ": FILE.html (a report to open in a browser) or FILE.json / "
                          "FILE.json.gz (for Perfetto)")
    e.add_argument("--halt", type=halt, default=None, metavar="WHEN",
                   help="stop early, as GNU parallel: now,fail=N kills running items after "
                        "N failures; soon,fail=N lets them finish; N%% of the finished items "
                        "also works (exit code 3)")
    e.add_argument("--cluster", metavar="ADDRESS",
                   help="run on a Dask cluster (ADDRESS or local): not available yet")
    e.add_argument("--dry-run", action="store_true",
                   help="print what would run (and what the journal says is done); run nothing")
    e.add_argument("--bar", action="store_true",
                   help="show a progress bar on stderr; on resume it starts at what is done")

    j = p.add_argument_group("journal (resume by content)")
    j.add_argument("--journal", metavar="FILE",
                   help="record every item in FILE (SQLite), keyed on its content, so a "
                        "stopped job can resume")
    r = j.add_mutually_exclusive_group()
    r.add_argument("--resume", dest="resume", action="store_const", const="resume",
                   help="skip items that finished (ok or failed) in the journal")
    r.add_argument("--resume-failed", dest="resume", action="store_const",
                   const="resume-failed",
                   help="skip items that finished ok; run failed ones again")
    r.add_argument("--retry-failed", dest="resume", action="store_const",
                   const="retry-failed",
                   help="run only the journal's failed items, with their inputs from the "
                        "journal (no input needed)")
    r.add_argument("--fresh", dest="resume", action="store_const", const="fresh",
                   help="forget what the journal holds and start over")
    j.add_argument("--force", action="store_true",
                   help="use a journal written by a job with a different definition")

    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", metavar="FILE",
                   help="write the JSON lines to FILE instead of stdout")
    o.add_argument("-k", "--keep-order", action="store_true",
                   help="write lines in input order, not as items finish")


def add_parsers(sub: Any) -> None:
    p_map = sub.add_parser(
        "map", help="call a Python function on each item, with a journal to resume",
        description="Call MODULE:FUNCTION on each item; print one JSON line per item.",
        epilog="Example: conveyor map mymodule:process data.txt --journal job.db -j 4")
    p_map.add_argument("function", metavar="MODULE:FUNCTION",
                       help="the function to call, importable from the current directory")
    _common(p_map, shell=False)
    p_map.set_defaults(run=run_job, mode="map", parser=p_map)

    p_run = sub.add_parser(
        "run", help="run a shell command per item, with a journal to resume",
        description="Run COMMAND for each item, with GNU parallel's replacement strings "
                    "{} {.} {/} {//} {/.} {#} (and {field} for objects); values are "
                    "shell-quoted. Each command runs in its own session.",
        epilog="Example: conveyor run 'gzip -k {}' --glob 'logs/*.log' --journal gz.db")
    p_run.add_argument("command_template", metavar="COMMAND",
                       help="the command; {} is replaced by the item (appended if absent)")
    _common(p_run, shell=True)
    p_run.set_defaults(run=run_job, mode="run", parser=p_run)

    p_status = sub.add_parser("status", help="what a journal holds and what a resume would do",
                              description="Counts, rates, failures, and what --resume would do.")
    p_status.add_argument("journal", metavar="JOURNAL", help="the journal file")
    p_status.set_defaults(run=status, parser=p_status)

    p_results = sub.add_parser("results", help="print the items recorded in a journal",
                               description="Print a journal's items in input order.")
    p_results.add_argument("journal", metavar="JOURNAL", help="the journal file")
    p_results.add_argument("--failed", action="store_true", help="only the failed items")
    p_results.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                           help="JSON lines (as the job printed them) or CSV "
                                "(default: %(default)s)")
    p_results.set_defaults(run=results, parser=p_results)


# ---------------------------------------------------------------------------- map / run


def _import(spec: str, what: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{what} must be MODULE:FUNCTION, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the current directory's modules
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"{what} {spec}: cannot import {module_name} ({exc})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{what} {spec}: {module_name} has no {attr}") from None
    if not callable(obj):
        raise UsageError(f"{what} {spec} is not callable: {type(obj).__name__}")
    return obj


def _source_hash(fn: Any) -> str | None:
    try:
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        return None


def build_spec(args: argparse.Namespace) -> JobSpec:
    from conveyor._cli import map_call as _batch_worker
    from conveyor._cli.runners import MapRunner, ShellRunner
    from conveyor._cli.shell import Template

    if args.cluster:
        raise UsageError("--cluster is not available yet: the Dask backend has not landed; "
                         "run without --cluster to use this machine's CPUs")
    fmt = args.fmt or "lines"
    inputs = Inputs(args.inputs, fmt, args.args, args.glob)
    if args.resume == "retry-failed" and (args.inputs or args.args or args.glob):
        raise UsageError("--retry-failed takes its inputs from the journal; give no INPUT, "
                         "--args or --glob")
    if args.resume in ("resume", "resume-failed", "retry-failed") and not args.journal:
        raise UsageError(f"--{args.resume} needs --journal FILE")
    if args.resume is None and not args.dry_run and args.inputs == [] and not (
            args.args or args.glob) and sys.stdin.isatty():
        raise UsageError("no input: give files, - for stdin, --args ITEM ... or --glob PATTERN")
    common = {"format": fmt, "batch": args.batch}
    if args.mode == "map":
        if args.retry_on and not args.retries:
            raise UsageError("--retry-on needs --retries N (how many more times to run)")
        fn = _import(args.function, "the function")
        init = _import(args.init, "--init") if args.init else None
        style = (_batch_worker.BATCH if args.batch > 1
                 else _batch_worker.KWARGS if args.kwargs else _batch_worker.ONE)
        definition = {"mode": "map", "function": args.function, "kwargs": args.kwargs,
                      "init": args.init, **common}

        def make_runner() -> MapRunner | ShellRunner:
            return MapRunner(fn, style, args.retry_on, jobs=args.jobs, timeout=args.timeout,
                             initializer=init, maxtasksperchild=args.maxtasksperchild,
                             max_worker_memory=args.max_worker_memory)

        name = getattr(fn, "__qualname__", args.function)

        def describe(values: list[Any], seq: int) -> str:
            if args.batch > 1:
                return f"{name}({values!r})"
            if args.kwargs and isinstance(values[0], dict):
                return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in values[0].items()) + ")"
            return f"{name}({values[0]!r})"

        source_hash = _source_hash(fn)
    else:
        try:
            template = Template(args.command_template)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        definition = {"mode": "run", "command": template.template, **common}

        def make_runner() -> MapRunner | ShellRunner:
            return ShellRunner(template, jobs=args.jobs, timeout=args.timeout)

        def describe(values: list[Any], seq: int) -> str:
            cmd = template.command(values, seq)
            return shlex.join(cmd) if isinstance(cmd, list) else cmd

        source_hash = None
    return JobSpec(mode=args.mode, definition=definition, source_hash=source_hash,
                   make_runner=make_runner, describe=describe, inputs=inputs,
                   journal_path=args.journal, resume=args.resume or "new", force=args.force,
                   allow_duplicates=args.allow_duplicates, jobs=args.jobs, batch=args.batch,
                   retries=args.retries, halt=args.halt, dry_run=args.dry_run, bar=args.bar,
                   keep_order=args.keep_order, output=args.output,
                   argv=list(args.argv))


def run_job(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "trace", None):
            from conveyor._trace._api import Trace

            with Trace(args.trace):
                return Job(build_spec(args)).run()
        return Job(build_spec(args)).run()
    except (UsageError, JournalError, InputError) as exc:
        print(f"conveyor {args.mode}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


# ------------------------------------------------------------------- status / results


def _open_readonly(args: argparse.Namespace, command: str) -> Journal | None:
    try:
        return Journal(args.journal, readonly=True)
    except JournalError as exc:
        print(f"conveyor {command}: error: {exc}", file=sys.stderr)
        return None


def status(args: argparse.Namespace) -> int:
    journal = _open_readonly(args, "status")
    if journal is None:
        return EXIT_USAGE
    try:
        definition = journal.definition() or {}
        counts = journal.counts()
        what = (f"map {definition.get('function')}" if definition.get("mode") == "map"
                else f"run {definition.get('command')!r}")
        print(f"journal {args.journal}: conveyor {what}")
        total = sum(counts.values())
        print(f"  {total:,} items: {counts['ok']:,} ok, {counts['failed']:,} failed, "
              f"{counts['pending']:,} pending, {counts['running']:,} interrupted while running")
        for run in journal.runs()[-3:]:
            ended = run["ended"]
            wall = (ended - run["started"]) if ended else None
            done = (run["ok"] or 0) + (run["failed"] or 0)
            rate = f", {done / wall:,.1f} items/s" if wall else ""
            print(f"  run {run['id']}: {run['outcome']}, {done:,} items finished "
                  f"({run['failed'] or 0:,} failed){rate}"
                  + (f" in {wall:.1f} s" if wall else ""))
        errors: Counter[str] = Counter()
        examples: dict[str, str] = {}
        for row in journal.iter_items(["failed"]):
            errors[row["error_type"]] += 1
            examples.setdefault(row["error_type"], f"{row['input'][:60]}: "
                                                   f"{(row['error_message'] or '')[:100]}")
        for name, n in errors.most_common(5):
            print(f"  failed with {name}: {n:,} (e.g. {examples[name]})")
        left = counts["pending"] + counts["running"]
        print(f"  --resume would run {left:,} unfinished items and any input not yet read; "
              f"--resume-failed also the {counts['failed']:,} failed; --retry-failed only those")
    finally:
        journal.close()
    return 0


def results(args: argparse.Namespace) -> int:
    from conveyor._cli.output import record_line

    journal = _open_readonly(args, "results")
    if journal is None:
        return EXIT_USAGE
    shell = (journal.definition() or {}).get("mode") == "run"
    statuses = ["failed"] if args.failed else ["ok", "failed"]
    try:
        if args.format == "jsonl":
            for row in journal.iter_items(statuses):
                sys.stdout.write(record_line(row["seq"], row, shell))
        else:
            columns = ["seq", "input", "ok", "result", "error_type", "error_message",
                       "attempts", "seconds", "worker"]
            if shell:
                columns += ["exit_code", "signal", "stdout", "stderr"]
            writer = csv.writer(sys.stdout)
            writer.writerow(columns)
            for row in journal.iter_items(statuses):
                row = dict(row, ok=row["status"] == "ok")
                value = json.loads(row["input"])
                row["input"] = value if isinstance(value, str) else row["input"]
                writer.writerow([row[c] for c in columns])
    finally:
        journal.close()
    return 0
