"""What a child made by ``fork`` must redo, in one registry.

A forked child starts with copies of its parent's objects, and some of them would do
harm there: an owner object would unlink the parent's segment when the child collects
it, a lock descriptor shares the parent's lock state (an OFD lock belongs to the open
file description, not to the process), a thread lock may have been copied mid-acquire,
and a cached pid is the parent's. Such objects register here with the function that
fixes them; one ``os.register_at_fork`` hook, installed on first use, runs every plain
hook and then every object's fix, in the child only.

Objects are held weakly: registering keeps nothing alive.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

_objects: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()
_hooks: list[Callable[[], None]] = []
_installed = False
_install_lock = threading.Lock()


def _install() -> None:
    global _installed
    if not _installed:
        with _install_lock:
            if not _installed:
                os.register_at_fork(after_in_child=_in_child)
                _installed = True


def register(obj: Any, fix: Callable[[Any], None]) -> None:
    """Call ``fix(obj)`` in every child forked while ``obj`` lives."""
    _install()
    _objects[obj] = fix


def unregister(obj: Any) -> None:
    _objects.pop(obj, None)


def call_in_child(hook: Callable[[], None]) -> None:
    """Call ``hook()`` in every child forked from now on (once, however often asked),
    before the objects' fixes."""
    _install()
    if hook not in _hooks:
        _hooks.append(hook)


def _in_child() -> None:
    for hook in _hooks:
        hook()
    for obj, fix in list(_objects.items()):
        fix(obj)
