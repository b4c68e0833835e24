"""The two ways a batch job runs its items, behind one small interface.

``MapRunner`` (``conveyor map``) submits each call to a ``conveyor.Pool``; the worker
side is ``_batch_worker.run_call``. ``ShellRunner`` (``conveyor run``) runs commands from
``jobs`` named threads of the parent: a command is already a process of its own, so a
Python worker between conveyor and the command would only add a process per item and,
if killed, orphan the command's process group.

Both report finished work on ``done``, a queue of ``(token, [ItemOutcome, ...])`` (one
per item of the call), read by the job loop in the main thread; that thread alone
touches the journal and the output.
"""

from __future__ import annotations

import queue
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from conveyor._cli import map_call as _batch_worker
from conveyor._cli.shell import CommandResult, Template, kill_group, run_command


class ItemOutcome:
    """What one attempt at one item gave. ``retryable`` says whether ``--retries`` may
    run it again (a lost worker or a timeout always; an exception if ``--retry-on``
    names it; in shell mode any failure, as GNU parallel does)."""

    __slots__ = ("error_message", "error_type", "exit_code", "ok", "result", "retryable",
                 "seconds", "signal", "started", "stderr", "stdout", "traceback", "worker")

    def __init__(self, ok: bool, *, result: str | None = None, error_type: str | None = None,
                 error_message: str | None = None, traceback: str | None = None,
                 retryable: bool = False, seconds: float = 0.0, worker: int | None = None,
                 started: float | None = None, exit_code: int | None = None,
                 signal: str | None = None, stdout: str | None = None,
                 stderr: str | None = None) -> None:
        self.ok = ok
        self.result = result
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback
        self.retryable = retryable
        self.seconds = seconds
        self.worker = worker
        self.started = started
        self.exit_code = exit_code
        self.signal = signal
        self.stdout = stdout
        self.stderr = stderr


Done = queue.SimpleQueue[tuple[int, list[ItemOutcome]]]


class MapRunner:
    """Calls of a Python function on a ``conveyor.Pool``, one future per call."""

    def __init__(self, fn: Callable[..., Any], style: int, retry_on: Sequence[str], *,
                 jobs: int, timeout: float | None, initializer: Callable[..., Any] | None,
                 maxtasksperchild: int | None, max_worker_memory: int | None) -> None:
        import conveyor

        self.done: Done = queue.SimpleQueue()
        self._fn = fn
        self._style = style
        self._retry_on = tuple(retry_on)
        self._futures: dict[int, Future[Any]] = {}
        self._pool = conveyor.Pool(jobs, initializer=initializer, task_timeout=timeout,
                                   maxtasksperchild=maxtasksperchild,
                                   max_worker_memory=max_worker_memory)

    def submit(self, token: int, values: Sequence[Any], seq: int) -> None:
        fut = self._pool.submit(_batch_worker.run_call, self._fn, list(values), self._style,
                                self._retry_on)
        t0 = time.perf_counter()
        n = len(values)
        self._futures[token] = fut

        def done(f: Future[Any]) -> None:
            self._futures.pop(token, None)
            self.done.put((token, _map_outcomes(f, n, t0)))

        fut.add_done_callback(done)

    def stop(self, grace: float = 0.0) -> None:
        """Stop now (Ctrl-C, ``--halt now``): drop queued calls, give running ones
        ``grace`` seconds to finish (their results are kept), then kill the workers."""
        from concurrent.futures import wait

        futures = list(self._futures.values())
        for fut in futures:
            fut.cancel()
        if grace > 0:
            wait(futures, timeout=grace)
        self._pool.terminate()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _map_outcomes(fut: Future[Any], n: int, t0: float) -> list[ItemOutcome]:
    from concurrent.futures import CancelledError

    from conveyor.errors import TaskTimeoutError, WorkerLostError

    try:
        outcomes = fut.result()
    except (CancelledError, Exception) as exc:
        seconds = (time.perf_counter() - t0) / n
        retryable = isinstance(exc, TaskTimeoutError | WorkerLostError)
        worker = getattr(exc, "pid", None)
        one = ItemOutcome(False, error_type=type(exc).__name__, error_message=str(exc),
                          retryable=retryable, seconds=seconds, worker=worker,
                          started=time.time() - seconds)
        return [one] * n
    items = []
    for ok, result, error, seconds, pid, started in outcomes:
        if ok:
            items.append(ItemOutcome(True, result=result, seconds=seconds, worker=pid,
                                     started=started))
        else:
            assert error is not None
            etype, message, tb, retryable = error
            items.append(ItemOutcome(False, error_type=etype, error_message=message,
                                     traceback=tb, retryable=retryable, seconds=seconds,
                                     worker=pid, started=started))
    return items


