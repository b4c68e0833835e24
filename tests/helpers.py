"""Task functions for tests: importable by module name in every start method."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import conveyor


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def kill_self_on(x: int, bad: int = 5, sig: int = signal.SIGKILL) -> int:
    if x == bad:
        os.kill(os.getpid(), sig)
        time.sleep(5)
    return x


def exit_on(x: int, bad: int = 5) -> int:
    if x == bad:
        os._exit(3)
    return x


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def sleep_on(x: int, bad: int = 2, seconds: float = 30) -> int:
    if x == bad:
        time.sleep(seconds)
    return x


def pid_of(_: Any = None) -> int:
    return os.getpid()


def make_state(value: Any) -> dict[str, Any]:
    return {"value": value, "pid": os.getpid()}


def read_state(_: Any = None) -> Any:
    return conveyor.worker_state()


def raise_in_init() -> None:
    raise RuntimeError("initializer failed on purpose")


def allocate(mb: int) -> int:
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return os.getpid()


def identity(x: Any) -> Any:
    return x


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


def return_unpicklable(_: Any = None) -> Unpicklable:
    return Unpicklable()


def double(x: int) -> int:
    return 2 * x


def is_even(x: int) -> bool:
    return x % 2 == 0


def twice(x: int) -> list[int]:
    return [x, x]


def jitter(x: int) -> int:
    time.sleep(((x * 7919) % 5) / 1000)
    return x


def crash_on(x: int, bad: int = 7) -> int:
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def add_state(x: int) -> Any:
    return (x, conveyor.worker_state())


def constant(value: Any) -> Any:
    return value


def exit_zero(_: Any = None) -> None:
    os._exit(0)


def exit_in_init(code: int = 0) -> None:
    os._exit(code)


def fork_and_return(x: int) -> int:
    os.fork()  # both the worker and its child return from here
    return x


class DiesWhenPickled:
    """A result whose pickling kills the worker (as a segfault in a __reduce__ would)."""

    def __reduce__(self) -> Any:
        os._exit(0)


class ExitsWhenPickled:
    def __reduce__(self) -> Any:
        raise SystemExit(3)


def _refuse_to_load(kind: str) -> Any:
    if kind == "exit":
        raise SystemExit(4)
    raise ValueError("this result refuses to be unpickled")


class FailsWhenLoaded:
    """Pickles fine in the worker; unpickling it in the parent raises."""

    def __init__(self, kind: str = "error") -> None:
        self.kind = kind

    def __reduce__(self) -> Any:
        return (_refuse_to_load, (self.kind,))


def return_object(kind: str) -> Any:
    if kind == "dies":
        return DiesWhenPickled()
    if kind == "exits":
        return ExitsWhenPickled()
    if kind in ("error", "exit"):
        return FailsWhenLoaded(kind)
    return kind


def nap_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def die_once(x: int, folder: str) -> int:
    """Kills its worker the first time it runs for ``x`` (a marker file remembers)."""
    marker = os.path.join(folder, f"ran-{x}")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return x
    os.close(fd)
    os._exit(1)


def log_run(x: int, seconds: float, path: str) -> int:
    """Appends ``x`` to a log file each time it runs (to count executions)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return x


def nested_map(n: int) -> list[int]:
    """A task that runs a pool of its own (workers are not daemonic)."""
    return conveyor.map(square, range(n), workers=2)


_SYNC: tuple[Any, ...] = ()


def init_sync(lock: Any, queue: Any, value: Any, event: Any) -> None:
    """An initializer given multiprocessing's Lock, queue, Value and Event."""
    global _SYNC
    _SYNC = (lock, queue, value, event)


def work_sync(x: int) -> bool:
    lock, queue, value, event = _SYNC
    if x == 3:
        os._exit(1)  # its replacement must get the same objects
    with lock:
        value.value += 1
    queue.put(x)
    return bool(event.is_set())


def exit_once(path: str) -> str:
    """Kill the worker the first time it runs for ``path`` (a marker file), then succeed."""
    if not os.path.exists(path):
        with open(path, "w"):
            pass
        os._exit(7)
    return "second try"


def parent_pid(_: Any = None) -> int:
    return os.getppid()


def touch_and_square(args: tuple[str, int]) -> int:
    """Leave one file per run of an item (``<dir>/<item>.<pid>``), so runs can be counted."""
    folder, x = args
    with open(os.path.join(folder, f"{x}.{os.getpid()}.{time.monotonic_ns()}"), "w"):
        pass
    return x * x


def expand(task: int, add: Any) -> int:
    """A work-queue handler: task n adds 2n+1 and 2n+2 while they are below 31."""
    for child in (2 * task + 1, 2 * task + 2):
        if child < 31:
            add(child)
    return task


def child_exitcode(_: Any = None) -> int | None:
    """Start a process of its own from a task (refused inside a daemonic process)."""
    import multiprocessing

    proc = multiprocessing.get_context("fork").Process(target=os._exit, args=(4,))
    proc.start()
    proc.join()
    return proc.exitcode
