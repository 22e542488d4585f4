"""The house keeps its shape: imports run only downwards (the contracts in .importlinter, checked by
import-linter, as `lint-imports` does) and nothing imports itself back in a loop: neither two parts
of mnistops (top-level packages and modules) nor two modules inside one folder.

Inside a folder, every import counts, the lazy ones inside functions and the ones under
TYPE_CHECKING too. A loop through a lazy import is still two modules that each need the other: one
cannot be read, tested or moved without the other, and the loop turns into an import-order crash the
day someone hoists the import. Imports go inside functions to keep heavy third-party SDKs off
`--help`; mnistops' own modules are cheap, so counting them costs nothing (none is needed today).
A package's __init__ is a module of its folder: a child that imports its package while the package
imports the child is a loop. Imports by name (importlib.import_module, as stages/__init__.py finds a
stage's module) are invisible to a static graph and are not checked."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path


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


def folder_loops(graph) -> list:
    """Every folder's import loops, one found cycle per broken edge: [[module, ..., module], ...].
    A folder's nodes are its package (__init__) and its children, each subpackage squashed into one
    node (what a subpackage imports, any of its modules does); edges are direct imports, lazy ones
    and TYPE_CHECKING ones included (grimp's graph holds them all)."""
    loops = []
    for package in sorted(m for m in graph.modules if graph.find_children(m)):
        children = sorted(graph.find_children(package))

        def node_of(module: str):
            if module == package:
                return package
            for child in children:
                if module == child or module.startswith(child + "."):
                    return child
            return None

        edges: dict = {}
        for node in [package, *children]:
            inside = [node] if node == package else [node, *sorted(graph.find_descendants(node))]
            for importer in inside:
                for imported in graph.find_modules_directly_imported_by(importer):
                    target = node_of(imported)
                    if target is not None and target != node:
                        edges.setdefault(node, set()).add(target)
        while True:
            loop = _cycle(edges)
            if not loop:
                break
            loops.append(loop)
            edges[loop[0]].discard(loop[1])
    return loops


def test_no_import_loop_inside_a_folder():
    graph = grimp.build_graph("mnistops", include_external_packages=False, cache_dir=None)
    assert folder_loops(graph) == [], "import loops inside a folder: " + "; ".join(
        " -> ".join(loop) for loop in folder_loops(graph))


def test_a_loop_inside_a_folder_is_seen_through_a_lazy_import_and_a_package_init(tmp_path, monkeypatch):
    """The check can fail: a throwaway package with base <-> refs (refs imports base lazily, inside a
    function) and a child importing its own package's __init__, which imports that child."""
    name = f"loopy_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text(f"from {name} import refs\n")
    (pkg / "refs.py").write_text(f"def resolve():\n    from {name}.base import X\n    return X\n")
    (pkg / "sub" / "__init__.py").write_text(f"from {name}.sub.child import thing\n")
    (pkg / "sub" / "child.py").write_text(f"import {name}.sub\nthing = 1\n")
    (pkg / "clean.py").write_text(f"from {name} import base\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph(name, include_external_packages=False, cache_dir=None)
    found = {frozenset(loop) for loop in folder_loops(graph)}
    assert found == {frozenset({f"{name}.base", f"{name}.refs"}),
                     frozenset({f"{name}.sub", f"{name}.sub.child"})}, folder_loops(graph)
