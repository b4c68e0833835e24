"""Turning tasks and results into bytes: fast pickle first, cloudpickle when needed.

The standard pickler is several times faster than cloudpickle, so every payload tries it
first; only what it cannot handle (lambdas, closures, functions defined in ``__main__``
under spawn, ...) goes through cloudpickle. Unpickling is the same either way.

When neither can pickle a payload, :func:`describe_failure` finds which part failed, so
the error can say "argument 2 of task 17", not just "cannot pickle".
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from conveyor.errors import SerializationError, short_repr

# Every pickle conveyor writes uses this protocol: 5 hands large buffers to a
# ``buffer_callback`` (PEP 574), which the channel's out-of-band blocks rely on.
PROTOCOL = 5


def dumps(obj: object) -> bytes:
    """Pickle ``obj``, falling back to cloudpickle. Raises what cloudpickle raised."""
    try:
        # No buffer_callback keyword here: passing one, even None, costs ~10% of a small
        # task's pickling, and this is every submit's path.
        return pickle.dumps(obj, PROTOCOL)
    except Exception:
        return dumps_by_value(obj)


def dumps_by_value(obj: object, buffer_callback: Any = None) -> bytes:
    """cloudpickle alone: for what the standard pickler refused (lambdas, closures,
    classes of ``__main__``). Loaded on first need, so ``import conveyor`` stays cheap."""
    import cloudpickle

    return bytes(cloudpickle.dumps(obj, PROTOCOL, buffer_callback=buffer_callback))


def dumps_exception(exc: BaseException) -> bytes:
    """Pickle an exception the standard way, whatever reducers the process registered.

    Importing Dask ``distributed`` installs tblib's reducers for every exception class in
    ``copyreg``; they drop what a custom ``__init__`` sets (``SystemExit(3).code`` comes
    back None). A pickler with a table of its own ignores them. cloudpickle is the
    fallback, for classes defined in ``__main__``."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, PROTOCOL)
    pickler.dispatch_table = {}
    try:
        pickler.dump(exc)
    except Exception:
        return dumps(exc)
    return buf.getvalue()


def dumps_function(fn: object, main_by_value: bool = True, remote: bool = False) -> bytes:
    """Pickle a callable by value when it cannot be pickled by reference.

    A function in ``__main__`` pickles by reference with the standard pickler. Under
    fork the child has the very same ``__main__``, so that works (and keeps classes the
    function uses identical in both processes). Under spawn and forkserver the child's
    ``__main__`` is a re-import that lacks what the ``if __name__ == "__main__":`` block
    or an interactive session defined, so there (``main_by_value``) cloudpickle sends
    such functions by value.

    ``remote`` (a pool on a Dask cluster): cloudpickle for every callable, since a
    callable object from a library may hold a function of ``__main__`` (a work queue's
    handler), which the standard pickler would send by a reference that no Dask worker
    can resolve.
    """
    module = getattr(fn, "__module__", None)
    if remote and not (module == "__main__" or module is None):
        import cloudpickle

        return bytes(cloudpickle.dumps(fn, PROTOCOL))
    if main_by_value and (module == "__main__" or module is None):
        code = getattr(fn, "__code__", None)
        data = dumps_by_value(fn)
        if code is not None:
            # cloudpickle renames the code's file to "<dynamic-code>"; put the real one
            # back in the worker so its tracebacks show file, line and source.
            return pickle.dumps(_WithFilename(data, code.co_filename), PROTOCOL)
        return data
    return dumps(fn)


class _WithFilename:
    def __init__(self, data: bytes, filename: str) -> None:
        self.data = data
        self.filename = filename

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_filename, (self.data, self.filename))


def _restore_filename(data: bytes, filename: str) -> Any:
    import types

    fn = pickle.loads(data)

    def fix(code: types.CodeType) -> types.CodeType:
        consts = tuple(fix(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
        return code.replace(co_filename=filename, co_consts=consts)

    if isinstance(getattr(fn, "__code__", None), types.CodeType):
        fn.__code__ = fix(fn.__code__)
    return fn


def _why(obj: object) -> str | None:
    try:
        dumps(obj)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def describe_failure(what: str, obj: object) -> str:
    """Name the smallest part of ``obj`` that cannot be pickled, for an error message."""
    if isinstance(obj, tuple | list):
        for i, part in enumerate(obj):
            reason = _why(part)
            if reason:
                return f"{what} {i} ({short_repr(part, 60)}): {reason}"
    elif isinstance(obj, dict):
        for key, part in obj.items():
            reason = _why(part)
            if reason:
                return f"keyword argument {key!r} ({short_repr(part, 60)}): {reason}"
    reason = _why(obj) or "unknown reason"
    return f"{what} ({short_repr(obj, 60)}): {reason}"


def serialization_error(
    what: str, obj: object, task_index: int | None, hint: str = ""
) -> SerializationError:
    """A SerializationError that names what could not be pickled, and in which task."""
    where = f" of task {task_index}" if task_index is not None else ""
    message = f"cannot pickle the {describe_failure(what, obj)}{where}"
    if hint:
        message += f"; {hint}"
    return SerializationError(message, what=what, task_index=task_index)


def pickled_type_name(data: bytes) -> str:
    """The first class or function a pickle refers to ("module.Name"), for an error about
    a pickle that cannot be loaded; read with ``pickletools``, nothing is executed."""
    import pickletools

    strings: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                return arg.replace(" ", ".")
            if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:
        pass
    return "type unknown"
