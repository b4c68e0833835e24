"""The package's layering, enforced: each subsystem imports only the ones below it.

The table below is the architecture of ``src/conveyor/`` (each subpackage's docstring
says the same in words). Every ``import`` of a conveyor module anywhere in the source,
also inside functions and under ``TYPE_CHECKING``, is read from the files with ``ast``
and checked against it. A new subpackage must be added here, with what it may import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "conveyor"

# Subsystem -> the subsystems it may import (besides itself). ``conveyor`` is the
# package's own ``__init__`` (its version and lazy exports).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_trace": set(),  # called by the pool through hooks; imports nothing of conveyor
    "_ipc": {"errors"},
    "_channel": {"_ipc", "errors"},
    "_shared": {"_ipc", "errors"},
    "_team": {"_ipc", "errors"},
    "_pool": {"_trace", "_ipc", "errors"},
    "_dask": {"_pool", "_trace", "_ipc", "errors"},
    "_flow": {"_dask", "_pool", "_trace", "_ipc", "errors"},
    "_cli": {"_flow", "_pool", "_trace", "_ipc", "_demo", "errors", "conveyor"},
    "_demo": {"_flow", "_pool", "_channel", "_shared", "_team", "_trace", "_ipc", "errors",
              "conveyor"},
    "conveyor": {"_flow", "_dask", "_pool", "_channel", "_shared", "_team", "_trace", "_ipc",
                 "errors"},
}

# The only imports against the table: (importing module, imported module). ``_dask``
# runs a local pool on each Dask worker, so it sits above ``_pool``; yet ``Pool`` must
# find a ``use_cluster()`` default and make a cluster's runner. Each of these is made
# inside a function, only when a cluster is (or may be) asked for: never at import time.
UPWARD_HOOKS: set[tuple[str, str]] = {
    ("conveyor._pool.pool", "conveyor._dask._context"),
    ("conveyor._pool.pool", "conveyor._dask._backend"),
}


def _subsystem(module: str) -> str:
    """``conveyor._pool.worker`` -> ``_pool``; ``conveyor`` -> ``conveyor``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "conveyor"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("__init__", "__main__"):
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, module) for every conveyor module that ``path`` imports (``top_level_only``:
    only those made outside any function, so at import time or under TYPE_CHECKING)."""
    found: list[tuple[int, str]] = []
    tree = ast.parse(path.read_text(), str(path))
    nodes = list(ast.walk(tree))
    if top_level_only:
        in_functions = {id(n) for f in nodes
                        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                        for n in ast.walk(f)}
        nodes = [n for n in nodes if id(n) not in in_functions]
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("conveyor")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "conveyor":
                # ``from conveyor import _ipc`` names a subpackage; anything else is the
                # package's own namespace.
                for a in node.names:
                    sub = a.name if (SRC / a.name).is_dir() or a.name == "errors" else ""
                    found.append((node.lineno, f"conveyor.{sub}" if sub else "conveyor"))
            elif node.module.startswith("conveyor."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; spell it out")
    return found


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_subsystem_is_in_the_table() -> None:
    subsystems = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subsystems <= set(ALLOWED), f"add {sorted(subsystems - set(ALLOWED))} to ALLOWED"
    loose = sorted(p.name for p in SRC.glob("*.py") if p.stem not in ("__init__", "errors"))
    assert not loose, f"modules outside a subsystem: {loose}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_layers(path: Path) -> None:
    here = _subsystem(_module_name(path))
    name = _module_name(path)
    wrong = [f"line {line}: {module}" for line, module in _imports(path)
             if _subsystem(module) != here and _subsystem(module) not in ALLOWED[here]
             and (name, module) not in UPWARD_HOOKS]
    assert not wrong, f"{here} may import only {sorted(ALLOWED[here])}: " + "; ".join(wrong)


def test_upward_hooks_are_made_only_inside_functions() -> None:
    """An upward hook is a lazy import: importing the pool never imports ``_dask``."""
    for importer, imported in UPWARD_HOOKS:
        path = SRC.parent / (importer.replace(".", "/") + ".py")
        assert imported in {m for _, m in _imports(path)}, f"stale hook {importer} -> {imported}"
        eager = [line for line, m in _imports(path, top_level_only=True) if m == imported]
        assert not eager, f"{importer} imports {imported} outside a function (line {eager})"


def test_nothing_imports_the_demo_but_the_command_line() -> None:
    users = sorted(str(p.relative_to(SRC)) for p in _sources()
                   if _subsystem(_module_name(p)) not in ("_demo", "_cli")
                   and any(_subsystem(m) == "_demo" for _, m in _imports(p)))
    assert not users


def test_subpackage_inits_hold_only_a_docstring() -> None:
    """``import conveyor`` stays cheap only if importing a subpackage runs no code."""
    for init in SRC.glob("*/__init__.py"):
        body = ast.parse(init.read_text()).body
        assert body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        assert len(body[0].value.value) > 100, f"{init}: say what it owns and may import"
        assert len(body) == 1, f"{init}: code in a subpackage's __init__"


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from conveyor._pool.pool import Pool\n")
    assert _imports(bad) == [(2, "conveyor._pool.pool")]
    assert "_pool" not in ALLOWED["_ipc"]
