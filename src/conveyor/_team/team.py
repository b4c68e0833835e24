"""``team(n, fn, *args)``: n processes in lock-step, a barrier that a crash cannot hang.

Data flow::

    parent (coordinator)                          member rank r  (fn(ctx, *args))
    ────────────────────                          ─────────────────────────────────
                        team segment (shared) <── ctx.barrier(): arrive, spin, sleep on
                        count, generation,           its wake-up pipe; the last arrival
                        broken flag + reason         wakes the others (no parent hop)
    selector(pipes + sentinels) <── ("gather", …) ctx.gather/broadcast/allreduce()
      all n arrived?  ───────────> ("ok", value) ─> returns
      a member raised  <────────── ("error", exc, traceback)
      a sentinel fired (death)
        └─> broken flag + wake-ups, ("broken", rank, why) ─> TeamBrokenError
    results in rank order  <────── ("result", value)

The barrier lives in shared memory (:mod:`conveyor._team.state`), because it carries no
data and users call it once per step. Collectives that carry data go through the parent:
members send their part on their own pipe and block until the parent replies. Because the
parent also waits on every member's process sentinel, a member that raises or dies breaks
the team at once: the members waiting (now or later) in a collective fail with
:class:`TeamBrokenError` naming the culprit instead of waiting forever, which is what a
``multiprocessing.Barrier`` does when a party never arrives. A member killed while holding
the team segment's lock cannot block the others: the kernel releases that lock.

The parent then raises the first member's original exception, with the member's traceback
attached as ``__cause__`` (:class:`conveyor.RemoteTraceback`), or
:class:`TeamMemberLostError` if the member died without one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import operator
import os
import pickle
import selectors
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from conveyor._ipc.segment import Segment
from conveyor._ipc.serialize import dumps as _dumps
from conveyor._team.state import SPIN_SECONDS, TeamState
from conveyor.errors import RemoteTraceback, TeamBrokenError, TeamMemberLostError

R = TypeVar("R")

# After the team breaks, members busy computing get this long to reach a collective
# (where they learn of it) or finish, before they are terminated.
BROKEN_GRACE = 2.0
MISMATCH_POLL = 0.05

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "sum": operator.add,
    "prod": operator.mul,
    "min": min,
    "max": max,
}


class TeamContext:
    """What each team member receives as its first argument.

    ``rank`` (0 .. size-1) and ``size``; the collectives ``barrier``, ``broadcast``,
    ``gather`` and ``allreduce``, which every member must call in the same order.

    Example::

        def step(ctx, grid):
            rows = ctx.block(len(grid))       # this member's share of the rows
            ...
            ctx.barrier()                     # everyone has finished this step
            total = ctx.allreduce(local_sum)  # the same total in every member
    """

    def __init__(
        self,
        rank: int,
        size: int,
        conn: multiprocessing.connection.Connection,
        state: TeamState | None = None,
        wake: multiprocessing.connection.Connection | None = None,
    ) -> None:
        self.rank = rank
        self.size = size
        self._conn = conn
        self._state = state
        self._wake = wake
        # Spinning only helps when every member has a core to spin on.
        self._spin = SPIN_SECONDS if size <= (os.cpu_count() or 1) else 0.0

    def _collective(self, kind: str, payload: Any, timeout: float | None = None) -> Any:
        self._conn.send((kind, payload))
        if timeout is not None and not self._conn.poll(timeout):
            raise TeamBrokenError(
                self.rank, self.rank, f"timed out after {timeout:g} s in {kind}()"
            )
        try:
            reply = self._conn.recv()
        except EOFError:
            raise TeamBrokenError(self.rank, None, "lost its parent process") from None
        if reply[0] == "broken":
            raise TeamBrokenError(self.rank, reply[1], reply[2])
        return reply[1]

    def barrier(self, timeout: float | None = None) -> None:
        """Wait until every member has called ``barrier()``.

        Raises :class:`TeamBrokenError` at once if a member failed, and also (breaking the
        team for the others, like ``threading.Barrier``) after ``timeout`` seconds.
        """
        assert self._state is not None and self._wake is not None
        self._state.wait(self.rank, self._wake, timeout, self._spin)

    def broadcast(self, value: Any = None, root: int = 0) -> Any:
        """Every member returns ``value`` as given by member ``root`` (others pass anything)."""
        if not 0 <= root < self.size:
            raise ValueError(f"broadcast root must be a rank in 0..{self.size - 1}; got {root}")
        return self._collective("broadcast", (root, value if self.rank == root else None))

    def gather(self, value: Any) -> list[Any]:
        """Every member returns the list of all members' values, in rank order."""
        return self._collective("gather", value)  # type: ignore[no-any-return]

    def allreduce(self, value: Any, op: str | Callable[[Any, Any], Any] = "sum") -> Any:
        """Combine every member's ``value`` with ``op`` and return the result to all.

        ``op`` is ``"sum"``, ``"prod"``, ``"min"``, ``"max"`` (numbers, or numpy arrays
        element-wise) or a picklable function of two values, applied in rank order.
        """
        if isinstance(op, str) and op not in _OPS:
            raise ValueError(f"allreduce op must be one of {sorted(_OPS)} or a function; got {op!r}")
        return self._collective("allreduce", (op, value))

    def block(self, n: int) -> range:
        """This member's contiguous share of ``range(n)`` (sizes differ by at most one)."""
        per, extra = divmod(n, self.size)
        start = self.rank * per + min(self.rank, extra)
        return range(start, start + per + (1 if self.rank < extra else 0))

    def __repr__(self) -> str:
        return f"<TeamContext rank {self.rank} of {self.size}>"


