"""The folders are the architecture, and imports only point one way (docs/architecture.md).

    streamrec (core) <- stream (worker) <- serving (scorer) <- trainer (offline) <- online (online trainer)

`deploy` sits beside the services and may read the stream's topic list. `harness` (simulator, demo, soak,
faults, benchmarks) drives and measures the product: it may import anything, and no production module
imports it. `streamrec.cli`, the entry point, registers every package's subcommands, the harness's included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"streamrec": "streamrec", "stream": "streamrec.stream", "serving": "streamrec.serving",
           "trainer": "streamrec.trainer", "online": "streamrec.online", "harness": "streamrec.harness",
           "deploy": "streamrec.deploy"}
# What each part may import besides itself (and third-party packages).
ALLOWED = {
    "streamrec": set(),
    "streamrec.stream": {"streamrec"},
    "streamrec.serving": {"streamrec", "streamrec.stream"},
    "streamrec.trainer": {"streamrec", "streamrec.stream", "streamrec.serving"},
    "streamrec.online": {"streamrec", "streamrec.stream", "streamrec.serving", "streamrec.trainer"},
    "streamrec.deploy": {"streamrec", "streamrec.stream"},
    "streamrec.harness": set(FOLDERS.values()),
}
ENTRY_POINTS = {"streamrec.cli"}


def part_of(module: str) -> str:
    """The folder a dotted module belongs to: its longest matching package."""
    return max((p for p in FOLDERS.values() if module == p or module.startswith(p + ".")), key=len)


def modules():
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            yield name, path


def imported(module: str, path: Path) -> set[str]:
    """Every streamrec module `path` imports, at the top or inside a function."""
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m == "streamrec" or m.startswith("streamrec.")}


def violations() -> list[str]:
    bad = []
    for module, path in modules():
        if module in ENTRY_POINTS:
            continue
        own = part_of(module)
        for target in sorted(imported(module, path)):
            other = part_of(target)
            if other != own and other not in ALLOWED[own]:
                bad.append(f"{module} imports {target}")
    return bad


def test_imports_point_one_way():
    assert violations() == []


@pytest.mark.parametrize(("module", "source", "part"), [
    ("streamrec.serving.engine", "from streamrec.harness.bench.core import bench_config\n", "harness"),
    ("streamrec.stream.worker", "import streamrec.serving.scorer\n", "serving"),
    ("streamrec.settings", "from streamrec.stream import keys\n", "stream"),
    ("streamrec.trainer.sasrec", "from ..online import gate\n", "online"),
])
def test_a_wrong_way_import_is_caught(tmp_path, module, source, part):
    """The check itself: each of these would be reported (relative imports resolved too)."""
    path = tmp_path / "mod.py"
    path.write_text(source)
    own = part_of(module)
    targets = imported(module, path)
    assert targets and all(part_of(t) not in ALLOWED[own] | {own} for t in targets), targets
    assert any(part_of(t) == f"streamrec.{part}" for t in targets)


def unresolved_imports() -> list[str]:
    """Every `from streamrec... import name` in the product, tests and tools, at the top or inside a function,
    whose module or name does not exist (an import inside a rarely run function fails only when it runs)."""
    import importlib
    import importlib.util

    bad = []
    folders = (*FOLDERS, "tests", "tools", "docs/analysis")
    for path in sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("streamrec")):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            try:
                module = importlib.import_module(node.module)
            except ImportError as exc:
                bad.append(f"{where}: {node.module}: {exc}")
                continue
            for alias in node.names:
                if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                    bad.append(f"{where}: {node.module} has no {alias.name}")
    return bad


def test_every_streamrec_import_resolves():
    assert unresolved_imports() == []
