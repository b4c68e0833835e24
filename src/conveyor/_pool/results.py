"""``AsyncResult`` and ``MapResult``: what ``apply_async`` and ``map_async`` return, as in
``multiprocessing.pool``, over a wait function and an outcome function of a call object."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from conveyor.errors import ResultTimeoutError

T = TypeVar("T")


class AsyncResult(Generic[T]):
    """The result of ``apply_async``/``map_async``, as in ``multiprocessing.pool``.

    Example::

        res = pool.apply_async(pow, (2, 10))
        res.get(timeout=5)     # 1024
    """

    def __init__(self, wait: Callable[[float | None], bool], outcome: Callable[[], T]) -> None:
        self._wait = wait
        self._outcome = outcome

    def ready(self) -> bool:
        return self._wait(0)

    def wait(self, timeout: float | None = None) -> None:
        self._wait(timeout)

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        try:
            self._outcome()
        except BaseException:
            return False
        return True

    def get(self, timeout: float | None = None) -> T:
        if not self._wait(timeout):
            raise ResultTimeoutError(f"no result within {timeout} s")
        return self._outcome()


class MapResult(AsyncResult[list[Any]]):
    """The result of ``map_async`` and ``starmap_async``: ``get()`` returns a list."""

