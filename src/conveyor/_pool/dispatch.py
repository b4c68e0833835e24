"""Dispatch: which worker runs what, and the take-back of queued records.

A worker is given a few records ahead, as many as cover ``_TARGET_QUEUE_NS`` of its run
time judged by the function at the queue's head, in even shares so that one idle worker
does not take the whole queue. The take-back (see ``supervisor``'s docstring) asks a
busy worker for the records queued behind a long one when another worker has nothing;
one deferred by its 1 ms threshold sets ``_take_back_soon``, so the loop looks again in
a millisecond rather than at its next event.

A map's chunk arrives unpickled (``Record.data`` None) and is pickled here, as it is
sent: the parent then holds the pickles of the chunks in flight, not a second copy of
the whole input. A large chunk is cut first (``_cut``, from a sample of ``_SAMPLE``
items) so that each pickle stays near ``_RECORD_BYTES``; a chunk that cannot be pickled
fails its items (``_unpicklable``), naming the first that cannot.
Part of the supervisor thread (``supervisor.Supervisor``).
"""

from __future__ import annotations

import math
import pickle
import select
import time

from conveyor._ipc import serialize as _serialize
from conveyor._pool import worker as _worker
from conveyor._pool.seam import Record
from conveyor._pool.state import SupervisorState, WorkerHandle
from conveyor._trace import _recorder as _trace

_NO_SKIP: frozenset[int] = frozenset()

# How much queued work (in worker time) each worker is given beyond the task it runs.
_TARGET_QUEUE_NS = 4_000_000
_MAX_DEPTH = 512
_MAX_PENDING_BYTES = 8 << 20
# A lazily pickled chunk is cut so that its pickle stays near this size: the parent then
# holds a few megabytes of pickles per worker, not a large first chunk of a big input.
_RECORD_BYTES = 4 << 20
_SAMPLE = 32
_TAKE_BACK_AFTER_NS = 1_000_000  # a record running this long may have its queue taken back
_CONFIRM_NS = 1_000_000  # from writing a take-back range to reading the worker's claim


