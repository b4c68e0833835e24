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
