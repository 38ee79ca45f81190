"""The package's layout holds: its packages import in one declared order (none reaches up into
one that uses it), no import circle among its modules, every package says what it owns, at
most 15 modules sit at the top, and the daemon's side never imports the engine's
faster-whisper parts (the process boundary)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "insightron_watchd"


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph(everywhere: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports at its top level (``everywhere``: inside
    functions too)."""
    modules = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree) if everywhere else tree.body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
                names = [f"{target}.{a.name}" for a in node.names]
                for t in [target, *names]:
                    if t in modules and t != mod:
                        graph[mod].add(t)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in modules:
                        graph[mod].add(a.name)
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if n.startswith(m + "."):
                continue  # a package's __init__ naming its own modules is not a circle
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_circle() -> None:
    graph = _graph()
    assert "insightron_watchd.executors.pool" in graph  # (the walk sees the subpackages)
    assert _circle(graph) is None, " -> ".join(_circle(graph) or [])
    # (the check can fail: a circle put in by hand is found)
    graph["insightron_watchd.values"].add("insightron_watchd.daemon.daemon")
    assert _circle(graph) is not None


def test_the_daemon_side_never_imports_the_engine() -> None:
    code = (
        "import json, sys\n"
        "import insightron_watchd.cli.main, insightron_watchd.daemon.daemon, insightron_watchd.web.server\n"
        "import insightron_watchd.web.openai_door, insightron_watchd.executors.pool\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    heavy = {"faster_whisper", "ctranslate2", "av", "torch", "onnxruntime"}
    engine = {f"insightron_watchd.engine.{m}" for m in ("whisper", "decoding", "audio", "segments")}
    assert not (loaded & (heavy | engine)), sorted(loaded & (heavy | engine))
    # (the check can fail: the engine's own modules do load each other)
    control = (
        "import json, sys, insightron_watchd.engine.whisper; print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", control], capture_output=True, text=True, check=True
    )
    assert "insightron_watchd.engine.audio" in json.loads(out.stdout)


# The packages (and top-level modules) in the order they may import each other: each may
# import what is on its own line or above it, never what is below. docs/architecture.md
# draws the same order.
LAYERS = (
    ("version", "clock", "errors", "values", "formatting"),  # shared values, no imports
    ("fs",),  # names as bytes, handles, path rules
    ("formats",),  # the output-format registry and its renderers (pure)
    ("logs", "metrics"),
    ("engine",),  # the worker's side of the process boundary
    ("config",),
    ("journal",),
    ("search",),
    ("executors",),
    ("outcomes",),
    ("intake",),
    ("dispatch",),
    ("web",),
    ("daemon",),
    ("api",),  # the public library (Insightron's batch API)
    ("batch_processor",),
    ("cli",),
    ("testing",),
)


def _unit(module: str) -> str:
    """The top-level package or module ``module`` belongs to (``engine.whisper``: ``engine``)."""
    rest = module.removeprefix("insightron_watchd").lstrip(".")
    return rest.split(".")[0]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    bad = []
    for mod, targets in graph.items():
        if _unit(mod) == "":
            continue  # the package root: its lazy names reach the public library
        for t in targets:
            if rank[_unit(t)] > rank[_unit(mod)]:
                bad.append(f"{mod} -> {t}")
    return sorted(bad)


def test_packages_import_in_the_declared_order_only() -> None:
    graph = _graph(everywhere=True)  # a lazy import inside a function counts too
    units = {_unit(m) for m in graph} - {""}
    assert units == {name for layer in LAYERS for name in layer}, "a package not in LAYERS"
    assert _upward(graph) == []
    # (the check can fail: the journal reaching up into dispatch is caught)
    graph["insightron_watchd.journal.journal"].add("insightron_watchd.dispatch.units")
    assert _upward(graph) == [
        "insightron_watchd.journal.journal -> insightron_watchd.dispatch.units"
    ]


def test_every_package_says_what_it_owns_and_the_top_stays_small() -> None:
    for init in PKG.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 12, f"{init.relative_to(PKG.parent)} has no docstring"
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 15, top
