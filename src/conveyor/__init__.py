"""conveyor: multiprocess work in Python that is correct, fast and pleasant.

Layers, top to bottom (each imports only from the ones below it):

    _cli                                   the ``conveyor`` command
    _pipeline, _work_queue                 stages of workers; tasks that add tasks
    _pool                                  Pool, map(): what users call
    _dask/                                 cluster=: the same pool's work on Dask
    _team, _team_state                     team(): processes in lock-step
    _channel                               Channel: the bounded many-to-many transport
    _ring, _peers, _oob                    its shared-memory ring, peer tables, item encoding
    _supervisor                            the pool's one thread: dispatch, results, deaths
    _trace/                                trace(): a per-task timeline, Chrome trace, HTML
    _worker                                runs in the child process
    _serialize, _frames                    cloudpickle fallback, pipe framing
    _struct, _struct_fields, _shared,      shared structs, values, arrays, dicts, lists
      _shared_array, _shared_dict,
      _shared_list, _shared_store
    _shared_common                         owned segments, the segment lock, lazy numpy
    _shm                                   segment names, ownership, stale sweep
    errors                                 every public exception

Everything public is re-exported here; underscore modules are internals. The
re-exports load on first use (PEP 562), so ``import conveyor`` stays cheap, and a
worker process started by spawn or forkserver imports only what it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor._channel import Channel as Channel
    from conveyor._channel import ChannelStatistics as ChannelStatistics
    from conveyor._dask._context import use_cluster as use_cluster
    from conveyor._pipeline import ItemError as ItemError
    from conveyor._pipeline import Pipeline as Pipeline
    from conveyor._pipeline import PipelineStatistics as PipelineStatistics
    from conveyor._pipeline import StageStatistics as StageStatistics
    from conveyor._pool import AsyncResult as AsyncResult
    from conveyor._pool import MapResult as MapResult
    from conveyor._pool import Pool as Pool
    from conveyor._pool import TaskFuture as TaskFuture
    from conveyor._pool import map as map
    from conveyor._pool_stats import PoolStatistics as PoolStatistics
    from conveyor._shared import SharedCounter as SharedCounter
    from conveyor._shared import SharedValue as SharedValue
    from conveyor._shared_array import SharedArray as SharedArray
    from conveyor._shared_common import SegmentLock as SegmentLock
    from conveyor._shared_dict import SharedDict as SharedDict
    from conveyor._shared_list import SharedList as SharedList
    from conveyor._struct import SharedStruct as SharedStruct
    from conveyor._struct import shared_struct as shared_struct
    from conveyor._struct_fields import SharedFieldArray as SharedFieldArray
    from conveyor._team import TeamContext as TeamContext
    from conveyor._team import team as team
    from conveyor._trace._api import Trace as Trace
    from conveyor._trace._api import trace as trace
    from conveyor._trace._view import Span as Span
    from conveyor._trace._view import TraceSummary as TraceSummary
    from conveyor._work_queue import iter_work_queue as iter_work_queue
    from conveyor._work_queue import work_queue as work_queue
    from conveyor._worker import worker_index as worker_index
    from conveyor._worker import worker_state as worker_state
    from conveyor.errors import CallbackError as CallbackError
    from conveyor.errors import ChannelBroken as ChannelBroken
    from conveyor.errors import ChannelClosed as ChannelClosed
    from conveyor.errors import ChannelEmpty as ChannelEmpty
    from conveyor.errors import ChannelFull as ChannelFull
    from conveyor.errors import ConveyorError as ConveyorError
    from conveyor.errors import PipelineError as PipelineError
    from conveyor.errors import PoolClosedError as PoolClosedError
    from conveyor.errors import RemoteError as RemoteError
    from conveyor.errors import RemoteTraceback as RemoteTraceback
    from conveyor.errors import ResultTimeoutError as ResultTimeoutError
    from conveyor.errors import SerializationError as SerializationError
    from conveyor.errors import SharedMemoryFullError as SharedMemoryFullError
    from conveyor.errors import SharedObjectClosedError as SharedObjectClosedError
    from conveyor.errors import TaskTimeoutError as TaskTimeoutError
    from conveyor.errors import TeamBrokenError as TeamBrokenError
    from conveyor.errors import TeamMemberLostError as TeamMemberLostError
    from conveyor.errors import WorkerLostError as WorkerLostError
    from conveyor.errors import WorkerStartError as WorkerStartError
    from conveyor.errors import WrongProcessError as WrongProcessError

__version__ = "0.1.0"

# Where each public name lives; loaded on first access.
_EXPORTS: dict[str, str] = {
    "Channel": "conveyor._channel",
    "use_cluster": "conveyor._dask._context",
    "ChannelStatistics": "conveyor._channel",
    "ItemError": "conveyor._pipeline",
    "Pipeline": "conveyor._pipeline",
    "PipelineStatistics": "conveyor._pipeline",
    "StageStatistics": "conveyor._pipeline",
    "AsyncResult": "conveyor._pool",
    "MapResult": "conveyor._pool",
    "Pool": "conveyor._pool",
    "PoolStatistics": "conveyor._pool_stats",
    "TaskFuture": "conveyor._pool",
    "map": "conveyor._pool",
    "SharedCounter": "conveyor._shared",
    "SharedValue": "conveyor._shared",
    "SharedArray": "conveyor._shared_array",
    "SegmentLock": "conveyor._shared_common",
    "SharedDict": "conveyor._shared_dict",
    "SharedList": "conveyor._shared_list",
    "SharedStruct": "conveyor._struct",
    "shared_struct": "conveyor._struct",
    "SharedFieldArray": "conveyor._struct_fields",
    "TeamContext": "conveyor._team",
    "team": "conveyor._team",
    "Span": "conveyor._trace._view",
    "Trace": "conveyor._trace._api",
    "TraceSummary": "conveyor._trace._view",
    "trace": "conveyor._trace._api",
    "iter_work_queue": "conveyor._work_queue",
    "work_queue": "conveyor._work_queue",
    "worker_index": "conveyor._worker",
    "worker_state": "conveyor._worker",
    "CallbackError": "conveyor.errors",
    "ChannelBroken": "conveyor.errors",
    "ChannelClosed": "conveyor.errors",
    "ChannelEmpty": "conveyor.errors",
    "ChannelFull": "conveyor.errors",
    "ConveyorError": "conveyor.errors",
    "PipelineError": "conveyor.errors",
    "PoolClosedError": "conveyor.errors",
    "RemoteError": "conveyor.errors",
    "RemoteTraceback": "conveyor.errors",
    "ResultTimeoutError": "conveyor.errors",
    "SerializationError": "conveyor.errors",
    "SharedMemoryFullError": "conveyor.errors",
    "SharedObjectClosedError": "conveyor.errors",
    "TaskTimeoutError": "conveyor.errors",
    "TeamBrokenError": "conveyor.errors",
    "TeamMemberLostError": "conveyor.errors",
    "WorkerLostError": "conveyor.errors",
    "WorkerStartError": "conveyor.errors",
    "WrongProcessError": "conveyor.errors",
}

__all__ = [
    "AsyncResult",
    "CallbackError",
    "Channel",
    "ChannelBroken",
    "ChannelClosed",
    "ChannelEmpty",
    "ChannelFull",
    "ChannelStatistics",
    "ConveyorError",
    "ItemError",
    "MapResult",
    "Pipeline",
    "PipelineError",
    "PipelineStatistics",
    "Pool",
    "PoolClosedError",
    "PoolStatistics",
    "RemoteError",
    "RemoteTraceback",
    "ResultTimeoutError",
    "SegmentLock",
    "SerializationError",
    "SharedArray",
    "SharedCounter",
    "SharedDict",
    "SharedFieldArray",
    "SharedList",
    "SharedMemoryFullError",
    "SharedObjectClosedError",
    "SharedStruct",
    "SharedValue",
    "Span",
    "StageStatistics",
    "TaskFuture",
    "TaskTimeoutError",
    "TeamBrokenError",
    "TeamContext",
    "TeamMemberLostError",
    "Trace",
    "TraceSummary",
    "WorkerLostError",
    "WorkerStartError",
    "WrongProcessError",
    "iter_work_queue",
    "map",
    "shared_struct",
    "team",
    "trace",
    "use_cluster",
    "work_queue",
    "worker_index",
    "worker_state",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
