"""The checker of alloynet_ort.cc's hand declarations finds them (functions and constants) and tells a
differing header apart."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


# the enums as tritonserver.h / tritonbackend.h write them: numbered by position unless given
ENUMS = """
typedef enum TRITONSERVER_errorcode_enum {
  TRITONSERVER_ERROR_UNKNOWN, TRITONSERVER_ERROR_INTERNAL, TRITONSERVER_ERROR_NOT_FOUND,
  TRITONSERVER_ERROR_INVALID_ARG, TRITONSERVER_ERROR_UNAVAILABLE, TRITONSERVER_ERROR_UNSUPPORTED
} TRITONSERVER_Error_Code;
typedef enum TRITONSERVER_datatype_enum {
  TRITONSERVER_TYPE_INVALID, TRITONSERVER_TYPE_BOOL, TRITONSERVER_TYPE_UINT8, TRITONSERVER_TYPE_UINT16,
  TRITONSERVER_TYPE_UINT32, TRITONSERVER_TYPE_UINT64, TRITONSERVER_TYPE_INT8, TRITONSERVER_TYPE_INT16,
  TRITONSERVER_TYPE_INT32, TRITONSERVER_TYPE_INT64, TRITONSERVER_TYPE_FP16, TRITONSERVER_TYPE_FP32,
} TRITONSERVER_DataType;
typedef enum TRITONSERVER_memorytype_enum {
  TRITONSERVER_MEMORY_CPU, TRITONSERVER_MEMORY_CPU_PINNED, TRITONSERVER_MEMORY_GPU
} TRITONSERVER_MemoryType;
typedef enum TRITONBACKEND_artifacttype_enum { TRITONBACKEND_ARTIFACT_FILESYSTEM } TRITONBACKEND_ArtifactType;
typedef enum tritonserver_requestreleaseflag_enum {
  TRITONSERVER_REQUEST_RELEASE_ALL = 1, TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2
} TRITONSERVER_RequestReleaseFlag;
typedef enum tritonserver_responsecompleteflag_enum {
  TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
} TRITONSERVER_ResponseCompleteFlag;
#define TRITONBACKEND_API_VERSION_MAJOR 1
"""


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
        + ENUMS
    )
    assert check.main(["x", str(same)]) == 0
    differing = tmp_path / "differ.h"
    release = "TRITONBACKEND_RequestRelease(TRITONBACKEND_Request * a0, uint32_t a1)"
    differing.write_text(same.read_text().replace(release, release.replace("uint32_t", "uint64_t")))
    assert check.main(["x", str(differing)]) == 1
    assert "TRITONBACKEND_RequestRelease: declared" in capsys.readouterr().out


def test_every_constant_the_backend_uses_is_compared_with_the_headers_numbering(tmp_path, capsys):
    check = _checker()
    assert set(check.declared_constants()) == set(check.CONSTANTS)
    values = check.official_constants([_header(tmp_path, ENUMS)])
    assert values["TRITONSERVER_TYPE_FP32"] == 11 and values["TRITONSERVER_ERROR_INVALID_ARG"] == 3
    assert values["TRITONSERVER_REQUEST_RELEASE_RESCHEDULE"] == 2 and values["TRITONBACKEND_API_VERSION_MAJOR"] == 1
    # a type inserted before FP32 (as a new release could) moves it: the checker must say so
    moved = _header(
        tmp_path, ENUMS.replace("TRITONSERVER_TYPE_FP16,", "TRITONSERVER_TYPE_FP16, TRITONSERVER_TYPE_FP8,")
    )
    assert check.main(["x", str(moved)]) == 1
    assert "kTypeFp32 = 11: the header has TRITONSERVER_TYPE_FP32 = 12" in capsys.readouterr().out


def _header(tmp_path, text: str):
    path = tmp_path / f"h{len(list(tmp_path.iterdir()))}.h"
    path.write_text(text)
    return path
