"""The loop of ``conveyor map`` and ``conveyor run``: input -> journal -> runner -> output.

All of it runs in the main thread of the parent::

    Inputs ──(blocks of 256)──> lookup in the journal ──> skip: done / duplicate
                                        │
                                        └──> ready ──> runner.submit ──> workers or commands
                                                                               │
    output lines <── journal.record <── retry? <── runner.done (a queue) <─────┘

Reading is lazy and bounded: input is read only while fewer than ``window`` calls are
in flight (and, with ``-k``, while few lines are held back for order). Each item's key
is looked up in the journal before it runs: with ``--resume`` an item that finished is
not run again, its journal record is written to the output instead, so the output of a
resumed run is complete. An item read twice in one run is run once (its row already
carries this run's id), unless ``--allow-duplicates`` gives each copy its own key.

SIGINT and SIGTERM only set a flag, which the loop sees within ``TICK`` seconds: it stops
dispatching, kills what runs, sets unfinished items back to ``pending``, commits, and
exits with 130 or 143. Nothing is written from a signal handler.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO, Any

from conveyor._cli.journal import OUTCOME_COLUMNS, Journal, make_key
from conveyor._cli.output import Output, Summary, record_line, warn
from conveyor._cli.runners import ItemOutcome, MapRunner, ShellRunner

TICK = 0.05
READ_BLOCK = 256
STOP_GRACE = 0.5
MAX_HELD = 10_000  # -k: lines held back for order before reading pauses

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_HALTED = 0, 1, 2, 3


class JobSpec:
    """Everything a run needs, resolved from the command line by ``_batch_cmd``."""

    def __init__(self, **fields: Any) -> None:
        self.mode: str = fields.pop("mode")  # "map" | "run"
        self.definition: dict[str, Any] = fields.pop("definition")
        self.source_hash: str | None = fields.pop("source_hash", None)
        self.make_runner: Callable[[], MapRunner | ShellRunner] = fields.pop("make_runner")
        self.describe: Callable[[list[Any], int], str] = fields.pop("describe")
        self.inputs: Any = fields.pop("inputs")
        self.journal_path: str | None = fields.pop("journal_path")
        self.resume: str = fields.pop("resume")  # new|resume|resume-failed|retry-failed|fresh
        self.force: bool = fields.pop("force")
        self.allow_duplicates: bool = fields.pop("allow_duplicates")
        self.jobs: int = fields.pop("jobs")
        self.batch: int = fields.pop("batch")
        self.retries: int = fields.pop("retries")
        self.halt: tuple[str, int, bool] | None = fields.pop("halt")  # when, n, percent
        self.dry_run: bool = fields.pop("dry_run")
        self.bar: bool = fields.pop("bar")
        self.keep_order: bool = fields.pop("keep_order")
        self.output: str | None = fields.pop("output")
        self.argv: list[str] = fields.pop("argv")
        if fields:
            raise TypeError(f"unknown job fields: {sorted(fields)}")


class _Task:
    __slots__ = ("attempts", "content", "key", "run_attempts", "seq", "value")

    def __init__(self, key: bytes, seq: int, value: Any, content: str, attempts: int) -> None:
        self.key = key
        self.seq = seq
        self.value = value
        self.content = content
        self.attempts = attempts
        self.run_attempts = 0


class UsageError(Exception):
    """Exit code 2, with a message: the job cannot start as asked."""


class _Reading(Exception):
    """Raised by the signal handler only while the loop is blocked reading input."""


class _RunState:
    """What one run of a job keeps between the steps of its loop."""

    def __init__(self, salt: Any, run_id: int, window: int) -> None:
        self.salt = salt
        self.run_id = run_id
        self.window = window  # items in flight at most (reading stops at twice that)
        self.ready: deque[_Task] = deque()  # read, not yet submitted
        self.inflight: dict[int, list[_Task]] = {}  # token -> the items of one call
        self.tokens = iter(range(1, 1 << 62))
        self.seq = 0
        self.exhausted = False
        self.halting = False


class Job:
    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.shell = spec.mode == "run"
        self.summary = Summary()
        self.stop_signal: int | None = None
        self.halted = False
        self._reading = False
        self._temp_journal: str | None = None

    # ---------------------------------------------------------------- journal checks

    def _open_journal(self) -> Journal:
        spec = self.spec
        if spec.journal_path is None:
            fd, path = tempfile.mkstemp(prefix="conveyor-journal-", suffix=".db")
            os.close(fd)
            self._temp_journal = path
        else:
            path = spec.journal_path
        if spec.dry_run:
            if spec.journal_path is None or not os.path.exists(path):
                return Journal(":memory:")
            return Journal(path, readonly=True)
        return Journal(path)

    def _check_journal(self, journal: Journal) -> None:
        spec = self.spec
        if spec.resume == "fresh" and not spec.dry_run:
            journal.clear()
        stored = journal.definition()
        used = stored is not None or journal.item_count() > 0
        if used and spec.resume in ("new", "fresh") and not spec.dry_run:
            counts = journal.counts()
            held = ", ".join(f"{n:,} {s}" for s, n in counts.items() if n)
            raise UsageError(
                f"the journal {spec.journal_path} already holds a job ({held or 'no items'}): "
                "add --resume to skip what finished, --resume-failed to also re-run "
                "failures, --retry-failed to re-run only failures, or --fresh to start over")
        if spec.resume == "retry-failed" and not used:
            raise UsageError(f"--retry-failed needs a journal with failed items; "
                             f"{spec.journal_path} holds none")
        if stored is not None:
            differs = [f"{k}: {stored.get(k)!r} in the journal, {v!r} now"
                       for k, v in spec.definition.items() if stored.get(k) != v]
            if differs and not spec.force:
                raise UsageError("the journal was written by a different job; "
                                 + "; ".join(differs) + " (--force uses it all the same, "
                                 "--fresh starts over)")
            if differs:
                warn("--force: using a journal written by a different job: " + "; ".join(differs))
            old_source = journal.get("source_hash")
            if spec.source_hash and old_source and old_source != spec.source_hash:
                warn(f"the source of {spec.definition.get('function')} changed since the "
                     "journal was written; results already in it came from the old code "
                     "(--fresh redoes them)")
        if not spec.dry_run:
            journal.set("definition", json.dumps(spec.definition, sort_keys=True))
            if spec.source_hash:
                journal.set("source_hash", spec.source_hash)
            journal.commit()

    # ------------------------------------------------------------------------ run

    def run(self) -> int:
        spec = self.spec
        try:
            journal = self._open_journal()
        except Exception:
            self._remove_temp()
            raise
        try:
            self._check_journal(journal)
            if spec.dry_run:
                return self._dry_run(journal)
            return self._run(journal)
        finally:
            journal.close()
            self._remove_temp()

    def _remove_temp(self) -> None:
        if self._temp_journal is not None:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self._temp_journal + suffix)

    def _source(self, journal: Journal) -> Iterator[tuple[Any, str, bytes | None]]:
        if self.spec.resume == "retry-failed":
            failed = [(r["input"], r["key"]) for r in journal.iter_items(["failed"])]
            for content, key in failed:
                yield json.loads(content), content, key
            return
        for value, content in self.spec.inputs:
            yield value, content, None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        if self._reading:
            raise _Reading

    def _run(self, journal: Journal) -> int:
        spec = self.spec
        window = spec.jobs * spec.batch if self.shell else max(32, 8 * spec.jobs) * spec.batch
        st = _RunState(journal.salt(), journal.start_run(spec.argv), window)
        stream: IO[str] = (open(spec.output, "w", encoding="utf-8")  # noqa: SIM115
                           if spec.output else sys.stdout)
        out = Output(stream, spec.keep_order)
        bar = self._bar(journal)
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        runner: MapRunner | ShellRunner | None = None
        started = time.monotonic()
        source = self._source(journal)
        try:
            runner = spec.make_runner()
            self._loop(journal, runner, source, st, out, bar)
        except _Reading:
            pass  # a signal while blocked reading input: stop_signal is set
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if runner is not None:
                if self.stop_signal is not None or st.inflight:
                    # An interrupt lets running calls finish for up to STOP_GRACE s, so
                    # what is nearly done is kept, and still exits within about 1 s.
                    runner.stop(STOP_GRACE if self.stop_signal is not None else 0.0)
                runner.close()
                self._drain(runner, journal, st.inflight, out, bar)
            for t in st.ready:  # read but not started: pending, so status counts them
                journal.mark_running(t.key, t.seq, t.content, st.run_id)
            journal.reset_running()
            ending = ("interrupted" if self.stop_signal is not None
                      else "halted" if st.halting else "done")
            journal.end_run(st.run_id, ending, self.summary.ok, self.summary.failed)
            journal.commit()
            out.flush_all()
            if stream is not sys.stdout:
                stream.close()
            if bar is not None:
                bar.close()
        wall = time.monotonic() - started
        print(self.summary.text(wall, self._retry_command()), file=sys.stderr, flush=True)
        return self._exit_code(st.halting)

    def _loop(self, journal: Journal, runner: MapRunner | ShellRunner, source: Iterator[Any],
              st: _RunState, out: Output, bar: Any) -> None:
        """Read, dispatch and collect until the input is done, a halt, or a signal."""
        while self.stop_signal is None:
            self._read_more(journal, source, st, out)
            self._submit_ready(journal, runner, st)
            if not st.inflight and (st.halting or (st.exhausted and not st.ready)):
                break
            if self.stop_signal is not None:
                break
            try:
                token, outcomes = runner.done.get(timeout=TICK)
            except queue.Empty:
                journal.tick()
                out.flush()
                continue
            self._collect(journal, runner, st, token, outcomes, out, bar)
            journal.tick()

    def _read_more(self, journal: Journal, source: Iterator[Any], st: _RunState,
                   out: Output) -> None:
        """Read input while there is room (bounded memory)."""
        spec = self.spec
        running = sum(len(g) for g in st.inflight.values())
        while (not st.exhausted and not st.halting and len(st.ready) < max(st.window, spec.batch)
               and running + len(st.ready) < 2 * st.window and out.held < MAX_HELD):
            block = self._read_block(source)
            if block is None:
                break
            if not block:
                st.exhausted = True
                break
            st.seq = self._admit(journal, st.salt, st.run_id, block, st.seq, st.ready, out)

    def _submit_ready(self, journal: Journal, runner: MapRunner | ShellRunner,
                      st: _RunState) -> None:
        spec, ready = self.spec, st.ready
        running = sum(len(g) for g in st.inflight.values())
        while ready and not st.halting and running < st.window:
            if len(ready) < spec.batch and not st.exhausted:
                break
            group = [ready.popleft() for _ in range(min(spec.batch, len(ready)))]
            token = next(st.tokens)
            st.inflight[token] = group
            for t in group:
                journal.mark_running(t.key, t.seq, t.content, st.run_id)
            runner.submit(token, [t.value for t in group], group[0].seq)
            running += len(group)

    def _collect(self, journal: Journal, runner: MapRunner | ShellRunner, st: _RunState,
                 token: int, outcomes: list[ItemOutcome], out: Output, bar: Any) -> None:
        """Record this finished call and every other one already reported."""
        while True:
            group = st.inflight.pop(token, [])  # none: dropped by --halt now
            for task, outcome in zip(group, outcomes, strict=False):
                if self._finish(journal, task, outcome, st.ready, out, bar):
                    st.halting = st.halting or self._halt_reached()
            try:
                token, outcomes = runner.done.get_nowait()
            except queue.Empty:
                break
        halt = self.spec.halt
        if st.halting and halt is not None and halt[0] == "now" and st.inflight:
            runner.stop()
            st.inflight.clear()

    def _exit_code(self, halting: bool) -> int:
        if self.stop_signal is not None:
            warn(f"interrupted by {signal.Signals(self.stop_signal).name}; the journal is "
                 "saved: add --resume to go on")
            return 128 + self.stop_signal
        if halting:
            warn("stopped by --halt; add --resume to run the rest")
            return EXIT_HALTED
        return EXIT_FAILED if self.summary.failed or self.summary.skipped_failed else EXIT_OK

    def _drain(self, runner: MapRunner | ShellRunner, journal: Journal,
               inflight: dict[int, list[_Task]], out: Output, bar: Any) -> None:
        """After a stop: keep the items that finished ok meanwhile (work done is never
        thrown away); the rest stay ``running`` until ``reset_running``."""
        spare: deque[_Task] = deque()
        while True:
            try:
                token, outcomes = runner.done.get_nowait()
            except queue.Empty:
                return
            group = inflight.pop(token, None)
            for task, outcome in zip(group or (), outcomes, strict=False):
                if outcome.ok:
                    self._finish(journal, task, outcome, spare, out, bar)

    def _bar(self, journal: Journal) -> Any:
        if not self.spec.bar:
            return None
        from conveyor._pool.progress import make_bar

        counts = journal.counts()
        done = counts["ok"] + (counts["failed"] if self.spec.resume == "resume" else 0)
        if self.spec.resume in ("new", "fresh"):
            done = 0
        total = None if self.spec.resume == "retry-failed" else self.spec.inputs.total()
        return make_bar(total=total, initial=done, desc=f"conveyor {self.spec.mode}",
                        unit="item", dynamic_ncols=True)

    def _read_block(self, source: Iterator[Any]) -> list[Any] | None:
        block = []
        self._reading = True
        try:
            for _ in range(READ_BLOCK):
                try:
                    block.append(next(source))
                except StopIteration:
                    break
        finally:
            self._reading = False
        return block

    def _admit(self, journal: Journal, salt: bytes, run_id: int,
               block: list[tuple[Any, str, bytes | None]], seq: int, ready: deque[_Task],
               out: Output) -> int:
        keys = [key or make_key(salt, content) for _, content, key in block]
        rows = journal.lookup(keys)
        # Keys admitted but not yet in the journal: this block's, and those still waiting
        # in ``ready`` from earlier blocks (a row is written when an item is started).
        mine: set[bytes] = {t.key for t in ready}
        resume = self.spec.resume
        for (value, content, _), key in zip(block, keys, strict=True):
            seq += 1
            row = rows.get(key)
            if key in mine or (row is not None and row["run"] == run_id):
                if not self.spec.allow_duplicates:
                    self.summary.duplicates += 1
                    out.skip(seq)
                    continue
                key, row = self._next_copy(journal, salt, content, run_id, mine)
            mine.add(key)
            status = row["status"] if row is not None else None
            if status == "ok" or (status == "failed" and resume == "resume"):
                journal.touch(key, seq, run_id)
                if status == "ok":
                    self.summary.skipped_ok += 1
                else:
                    self.summary.skipped_failed += 1
                out.write(seq, record_line(seq, row, self.shell))  # type: ignore[arg-type]
                continue
            attempts = row["attempts"] if row is not None else 0
            ready.append(_Task(key, seq, value, content, attempts))
        return seq

    def _next_copy(self, journal: Journal, salt: bytes, content: str, run_id: int,
                   mine: set[bytes]) -> tuple[bytes, dict[str, Any] | None]:
        """--allow-duplicates: the key of the first copy of ``content`` not yet read in
        this run (copy k of an item has the same key in every run)."""
        k = 1
        while True:
            key = make_key(salt, content, k)
            row = journal.lookup([key]).get(key)
            if key not in mine and (row is None or row["run"] != run_id):
                return key, row
            k += 1

    def _finish(self, journal: Journal, task: _Task, outcome: ItemOutcome, ready: deque[_Task],
                out: Output, bar: Any) -> bool:
        """Record one attempt; True when the item is finished (not retried)."""
        task.attempts += 1
        task.run_attempts += 1
        if (not outcome.ok and outcome.retryable and task.run_attempts <= self.spec.retries
                and self.stop_signal is None):
            self.summary.retried += 1
            ready.appendleft(task)
            return False
        row = {"status": "ok" if outcome.ok else "failed", "attempts": task.attempts,
               "started": outcome.started, "seconds": outcome.seconds,
               "worker": outcome.worker, "result": outcome.result,
               "error_type": outcome.error_type, "error_message": outcome.error_message,
               "exit_code": outcome.exit_code, "signal": outcome.signal,
               "stdout": outcome.stdout,
               "stderr": outcome.stderr if self.shell else outcome.traceback,
               "input": task.content}
        journal.record(task.key, [row[c] for c in OUTCOME_COLUMNS])
        out.write(task.seq, record_line(task.seq, row, self.shell))
        self.summary.finished(outcome.ok, outcome.seconds, outcome.error_type)
        if bar is not None:
            bar.update(1)
        return True

    def _halt_reached(self) -> bool:
        halt = self.spec.halt
        if halt is None:
            return False
        _, n, percent = halt
        failed = self.summary.failed
        if not percent:
            return failed >= n
        finished = self.summary.ok + failed
        # A percentage is judged once enough items finished for it to mean something:
        # one failure among the first three is not "34% of the jobs".
        return finished >= max(1, -(-100 // max(n, 1))) and 100 * failed >= n * finished

    def _retry_command(self) -> str | None:
        if self.spec.journal_path is None:
            return None
        drop = {"--resume", "--resume-failed", "--retry-failed", "--fresh", "--force"}
        argv = [a for a in self.spec.argv if a not in drop]
        return shlex.join(["conveyor", *argv, "--retry-failed"])

    # -------------------------------------------------------------------- dry run

    def _dry_run(self, journal: Journal) -> int:
        salt_text = journal.get("salt")
        salt = bytes.fromhex(salt_text) if salt_text else b""
        seen: set[bytes] = set()
        would_run = skipped = 0
        batch: list[Any] = []
        first = 0
        for seq, (value, content, key) in enumerate(self._source(journal), 1):
            key = key or make_key(salt, content)
            if key in seen and not self.spec.allow_duplicates:
                continue
            seen.add(key)
            row = journal.lookup([key]).get(key) if salt_text else None
            status = row["status"] if row else None
            done = status == "ok" or (status == "failed" and self.spec.resume == "resume")
            if done and self.spec.resume not in ("new", "fresh"):
                skipped += 1
                print(f"# done ({status}), not run again: {content}")
                continue
            if not batch:
                first = seq
            batch.append(value)
            if len(batch) == self.spec.batch:
                print(self.spec.describe(batch, first))
                would_run += len(batch)
                batch = []
        if batch:
            print(self.spec.describe(batch, first))
            would_run += len(batch)
        warn(f"dry run: {would_run:,} items would run, {skipped:,} are done in the journal")
        return EXIT_OK

