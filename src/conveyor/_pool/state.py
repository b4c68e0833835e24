"""What the supervisor's parts share: the handle of one worker process, and the state of
the supervisor thread, declared once for the parts (``dispatch``, ``reading``,
``deaths``) that ``supervisor.Supervisor`` combines. All of it is touched only by the
supervisor thread, except where ``Supervisor`` says otherwise (``pending``, under
``intake``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Literal

from conveyor._ipc import frames as _frames
from conveyor._pool.seam import Command, KillReason, Record

if TYPE_CHECKING:
    import select

# Which of a worker's descriptors became ready in the supervisor's poll.
FdKind = Literal["result", "sentinel", "write"]


class WorkerHandle:
    """The supervisor's view of one worker process: its pipes, sentinel and the records
    it holds (sent, not yet reported), in the order it runs them."""

    __slots__ = (
        "index",
        "kill_reason",
        "known_fns",
        "outstanding",
        "process",
        "reader",
        "ready",
        "retiring",
        "sentinel",
        "taking_back",
        "writer",
    )

    def __init__(self, index: int, process: Any, writer: _frames.FrameWriter,
                 reader: _frames.FrameReader) -> None:
        self.index = index
        self.process = process
        self.writer = writer
        self.reader = reader
        self.sentinel: int = process.sentinel
        self.outstanding: OrderedDict[int, Record] = OrderedDict()
        self.known_fns: OrderedDict[int, None] = OrderedDict()
        self.ready = False
        self.retiring = False
        self.kill_reason: tuple[KillReason, Any] | None = None
        # A take-back in progress: (when the range was written, the record the worker
        # was running then, the record ids asked back).
        self.taking_back: tuple[int, int, list[int]] | None = None

    @property
    def pid(self) -> int:
        return int(self.process.pid)


class SupervisorState:
    """The supervisor's fields, declared for its parts; ``Supervisor.__init__`` sets them."""

    intake: threading.Lock
    accepting: bool
    refusal: str
    pending: deque[Record]
    needs_work: bool
    broken: BaseException | None
    tasks_done: int
    timeouts_used: bool
    workers_replaced: int
    _slots: memoryview
    _next_rid: int
    _commands: deque[tuple[Command, Any]]
    _poll: select.poll
    _fd_owner: dict[int, tuple[FdKind, WorkerHandle]]
    _workers: list[WorkerHandle | None]
    _avg_ns: dict[int, float]
    _closing: bool
    _terminating: bool
    _start_failures: int
    _take_back_soon: bool  # a take-back deferred by its 1 ms threshold: poll again soon
    _has_initializer: bool
    trace: Any  # Pool(trace=...): this pool's own recorder, or None (see conveyor._trace)

    if TYPE_CHECKING:  # provided by the parts and by Supervisor; declared for each other
        def command(self, cmd: Command, arg: Any = None) -> None: ...
        def _busy(self) -> bool: ...
        def _abort_all(self, exc: BaseException) -> None: ...
        def _start_worker(self, index: int) -> None: ...
        def _forget_worker(self, w: WorkerHandle) -> None: ...
        def _kill(self, w: WorkerHandle, reason: KillReason, arg: Any = None,
                  sig: int = ...) -> None: ...
        def _flush(self, w: WorkerHandle) -> None: ...
        def _dispatch(self) -> None: ...
        def _usable(self) -> list[WorkerHandle]: ...
        def _read_results(self, w: WorkerHandle) -> None: ...
        def _init_failed(self, exc: BaseException) -> None: ...
        def _trace_event(self, w: WorkerHandle, kind: int) -> None: ...
