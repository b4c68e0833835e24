"""The shared-state names are public, documented, and __all__ stays honest."""

from __future__ import annotations

import types

import conveyor

SHARED_NAMES = [
    "SegmentLock", "SharedArray", "SharedCounter", "SharedDict", "SharedFieldArray",
    "SharedList", "SharedStruct", "SharedValue", "TeamBrokenError", "TeamContext",
    "TeamMemberLostError", "shared_struct", "team",
]


def test_exported_and_documented() -> None:
    for name in SHARED_NAMES:
        assert name in conveyor.__all__, name
        obj = getattr(conveyor, name)
        assert obj.__doc__, name
        if not name.endswith("Error"):
            assert "Example" in obj.__doc__, name


def test_all_is_sorted_and_complete() -> None:
    assert conveyor.__all__ == sorted(conveyor.__all__)
    # Exports load lazily (PEP 562): the table of lazy names is what __all__ must match.
    public = {n for n in conveyor._EXPORTS if not isinstance(getattr(conveyor, n), types.ModuleType)}
    assert set(conveyor.__all__) == public


def test_errors_subclass_what_they_promise() -> None:
    import threading

    assert issubclass(conveyor.TeamBrokenError, threading.BrokenBarrierError)
    assert issubclass(conveyor.TeamBrokenError, conveyor.ConveyorError)
    assert conveyor.TeamBrokenError.__module__ == "conveyor"
    err = conveyor.TeamBrokenError(1, 2, "raised ValueError: x")
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert (again.rank, again.failed_rank, str(again)) == (1, 2, str(err))
    lost = pickle.loads(pickle.dumps(conveyor.TeamMemberLostError(3, 99, -9)))
    assert (lost.rank, lost.signal_name) == (3, "SIGKILL")
