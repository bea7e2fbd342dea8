"""The checker of alloynet_ort.cc's hand declarations finds them and tells a differing header apart."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _checker():
    spec = importlib.util.spec_from_file_location(
        "check_declarations", ROOT / "serving/triton/backend/check_declarations.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_triton_function_the_backend_calls_is_declared_and_compared(tmp_path, capsys):
    check = _checker()
    ours = check.declared()
    called = {"TRITONBACKEND_RequestInput", "TRITONBACKEND_ResponseSend", "TRITONSERVER_MessageSerializeToJson"}
    assert called <= set(ours)
    assert ours["TRITONBACKEND_InputProperties"][1:3] == ["char * *", "int *"]  # name, then the enum as int
    same = tmp_path / "same.h"
    same.write_text(
        "\n".join(
            f"TRITONBACKEND_DECLSPEC TRITONSERVER_Error* {name}({', '.join(f'{t} a{i}' for i, t in enumerate(types))});"
            for name, types in ours.items()
        )
    )
    assert check.main(["x", str(same)]) == 0
    differing = tmp_path / "differ.h"
    release = "TRITONBACKEND_RequestRelease(TRITONBACKEND_Request * a0, uint32_t a1)"
    differing.write_text(same.read_text().replace(release, release.replace("uint32_t", "uint64_t")))
    assert check.main(["x", str(differing)]) == 1
    assert "TRITONBACKEND_RequestRelease: declared" in capsys.readouterr().out