def _reduce(op: str | Callable[[Any, Any], Any], values: Sequence[Any]) -> Any:
    fn: Callable[[Any, Any], Any]
    if callable(op):
        fn = op
    elif op in ("min", "max") and any(type(v).__module__ == "numpy" for v in values):
        import numpy  # only reached when members already sent numpy arrays

        fn = numpy.minimum if op == "min" else numpy.maximum
    else:
        fn = _OPS[op]
    acc = values[0]
    for v in values[1:]:
        acc = fn(acc, v)
    return acc


def _member_main(
    rank: int,
    size: int,
    payload: bytes,
    conn: multiprocessing.connection.Connection,
    state_name: str,
    wake: multiprocessing.connection.Connection,
    wake_all: list[multiprocessing.connection.Connection],
) -> None:
    state = TeamState(Segment.attach(state_name), size, wake_all)
    os.set_blocking(wake.fileno(), False)
    ctx = TeamContext(rank, size, conn, state, wake)
    try:
        try:
            fn, args = pickle.loads(payload)
            result = fn(ctx, *args)
        except BaseException as exc:  # Ctrl-C too: the parent must hear why we stop
            tb = traceback.format_exc()
            try:
                data = _dumps(exc)
            except Exception:
                data = _dumps(RuntimeError(f"{type(exc).__name__}: {exc} (not picklable)"))
            conn.send(("error", data, tb))
            return
        try:
            data = _dumps(result)
        except Exception as exc:
            conn.send(
                ("error", _dumps(TypeError(f"rank {rank} returned an unpicklable result: {exc}")),
                 traceback.format_exc())
            )
            return
        conn.send(("result", data))
    except (BrokenPipeError, EOFError, OSError):
        pass  # the parent is gone; nobody is left to tell
    finally:
        conn.close()
        state.close()


@dataclass
class _Failure:
    rank: int
    exc: BaseException
    secondary: bool  # a TeamBrokenError caused by another member's failure


