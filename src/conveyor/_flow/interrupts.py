"""Ctrl-C for drivers that run in the caller's thread: held back while their own code
runs, raised at a point where stopping is clean.

Why a driver (``Pipeline``'s, ``work_queue``'s) cannot take SIGINT where it lands:
Python raises ``KeyboardInterrupt`` between any two bytecodes of the main thread, and
inside a driver those include

* a lock's acquire or release (tqdm's write lock, ``Condition.wait``, the pool's
  bookkeeping): the lock is left held or released twice, and a later
  ``RuntimeError: cannot release un-acquired lock`` replaces the Ctrl-C;
* a pool's constructor between forking its workers and recording them: the workers
  outlive the run;
* code Python runs *for* the driver with no caller to raise into: finalizers run by the
  garbage collector (``multiprocessing.util.Finalize``), ``os.register_at_fork`` hooks
  (``logging`` has one) run when the pool forks. There the exception is printed as
  "Exception ignored in ..." and dropped, and the pipeline runs on.

So while the driver's code runs (``shielded``), the handler only notes the signal, and
the driver calls :meth:`Interrupts.check` at the top of its loop, which passes the note
to the handler that was installed before (the default one raises
``KeyboardInterrupt``). The driver then stops its workers with the shield still up, so a
second Ctrl-C cannot cut the clean-up short; Ctrl-Cs noted while it stops because of a
Ctrl-C are the same request and are dropped, others are raised once everything is
stopped.

The user's code keeps the normal behaviour (the shield is down while the source's
iterator and the caller's loop body run), so a blocking source can still be interrupted.
A ``KeyboardInterrupt`` that a finalizer swallows there is seen by ``sys.unraisablehook``
and raised at the driver's next safe point instead of being lost. The one exception is
the frame of the driver's generator between two items: a Ctrl-C is held there too and
raised by the generator after the item (see ``hold_in``: a CPython 3.13.0 gap).

Only the main thread receives signals, so a driver in another thread installs nothing;
neither does one whose SIGINT handler is not a Python callable (``SIG_IGN``, ``SIG_DFL``).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class Interrupts:
    """The SIGINT handler of one driver run (see the module docstring)."""

    __slots__ = ("_hook", "held", "hold_in", "installed", "previous", "shielded")

    def __init__(self, hold_in: Any = None) -> None:
        # The code of the driver's generator: a Ctrl-C is never raised in its frame,
        # even with the shield down, because CPython 3.13.0 leaves the closing jump of a
        # loop inside ``try`` out of the exception table (the kind of gap reported as
        # python/cpython#108214): raised there, the exception leaves the generator
        # without running its ``finally``, and the workers are never stopped. The
        # generator looks at ``held`` after each item instead.
        self.hold_in = hold_in
        self.installed = False
        self.previous: Any = None  # the handler signals are passed to
        self._hook: Any = None  # the unraisable hook before ours
        self.held = False  # a Ctrl-C arrived and was not raised yet
        self.shielded = True

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGINT)
        if not callable(previous):
            return
        # Installed first, so that restore() undoes whatever part was done if a Ctrl-C
        # lands in the middle (the previous handler raises until ours is in place).
        self.previous = previous
        self._hook = sys.unraisablehook
        self.installed = True
        sys.unraisablehook = self._unraisable
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.installed and (self.shielded or (frame is not None
                                                 and frame.f_code is self.hold_in)):
            self.held = True
        else:
            self.previous(signum, frame)

    def _unraisable(self, unraisable: Any) -> None:
        if (self.installed and issubclass(unraisable.exc_type, KeyboardInterrupt)
                and threading.current_thread() is threading.main_thread()):
            self.held = True  # swallowed by a finalizer: raise it at the next safe point
            return
        self._hook(unraisable)

    def check(self) -> None:
        """A safe point: raise a Ctrl-C noted since the last one."""
        if self.held:
            self.held = False
            self.previous(signal.SIGINT, None)  # the default handler raises here

    def restore(self, stopping: BaseException | None) -> None:
        """Put the previous handler back; then raise a Ctrl-C noted while stopping,
        unless the run is already ending because of one."""
        if not self.installed:
            return
        self.installed = False  # from now on ours (if still in a chain) passes signals on
        if signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self.previous)
        if sys.unraisablehook == self._unraisable:
            sys.unraisablehook = self._hook
        if self.held and not isinstance(stopping, KeyboardInterrupt):
            self.check()
        self.held = False