class Dispatcher(SupervisorState):
    """The supervisor's dispatch and take-back (see the module docstring)."""

    def _depth(self) -> int:
        """How many records a worker may hold, judged by the function at the queue's head."""
        avg = self._avg_ns.get(self.pending[0].call.fn_id, 0.0) if self.pending else 0.0
        if avg <= 0:
            return 2
        return max(2, min(_MAX_DEPTH, 1 + math.ceil(_TARGET_QUEUE_NS / avg)))

    def _usable(self) -> list[WorkerHandle]:
        """Workers that may be given tasks: the ready ones; or, while none is ready yet
        (a fresh pool), the starting ones, so the first task need not wait for a
        round trip after start-up."""
        alive = [w for w in self._workers if w is not None and not w.retiring
                 and w.kill_reason is None]
        ready = [w for w in alive if w.ready]
        return ready or alive

    def _has_room(self) -> bool:
        # Only an idle worker is worth a wake-up: a worker with queued work will send
        # results soon, and that wakes the supervisor, which then refills it. Waking
        # for less would hand the GIL back and forth once per submit.
        return any(not w.outstanding for w in self._usable())

    def _dispatch(self) -> None:
        pending = self.pending
        if not pending:
            return
        depth = self._depth()
        ready = self._usable()
        ready.sort(key=lambda w: len(w.outstanding))
        for i, w in enumerate(ready):
            if not pending:
                break
            # An even share of what is queued, so one idle worker does not take it all.
            share = -(-len(pending) // (len(ready) - i))
            room = min(depth - len(w.outstanding), share)
            if room <= 0 or w.writer.pending_bytes > _MAX_PENDING_BYTES:
                continue
            batch = []
            traced: list[Record] = []
            datas: list[bytes] = []
            size = 0
            known = w.known_fns
            while pending and room > 0 and size < _MAX_PENDING_BYTES:
                rec = pending.popleft()
                call = rec.call
                if not call.start(rec):
                    continue  # cancelled before it ran
                data = rec.data
                if data is None:
                    if rec.size > 2 * _SAMPLE:
                        rec = self._cut(rec)
                    try:
                        data = _serialize.dumps(rec.items)
                    except Exception:
                        self._unpicklable(rec)
                        continue
                self._next_rid += 1
                rec.rid = self._next_rid
                fn_id = call.fn_id
                if fn_id in known:
                    known.move_to_end(fn_id)
                    fn_bytes = None
                else:
                    known[fn_id] = None
                    if len(known) > _worker.FN_CACHE_SIZE:
                        known.popitem(last=False)
                    fn_bytes = call.fn_bytes
                # The arguments travel beside the pickled list, not inside it: a large
                # argument is then not copied once more into the list's pickle, nor
                # out of it in the worker.
                mode = rec.mode | _worker.TIMED if call.timeout else rec.mode
                if rec.trace is not None:
                    mode |= _worker.TRACED
                    traced.append(rec)
                batch.append((rec.rid, fn_id, fn_bytes, mode, len(data)))
                datas.append(data)
                w.outstanding[rec.rid] = rec
                size += len(data)
                room -= 1
            if batch:
                head = pickle.dumps(batch, _serialize.PROTOCOL)
                if traced:
                    _trace.dispatched(self, traced)
                w.writer.push(_worker.TASKS, [_worker.HEAD_LEN.pack(len(head)), head, *datas])
                self._flush(w)

    def _cut(self, rec: Record) -> Record:
        """Estimate a lazy chunk's pickle from a sample of its items; when it would be
        far above _RECORD_BYTES, send its head now and queue the rest first in line."""
        try:
            per_item = len(_serialize.dumps(rec.items[:_SAMPLE])) / _SAMPLE
        except Exception:
            return rec  # pickling the whole chunk fails next, and names the item
        keep = max(_SAMPLE, int(_RECORD_BYTES / max(per_item, 1.0)))
        if rec.size <= 2 * keep:
            return rec
        self.pending.appendleft(rec.split(keep, rec.size))
        return rec.split(0, keep)

    def _unpicklable(self, rec: Record) -> None:
        """A lazily pickled chunk that cannot be pickled: its items fail, naming the
        first that cannot (the error a caller would have had at the call)."""
        call = rec.call
        err = call.pickle_error(rec.items, rec.base)
        call.complete(rec, [None] * rec.size, dict.fromkeys(range(rec.size), err), _NO_SKIP)
        call.flush()

    def _flush(self, w: WorkerHandle) -> None:
        try:
            done = w.writer.flush()
        except OSError:
            done = True  # the worker is gone; its sentinel tells us the rest
        try:
            if done:
                self._poll.unregister(w.writer.fd)
            else:
                self._poll.register(w.writer.fd, select.POLLOUT)
        except (KeyError, ValueError):
            pass

    def _take_back(self) -> None:
        """Ask a busy worker for its queued records when another worker has nothing to do
        (see the module docstring), and confirm the asks made a poll round ago."""
        now = time.monotonic_ns()
        slots = self._slots
        for w in self._workers:
            if w is None or w.taking_back is None:
                continue
            asked_at, running, rids = w.taking_back
            if now - asked_at < _CONFIRM_NS:
                continue
            w.taking_back = None
            if slots[w.index * _worker.SLOT_SIZE + _worker.SLOT_RECORD] != running:
                continue  # it moved on: it reports each record it skips as REVOKED
            back = [rec for rec in (w.outstanding.pop(rid, None) for rid in rids)
                    if rec is not None]
            self.pending.extendleft(reversed(back))
        self._take_back_soon = False
        if self.pending or not any(not w.outstanding for w in self._usable()):
            if self.pending:
                self._dispatch()
            return
        for w in self._workers:
            if (w is None or len(w.outstanding) < 2 or w.taking_back is not None
                    or w.kill_reason is not None):
                continue
            base = w.index * _worker.SLOT_SIZE
            running = slots[base + _worker.SLOT_RECORD]
            if (running not in w.outstanding
                    or now - slots[base + _worker.SLOT_STARTED_NS] < _TAKE_BACK_AFTER_NS):
                # Between records (or not yet at its first), or just started: the queue
                # behind it may still be worth taking back, so look again in 1 ms.
                self._take_back_soon = True
                continue
            rids = [rid for rid in w.outstanding if rid > running]
            if not rids:
                continue
            # The worker reads LO, then HI: write HI first. An earlier range's low end
            # stays, since records of it may still be waiting in the pipe to be skipped.
            slots[base + _worker.SLOT_REVOKE_HI] = rids[-1]
            if not slots[base + _worker.SLOT_REVOKE_LO]:
                slots[base + _worker.SLOT_REVOKE_LO] = rids[0]
            w.taking_back = (now, running, rids)