def team(n: int, fn: Callable[..., R], *args: Any, start_method: str | None = None) -> list[R]:
    """Run ``fn(ctx, *args)`` in ``n`` processes at once; return their results in rank order.

    ``ctx`` is a :class:`TeamContext`: ``ctx.rank``, ``ctx.size``, ``ctx.barrier()``,
    ``ctx.broadcast()``, ``ctx.gather()``, ``ctx.allreduce()``. Arguments are sent with
    pickle (cloudpickle for lambdas and closures); shared objects (``SharedArray``, shared
    structs) arrive as the same shared memory. If a member raises or dies, the others fail
    promptly with :class:`TeamBrokenError` and this call raises the original error with the
    member's traceback (or :class:`TeamMemberLostError`). Ctrl-C stops every member.

    ``sys.exit(code)`` in a member is such an error: the team stops and this call raises
    ``SystemExit(code)`` in the caller, so a program that does not catch it exits with
    that code, as it would had it called ``sys.exit`` itself (``ProcessPoolExecutor``
    does the same with a task's ``sys.exit``). A member that returns normally is the way
    to end early; catch ``SystemExit`` around ``team()`` to keep going.

    Example::

        def work(ctx, grid):
            for step in range(100):
                update(grid, ctx.block(len(grid)))
                ctx.barrier()
            return ctx.rank

        assert conveyor.team(4, work, grid) == [0, 1, 2, 3]
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(
            f"team(n, fn, *args): n is the number of members and must be an int; "
            f"got {type(n).__name__} {n!r}"
        )
    if n < 1:
        raise ValueError(f"a team needs at least one member; got n={n}")
    if not callable(fn):
        raise TypeError(
            f"team(n, fn, *args): fn must be a function of (ctx, *args); got "
            f"{type(fn).__name__} {fn!r}"
        )
    mp: Any = multiprocessing.get_context(start_method)
    payload = _dumps((fn, args))
    conns: dict[int, multiprocessing.connection.Connection] = {}
    procs: dict[int, Any] = {}
    wake_pipes = [mp.Pipe(duplex=False) for _ in range(n)]  # (read end, write end)
    wake_all = [w for _, w in wake_pipes]
    state = TeamState.create(n, wake_all)
    try:
        for rank in range(n):
            parent_end, child_end = mp.Pipe(duplex=True)
            proc = mp.Process(
                target=_member_main,
                args=(rank, n, payload, child_end, state.seg.name, wake_pipes[rank][0], wake_all),
                name=f"conveyor-team-{rank}",
                # Not daemonic, so a member may start its own pool; this function's
                # finally-block is what ends members.
                daemon=False,
            )
            proc.start()
            child_end.close()
            wake_pipes[rank][0].close()
            conns[rank], procs[rank] = parent_end, proc
        results, failure = _coordinate(n, conns, procs, state)
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
        for proc in procs.values():
            proc.join()
            proc.close()
        for conn in conns.values():
            conn.close()
        for r, w in wake_pipes:
            r.close()
            w.close()
        state.close()
    if failure is not None:
        exc = failure.exc
        raise exc
    return [results[r] for r in range(n)]


def _coordinate(
    n: int,
    conns: dict[int, multiprocessing.connection.Connection],
    procs: dict[int, Any],
    state: TeamState,
) -> tuple[dict[int, Any], _Failure | None]:
    return _Coordinator(n, conns, procs, state).run()


class _Coordinator:
    """The parent's side of a team's run: it answers the members' collectives (every
    member's call arrives, then all get the replies), collects results, and turns the
    first failure into a broken team that every waiting member hears about."""

    def __init__(self, n: int, conns: dict[int, multiprocessing.connection.Connection],
                 procs: dict[int, Any], state: TeamState) -> None:
        self.n = n
        self.conns = conns
        self.procs = procs
        self.state = state
        self.results: dict[int, Any] = {}
        self.finished: set[int] = set()
        self.pending: dict[int, tuple[str, Any]] = {}  # rank -> (collective, payload)
        self.failure: _Failure | None = None
        self.broken: tuple[int | None, str] | None = None
        self.broken_at = 0.0

    def _send(self, rank: int, msg: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # a member that died is noticed by its sentinel
            self.conns[rank].send(msg)

    def break_team(self, rank: int | None, why: str) -> None:
        if self.broken is None:
            self.broken, self.broken_at = (rank, why), time.monotonic()
            self.state.break_team(rank, why)
        broken = self.broken
        for r in list(self.pending):
            self._send(r, ("broken", broken[0], broken[1]))
        self.pending.clear()

    def fail(self, rank: int, exc: BaseException, tb: str | None) -> None:
        if tb is not None:
            exc.__cause__ = RemoteTraceback(tb)
        secondary = isinstance(exc, TeamBrokenError) and exc.failed_rank != rank
        if self.failure is None or (self.failure.secondary and not secondary):
            self.failure = _Failure(rank, exc, secondary)
        if not secondary:
            why = f"raised {type(exc).__name__}: {exc}"
            if isinstance(exc, TeamMemberLostError):
                why = "died" + (f" ({exc.signal_name})" if exc.signal_name else f" (exit code {exc.exitcode})")
            self.break_team(rank, why)

    def handle(self, rank: int, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "result":
            self.results[rank] = pickle.loads(msg[1])
            self.finished.add(rank)
            self.state.set_finished(rank)
            if self.pending:
                self.break_team(rank, f"returned while rank(s) {sorted(self.pending)} wait in "
                                      f"{next(iter(self.pending.values()))[0]}()")
            return
        if kind == "error":
            self.finished.add(rank)
            self.fail(rank, pickle.loads(msg[1]), msg[2])
            return
        if self.broken is not None:
            self._send(rank, ("broken", self.broken[0], self.broken[1]))
            return
        if self.finished:
            self._send(rank, ("broken", min(self.finished), f"returned; it cannot join {kind}()"))
            return
        self.pending[rank] = (kind, msg[1])
        if len(self.pending) == self.n:
            self.complete()

    def complete(self) -> None:
        pending, n = self.pending, self.n
        kinds = {r: k for r, (k, _) in pending.items()}
        calls = {r: _describe(k, p) for r, (k, p) in pending.items()}
        if len(set(calls.values())) > 1:
            detail = ", ".join(f"rank {r} called {c}" for r, c in sorted(calls.items()))
            self.break_team(None, f"called different collectives ({detail})")
            return
        replies = self._replies(kinds[0], [pending[r][1] for r in range(n)])
        if replies is None:
            return
        pending.clear()
        for r in range(n):
            self._send(r, ("ok", replies[r]))

    def _replies(self, kind: str, parts: list[Any]) -> list[Any] | None:
        """What each member gets back from the collective ``kind`` (None: it broke)."""
        n = self.n
        if kind == "barrier":
            return [None] * n
        if kind == "broadcast":
            root = parts[0][0]
            return [parts[root][1]] * n
        if kind == "gather":
            return [parts] * n
        op = parts[0][0]
        try:
            total = _reduce(op, [p[1] for p in parts])
        except Exception as exc:
            self.break_team(None, f"sent values that allreduce(op={op!r}) cannot combine: "
                                  f"{type(exc).__name__}: {exc}")
            return None
        return [total] * n

    def _wait_timeout(self) -> tuple[float | None, bool]:
        """How long to wait for the next event; True: a mismatch broke the team just now."""
        if self.broken is not None:
            return max(0.0, self.broken_at + BROKEN_GRACE - time.monotonic()), False
        if not self.pending:
            return None, False
        # Members blocked here while others wait in the shared-memory barrier would wait
        # forever; look for that mismatch now and then.
        in_barrier = [r for r in self.state.waiting_in_current_barrier() if r not in self.pending]
        if in_barrier:
            calls = {r: "barrier()" for r in in_barrier}
            calls.update({r: _describe(k, p) for r, (k, p) in self.pending.items()})
            detail = ", ".join(f"rank {r} called {c}" for r, c in sorted(calls.items()))
            self.break_team(None, f"called different collectives ({detail})")
            return MISMATCH_POLL, True
        return MISMATCH_POLL, False

    def _member_event(self, sel: selectors.BaseSelector, what: str, rank: int) -> None:
        conn = self.conns[rank]
        if what == "conn":
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                # It died; its sentinel says how. Stop watching the dead pipe.
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(conn.fileno())
                return
            self.handle(rank, msg)
            return
        with contextlib.suppress(EOFError, OSError):
            while rank not in self.finished and conn.poll():
                self.handle(rank, conn.recv())  # its last words, sent before it exited
        if rank not in self.finished:
            proc = self.procs[rank]
            proc.join()
            self.finished.add(rank)
            self.fail(rank, TeamMemberLostError(rank, proc.pid, proc.exitcode), None)

    def run(self) -> tuple[dict[int, Any], _Failure | None]:
        conns, procs = self.conns, self.procs
        # One selector for the whole run: building one per wake-up (as connection.wait
        # does) costs more than the barrier round trip itself.
        with selectors.DefaultSelector() as sel:
            for r in range(self.n):
                sel.register(conns[r].fileno(), selectors.EVENT_READ, ("conn", r))
                sel.register(procs[r].sentinel, selectors.EVENT_READ, ("sentinel", r))
            while len(self.finished) < self.n:
                timeout, mismatch = self._wait_timeout()
                if mismatch:
                    continue
                events = sel.select(timeout)
                if not events and self.broken is not None:
                    break  # members still computing after the grace period: the caller ends them
                for key, _ in events:
                    what, rank = key.data
                    if rank in self.finished:
                        continue
                    self._member_event(sel, what, rank)
                    if rank in self.finished:
                        for fd in (conns[rank].fileno(), procs[rank].sentinel):
                            with contextlib.suppress(KeyError, ValueError):
                                sel.unregister(fd)
        return self.results, self.failure


def _describe(kind: str, payload: Any) -> str:
    if kind == "broadcast":
        return f"broadcast(root={payload[0]})"
    if kind == "allreduce":
        op = payload[0]
        return f"allreduce(op={op!r})" if isinstance(op, str) else "allreduce(op=<function>)"
    return f"{kind}()"
