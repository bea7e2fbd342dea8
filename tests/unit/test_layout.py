"""The layout's promises: imports between packages go one way, and decoding a capture is light.

Every import counts: at the top of a module, inside a function, and a module named by a string literal to
``importlib.import_module``. Each source file is parsed once (a few hundred files: well under a second).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGES = ("alloynet", "serving", "infra", "flows")
# What each top-level package may import, beside itself and third-party libraries (docs: the design's layout):
# alloynet is the library; serving imports it; infra (processes) may import serving; flows orchestrates all.
ALLOWED = {
    "alloynet": set(),
    "serving": {"alloynet"},
    "infra": {"alloynet", "serving"},
    "flows": {"alloynet", "serving", "infra"},
}
# Third-party packages a package must never import (any import, also inside functions).
FORBIDDEN_LIBRARIES = {"alloynet": {"prefect"}, "serving": {"prefect"}}


def imported_names(tree: ast.AST) -> list[str]:
    """The dotted module names a parsed module imports (relative imports are not used in this tree)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            fn = node.func
            called = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if called in ("import_module", "__import__"):
                names.append(node.args[0].value)
    return names


@cache
def imports() -> dict[Path, list[str]]:
    """Each source file of the top-level packages -> the modules it imports."""
    return {
        path: imported_names(ast.parse(path.read_text(), str(path)))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def top_level_edges() -> dict[str, dict[str, set[str]]]:
    """package -> imported top-level name -> the files (relative to the repository) that import it."""
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path, names in imports().items():
        rel = path.relative_to(ROOT)
        for name in names:
            edges[rel.parts[0]][name.split(".")[0]].add(str(rel))
    return edges


def package_edges() -> dict[str, set[str]]:
    """alloynet.<package> -> the alloynet packages its modules import."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path, names in imports().items():
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] != "alloynet":
            continue
        src = ".".join(parts[:2]) if len(parts) > 2 else ".".join(parts)
        for name in names:
            p = name.split(".")
            if p[0] == "alloynet" and len(p) > 1:
                dst = ".".join(p[:2])
                if dst != src and dst != "alloynet.__init__":
                    edges[src].add(dst)
    return edges


@pytest.mark.parametrize("package", PACKAGES)
def test_top_level_packages_import_one_way(package):
    edges = top_level_edges()
    assert edges[package], f"no imports found in {package}/: is the tree where the test looks ({ROOT})?"
    wrong = {
        dst: sorted(files)
        for dst, files in edges[package].items()
        if dst in PACKAGES and dst != package and dst not in ALLOWED[package]
    }
    allowed = sorted(ALLOWED[package]) or f"none of {PACKAGES}"
    assert not wrong, f"{package} may import only {allowed}; found {wrong}"
    banned = {
        dst: sorted(files) for dst, files in edges[package].items() if dst in FORBIDDEN_LIBRARIES.get(package, ())
    }
    assert not banned, f"{package} must not import {sorted(FORBIDDEN_LIBRARIES[package])}; found {banned}"
    if package != "alloynet":
        assert "alloynet" in edges[package], f"{package} is built on alloynet, yet imports nothing of it"


def test_the_direction_check_sees_every_kind_of_import():
    tree = ast.parse(
        "import infra.serve\nfrom serving.client import connect\n"
        "def f():\n    import prefect\n    importlib.import_module('flows.cli')\n"
    )
    assert imported_names(tree) == ["infra.serve", "serving.client", "prefect", "flows.cli"]


def test_no_import_cycles_between_packages():
    edges = package_edges()

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in edges.get(a, ()))

    cycles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if reaches(b, a, {b})})
    assert not cycles, f"packages that import each other (directly or through others): {cycles}"
    # the direction the design names, checked where it was once broken
    assert "alloynet.train" not in edges["alloynet.evaluate"] | edges["alloynet.export"]
    assert "alloynet.physics" in edges["alloynet.captures"] and edges["alloynet.captures"] <= {"alloynet.physics"}
    assert not edges["alloynet.registry"] & {"alloynet.train", "alloynet.evaluate", "alloynet.export"}


def test_decoding_a_capture_loads_no_physics_torch_or_schema():
    code = (
        "import sys, serving.client; from serving.client.captures import decode; "
        "from alloynet.captures.image import encode_image; import numpy as np; "
        "decode(encode_image(np.full((1, 8, 8), 1000, np.uint16))[0]); "
        "print(sorted(m for m in ('scipy', 'xraydb', 'spekpy', 'torch', 'pydantic', 'pandas', 'grpc') "
        "if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
