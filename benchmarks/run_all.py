"""Run every benchmark, then assemble ``BENCHMARKS.md`` at the repository root.

    python benchmarks/run_all.py            # everything, 8 to 11 minutes on 2 busy cores
    python benchmarks/run_all.py --quick    # passes --quick to the scripts that take it

Each ``benchmarks/bench_*.py`` and ``benchmarks/reliability.py`` runs as a subprocess of
this interpreter and writes ``benchmarks/results/<name>.md``. ``BENCHMARKS.md`` is then a
title, the machine, the command, and every results file: pool, reliability, channel,
shared first, then the others by name. A script that fails is reported and the rest run;
its previous results file (if any) is still included, under a warning naming the failure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DIR, RESULTS_DIR, ROOT, machine

ORDER = ["pool", "reliability", "channel", "shared"]


def scripts() -> list[Path]:
    found = sorted(BENCH_DIR.glob("bench_*.py"))
    reliability = BENCH_DIR / "reliability.py"
    if reliability.exists():
        found.append(reliability)
    return sorted(found, key=lambda p: _rank(_result_name(p)))


def _result_name(script: Path) -> str:
    return script.stem.removeprefix("bench_")


def _rank(name: str) -> tuple[int, str]:
    return (ORDER.index(name), "") if name in ORDER else (len(ORDER), name)


def accepts_quick(script: Path) -> bool:
    return "--quick" in script.read_text()


def run(script: Path, quick: bool, timeout: float) -> tuple[bool, str]:
    argv = [sys.executable, str(script)]
    if quick and accepts_quick(script):
        argv.append("--quick")
    print(f"== {' '.join([Path(argv[0]).name, *argv[1:]])}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        # stdout (the tables) is dropped: each script writes its results file itself.
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    took = time.monotonic() - t0
    if proc.returncode != 0:
        return False, f"exited with {proc.returncode} after {took:.0f} s"
    return True, f"{took:.0f} s"


def assemble(command: str, failures: dict[str, str]) -> str:
    parts = [
        "# conveyor benchmarks\n",
        f"Machine: {machine()}.\n",
        f"Command: `{command}`. Every section below was measured by that run on this "
        f"machine; the machine is shared and has few cores, so timings are noisy and each "
        f"section says how it repeats its measurements.\n",
    ]
    files = sorted(RESULTS_DIR.glob("*.md"), key=lambda p: _rank(p.stem))
    for path in files:
        section = path.read_text().strip()
        if path.stem in failures:
            section = (f"> **Warning:** `{path.stem}` failed in this run "
                       f"({failures[path.stem]}); the figures below are from an earlier run.\n\n"
                       + section)
        parts.append(section + "\n")
    for name, why in failures.items():
        if not (RESULTS_DIR / f"{name}.md").exists():
            parts.append(f"## {name}\n\n> **Failed:** {why}; no results.\n")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script")
    ap.add_argument("--timeout", type=float, default=900, help="per script, seconds")
    args = ap.parse_args()
    failures: dict[str, str] = {}
    for script in scripts():
        ok, note = run(script, args.quick, args.timeout)
        print(f"   {'ok' if ok else 'FAILED'}: {note}", file=sys.stderr, flush=True)
        if not ok:
            failures[_result_name(script)] = note
    command = "python benchmarks/run_all.py" + (" --quick" if args.quick else "")
    out = ROOT / "BENCHMARKS.md"
    out.write_text(assemble(command, failures))
    print(f"written to {out}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
