"""conveyor: multiprocess work in Python that is correct, fast and pleasant.

Subsystems, top to bottom (each subpackage imports only from the ones below it;
``tests/test_layering.py`` enforces this, and each subpackage's docstring says what it
owns):

    _demo                     ``conveyor demo`` (loaded only by the command line)
    _cli                      the ``conveyor`` command and its batch jobs
    _flow                     pipelines and work queues, built on the pool
    _dask                     cluster=: a pool's work on Dask (a local pool per Dask worker)
    _pool                     Pool, map(): API, call objects, the supervisor, the worker
    _team                     team(): processes in lock-step
    _trace                    trace(): a per-task timeline, Chrome trace, HTML report
    _channel                  Channel, its shared-memory ring, peers, large items
    _shared                   shared structs, values, arrays, dicts, lists
    _ipc                      segments, locks, fork hooks, serialisation, pipe framing
    errors                    every public exception

Everything public is re-exported here; underscore packages are internals. The
re-exports load on first use (PEP 562), so ``import conveyor`` stays cheap, and a
worker process started by spawn or forkserver imports only what it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor._channel.channel import Channel as Channel
    from conveyor._channel.channel import ChannelStatistics as ChannelStatistics
    from conveyor._dask._context import use_cluster as use_cluster
    from conveyor._flow.pipeline import ItemError as ItemError
    from conveyor._flow.pipeline import Pipeline as Pipeline
    from conveyor._flow.pipeline import PipelineStatistics as PipelineStatistics
    from conveyor._flow.pipeline import StageStatistics as StageStatistics
    from conveyor._flow.work_queue import iter_work_queue as iter_work_queue
    from conveyor._flow.work_queue import work_queue as work_queue
    from conveyor._ipc.lock import SegmentLock as SegmentLock
    from conveyor._pool.calls import TaskFuture as TaskFuture
    from conveyor._pool.pool import Pool as Pool
    from conveyor._pool.pool import map as map
    from conveyor._pool.results import AsyncResult as AsyncResult
    from conveyor._pool.results import MapResult as MapResult
    from conveyor._pool.stats import PoolStatistics as PoolStatistics
    from conveyor._pool.worker import worker_index as worker_index
    from conveyor._pool.worker import worker_state as worker_state
    from conveyor._shared.arrays import SharedArray as SharedArray
    from conveyor._shared.dicts import SharedDict as SharedDict
    from conveyor._shared.fields import SharedFieldArray as SharedFieldArray
    from conveyor._shared.lists import SharedList as SharedList
    from conveyor._shared.structs import SharedStruct as SharedStruct
    from conveyor._shared.structs import shared_struct as shared_struct
    from conveyor._shared.values import SharedCounter as SharedCounter
    from conveyor._shared.values import SharedValue as SharedValue
    from conveyor._team.team import TeamContext as TeamContext
    from conveyor._team.team import team as team
    from conveyor._trace._api import Trace as Trace
    from conveyor._trace._api import trace as trace
    from conveyor._trace._view import Span as Span
    from conveyor._trace._view import TraceSummary as TraceSummary
    from conveyor.errors import CallbackError as CallbackError
    from conveyor.errors import ChannelBroken as ChannelBroken
    from conveyor.errors import ChannelClosed as ChannelClosed
    from conveyor.errors import ChannelEmpty as ChannelEmpty
    from conveyor.errors import ChannelFull as ChannelFull
    from conveyor.errors import ClosedChannelError as ClosedChannelError
    from conveyor.errors import ConveyorError as ConveyorError
    from conveyor.errors import EndOfChannel as EndOfChannel
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
    "Channel": "conveyor._channel.channel",
    "ChannelStatistics": "conveyor._channel.channel",
    "use_cluster": "conveyor._dask._context",
    "ItemError": "conveyor._flow.pipeline",
    "Pipeline": "conveyor._flow.pipeline",
    "PipelineStatistics": "conveyor._flow.pipeline",
    "StageStatistics": "conveyor._flow.pipeline",
    "AsyncResult": "conveyor._pool.results",
    "MapResult": "conveyor._pool.results",
    "Pool": "conveyor._pool.pool",
    "PoolStatistics": "conveyor._pool.stats",
    "TaskFuture": "conveyor._pool.calls",
    "map": "conveyor._pool.pool",
    "SharedCounter": "conveyor._shared.values",
    "SharedValue": "conveyor._shared.values",
    "SharedArray": "conveyor._shared.arrays",
    "SegmentLock": "conveyor._ipc.lock",
    "SharedDict": "conveyor._shared.dicts",
    "SharedList": "conveyor._shared.lists",
    "SharedStruct": "conveyor._shared.structs",
    "shared_struct": "conveyor._shared.structs",
    "SharedFieldArray": "conveyor._shared.fields",
    "TeamContext": "conveyor._team.team",
    "team": "conveyor._team.team",
    "Span": "conveyor._trace._view",
    "Trace": "conveyor._trace._api",
    "TraceSummary": "conveyor._trace._view",
    "trace": "conveyor._trace._api",
    "iter_work_queue": "conveyor._flow.work_queue",
    "work_queue": "conveyor._flow.work_queue",
    "worker_index": "conveyor._pool.worker",
    "worker_state": "conveyor._pool.worker",
    "CallbackError": "conveyor.errors",
    "ChannelBroken": "conveyor.errors",
    "ChannelClosed": "conveyor.errors",
    "ChannelEmpty": "conveyor.errors",
    "ChannelFull": "conveyor.errors",
    "ClosedChannelError": "conveyor.errors",
    "EndOfChannel": "conveyor.errors",
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
    "ClosedChannelError",
    "ConveyorError",
    "EndOfChannel",
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
