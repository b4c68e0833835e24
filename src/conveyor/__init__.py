"""conveyor: multiprocess work in Python that is correct, fast and pleasant.

Layers, top to bottom (each imports only from the ones below it):

    _cli                                   the ``conveyor`` command
    _pool                                  Pool, map(): what users call
    _channel                               Channel: the bounded many-to-many transport
    _ring, _peers, _oob                    its shared-memory ring, peer tables, item encoding
    _supervisor                            the pool's one thread: dispatch, results, deaths
    _worker                                runs in the child process
    _serialize, _frames                    cloudpickle fallback, pipe framing
    errors                                 every public exception

Everything public is re-exported here; underscore modules are internals.
"""

from __future__ import annotations

from conveyor._channel import Channel as Channel
from conveyor._channel import ChannelStatistics as ChannelStatistics
from conveyor.errors import CallbackError as CallbackError
from conveyor.errors import ChannelBroken as ChannelBroken
from conveyor.errors import ChannelClosed as ChannelClosed
from conveyor.errors import ChannelEmpty as ChannelEmpty
from conveyor.errors import ChannelFull as ChannelFull
from conveyor.errors import ConveyorError as ConveyorError
from conveyor.errors import PipelineError as PipelineError
from conveyor.errors import RemoteTraceback as RemoteTraceback
from conveyor.errors import ResultTimeoutError as ResultTimeoutError
from conveyor.errors import SerializationError as SerializationError
from conveyor.errors import TaskTimeoutError as TaskTimeoutError
from conveyor.errors import WorkerLostError as WorkerLostError
from conveyor.errors import WorkerStartError as WorkerStartError

__version__ = "0.1.0"

__all__ = [
    "CallbackError",
    "Channel",
    "ChannelBroken",
    "ChannelClosed",
    "ChannelEmpty",
    "ChannelFull",
    "ChannelStatistics",
    "ConveyorError",
    "PipelineError",
    "RemoteTraceback",
    "ResultTimeoutError",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerLostError",
    "WorkerStartError",
]
