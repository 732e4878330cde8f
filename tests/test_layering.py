"""The import graph: components do not reach up to the harness that measures them.

A component package (stream, serving, training, validation, model, world, events_api,
offline_store) imports neither `homefeed.stack` (starting services is the CLI's, the demo's and
the benchmarks' business) nor `homefeed.bench` (every benchmark and the fault matrix live there,
above the components). Imports are read with `ast`, so lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import homefeed

PACKAGE = Path(homefeed.__file__).resolve().parent
COMPONENTS = ("stream", "serving", "training", "validation", "model", "world", "events_api",
              "offline_store")
FORBIDDEN = ("homefeed.stack", "homefeed.bench")


def imported_modules(source: str, package: str) -> set[str]:
    """Every name `source` (a module of `package`) imports, absolute: `from homefeed import
    stack` gives homefeed and homefeed.stack; `from ..bench import serve` in homefeed.stream
    gives homefeed.bench and homefeed.bench.serve."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def forbidden(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))


def component_modules() -> list[Path]:
    return sorted(p for c in COMPONENTS for p in (PACKAGE / c).rglob("*.py"))


def test_components_import_neither_the_stack_nor_a_benchmark():
    found = {}
    for path in component_modules():
        package = ".".join(("homefeed", *path.relative_to(PACKAGE).parent.parts))
        bad = forbidden(imported_modules(path.read_text(), package))
        if bad:
            found[str(path.relative_to(PACKAGE))] = bad
    assert found == {}, f"components importing the stack or a benchmark: {found}"


def test_every_benchmark_lives_in_the_bench_package():
    stray = [str(p.relative_to(PACKAGE)) for p in component_modules() if p.stem.startswith("bench")]
    assert stray == []
    assert not (PACKAGE / "bench.py").exists() and not (PACKAGE / "faults.py").exists()


def test_the_check_sees_every_import_form():
    source = ("import homefeed.stack\n"
              "from homefeed import stack, settings\n"
              "from homefeed.bench import faults\n"
              "def lazy():\n"
              "    from ..bench.serve import main\n"
              "    from .. import stack as s\n"
              "    from .consumer import STATE_KEY\n")
    assert forbidden(imported_modules(source, "homefeed.stream")) == [
        "homefeed.bench", "homefeed.bench.faults", "homefeed.bench.serve", "homefeed.bench.serve.main",
        "homefeed.stack"]
    assert forbidden(imported_modules("from homefeed import settings\nfrom .consumer import x\n",
                                      "homefeed.stream")) == []
