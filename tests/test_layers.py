"""The house keeps its shape: imports run only downwards (the contracts in .importlinter, checked by
import-linter, as `lint-imports` does) and no two parts of mnistops import each other in a loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, needs_module

grimp = needs_module("grimp")  # import-linter's graph


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _cycle(edges: dict) -> list:
    """One cycle in a directed graph {node: {successors}}, or []."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_no_import_loop_between_parts():
    graph = grimp.build_graph("mnistops", include_external_packages=False)
    parts = sorted(m for m in graph.find_children("mnistops"))
    for part in parts:
        if graph.find_children(part):
            graph.squash_module(part)
    edges = {p: {q for q in graph.find_modules_directly_imported_by(p) if q in parts and q != p} for p in parts}
    assert _cycle(edges) == [], f"import loop: {' -> '.join(_cycle(edges))}"
