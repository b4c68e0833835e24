"""The seed's producer-consumer example on Channel runs, ends by itself and loses nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "producer_consumer.py"


def test_producer_consumer_example_ends_by_itself() -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "produced 400, consumed 400, maxsize 10" in proc.stdout
    assert proc.stdout.count("consumed") == 4  # three consumers and the summary
    assert "every consumer stopped by itself" in proc.stdout