class ShellRunner:
    """Commands run by ``jobs`` threads of the parent, each in its own session."""

    def __init__(self, template: Template, *, jobs: int, timeout: float | None) -> None:
        self.done: Done = queue.SimpleQueue()
        self._template = template
        self._timeout = timeout
        self._todo: queue.SimpleQueue[tuple[int, Sequence[Any], int] | None] = (
            queue.SimpleQueue())
        self._running: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"conveyor-run-{i}",
                                          daemon=True) for i in range(jobs)]
        from conveyor._trace import _recorder

        self._tracer = _recorder.ACTIVE  # conveyor run --trace: a span per command
        for t in self._threads:
            t.start()

    def submit(self, token: int, values: Sequence[Any], seq: int) -> None:
        self._todo.put((token, values, seq))

    def _work(self, slot: int) -> None:
        me = threading.get_ident()

        def keep(proc: subprocess.Popen[bytes]) -> None:
            with self._lock:
                self._running[me] = proc
                stopping = self._stopping
            if stopping:  # started just as the job was interrupted
                kill_group(proc, signal.SIGKILL)

        while True:
            job = self._todo.get()
            if job is None:
                return
            token, values, seq = job
            if self._stopping:
                continue
            try:
                command = self._template.command(values, seq)
            except ValueError as exc:
                bad = ItemOutcome(False, error_type="TemplateError", error_message=str(exc))
                self.done.put((token, [bad] * len(values)))
                continue
            started = time.monotonic_ns()
            result = run_command(command, self._timeout, keep)
            with self._lock:
                self._running.pop(me, None)
            outcome = _shell_outcome(result, self._timeout)
            if self._tracer is not None:
                self._tracer.command_done(
                    self, len(self._threads), slot,
                    command if isinstance(command, str) else shlex.join(command), started,
                    time.monotonic_ns(), result[5], outcome.error_message)
            self.done.put((token, [outcome] * len(values)))

    def stop(self, grace: float = 0.0) -> None:
        """Interrupt: SIGTERM to every running command's group, SIGKILL after 1 s.
        (No grace: a command is told to stop at once, and has 1 s to do so.)"""
        with self._lock:
            self._stopping = True
            procs = list(self._running.values())
        for proc in procs:
            kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            kill_group(proc, signal.SIGKILL)  # its group may outlive it: kill it too

    def close(self) -> None:
        for _ in self._threads:
            self._todo.put(None)
        for t in self._threads:
            t.join()


def _shell_outcome(r: CommandResult, timeout: float | None) -> ItemOutcome:
    code, sig, out, err, seconds, pid, started, timed_out = r
    ok = code == 0 and not timed_out
    etype = message = None
    if timed_out:
        etype, message = "TaskTimeoutError", f"the command ran longer than --timeout {timeout} s"
    elif sig is not None:
        etype, message = "Signal", f"the command was killed by {sig}"
    elif code != 0:
        etype, message = "ExitCode", f"the command exited with code {code}"
    return ItemOutcome(ok, error_type=etype, error_message=message, retryable=not ok,
                       seconds=seconds, worker=pid or None, started=started, exit_code=code,
                       signal=sig, stdout=out, stderr=err)
