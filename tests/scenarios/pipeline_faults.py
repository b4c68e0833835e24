"""Pipeline scenarios run in a fresh interpreter by tests/test_pipeline.py."""

from __future__ import annotations

import json
import sys
import time

import conveyor as cv


def slow(x: int) -> int:
    time.sleep(0.2)
    return x


def ctrl_c() -> None:
    pipe = cv.Pipeline(range(1000)).map(abs, workers=2).map(slow, workers=2)
    it = iter(pipe)
    next(it)
    print(json.dumps({"ready": True}), flush=True)
    try:
        for _ in it:
            pass
    except KeyboardInterrupt:
        print(json.dumps({"interrupted": True, "at": time.time()}), flush=True)
        raise


if __name__ == "__main__":
    globals()[sys.argv[1]]()
