"""The package's layout holds: no import circle among its modules (top-level imports), and the
daemon's side never imports the engine's faster-whisper parts (the process boundary)."""

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


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at its top level (not inside functions)."""
    modules = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.parse(path.read_text()).body:
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
    graph["insightron_watchd.records"].add("insightron_watchd.daemon")
    assert _circle(graph) is not None


def test_the_daemon_side_never_imports_the_engine() -> None:
    code = (
        "import json, sys\n"
        "import insightron_watchd.cli, insightron_watchd.daemon, insightron_watchd.web\n"
        "import insightron_watchd.openai_api, insightron_watchd.executors.pool\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    heavy = {"faster_whisper", "ctranslate2", "av", "torch"}
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
