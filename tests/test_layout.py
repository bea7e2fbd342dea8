"""The layout's promises: imports between alloynet's packages go one way, and decoding a capture is light."""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_edges() -> dict[str, set[str]]:
    """alloynet.<package> -> the alloynet packages its modules import (any import, also inside functions)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in (ROOT / "alloynet").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        src = ".".join(parts[:2]) if len(parts) > 2 else ".".join(parts)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                p = name.split(".")
                if p[0] == "alloynet" and len(p) > 1:
                    dst = ".".join(p[:2])
                    if dst != src and dst != "alloynet.__init__":
                        edges[src].add(dst)
    return edges


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
    code = ("import sys, serving.client as c; from alloynet.captures.image import encode_image; import numpy as np; "
            "c._decode(encode_image(np.full((1, 8, 8), 1000, np.uint16))[0]); "
            "print(sorted(m for m in ('scipy', 'xraydb', 'spekpy', 'torch', 'pydantic', 'pandas') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
