"""Compare the Triton functions alloynet_ort.cc declares by hand with the official headers.

The build cannot install tritonserver.h / tritonbackend.h (no package ships them), so the backend declares
the few functions it calls. Before moving to another Triton release, check them against that release's headers
(include/triton/core/ of triton-inference-server/core on the release's branch, r24.10 for Triton 2.51):

    python serving/triton/backend/check_declarations.py path/to/tritonserver.h path/to/tritonbackend.h

Prints each function whose argument types differ, or is missing from the headers, and each constant
(error codes, data type, memory types, artifact type, flags, the API's major version) whose value differs;
exits 1 if any. Enum arguments compare equal to ``int`` (the hand declarations pass them as int, the same size
in the ABI).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("alloynet_ort.cc")
ENUMS = {"TRITONSERVER_DataType", "TRITONSERVER_MemoryType", "TRITONSERVER_Error_Code", "TRITONBACKEND_ArtifactType"}
# alloynet_ort.cc's constant -> the header's name for it
CONSTANTS = {
    "kUnknown": "TRITONSERVER_ERROR_UNKNOWN",
    "kInternal": "TRITONSERVER_ERROR_INTERNAL",
    "kNotFound": "TRITONSERVER_ERROR_NOT_FOUND",
    "kInvalidArg": "TRITONSERVER_ERROR_INVALID_ARG",
    "kUnavailable": "TRITONSERVER_ERROR_UNAVAILABLE",
    "kUnsupported": "TRITONSERVER_ERROR_UNSUPPORTED",
    "kTypeFp32": "TRITONSERVER_TYPE_FP32",
    "kMemCpu": "TRITONSERVER_MEMORY_CPU",
    "kMemCpuPinned": "TRITONSERVER_MEMORY_CPU_PINNED",
    "kMemGpu": "TRITONSERVER_MEMORY_GPU",
    "kArtifactFilesystem": "TRITONBACKEND_ARTIFACT_FILESYSTEM",
    "kResponseFinal": "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "kReleaseAll": "TRITONSERVER_REQUEST_RELEASE_ALL",
    "kApiMajor": "TRITONBACKEND_API_VERSION_MAJOR",
}


def _types(args: str) -> list[str]:
    """Argument types only, normalised: no names, no const/struct/enum keywords, enums as int."""
    out = []
    for arg in args.split(","):
        toks = re.sub(r"\s+", " ", arg.replace("*", " * ")).strip().split(" ")
        if len(toks) > 1 and toks[-1] != "*" and toks[-1] not in ENUMS:
            toks = toks[:-1]  # the parameter's name
        out.append(" ".join("int" if t in ENUMS else t for t in toks if t not in ("const", "struct", "enum")))
    return out


def official(headers: list[Path]) -> dict[str, list[str]]:
    text = re.sub(r"//[^\n]*", "", "\n".join(h.read_text() for h in headers))
    pattern = r"(?:TRITONSERVER|TRITONBACKEND)_DECLSPEC\s+[^;]*?\b(TRITON\w+)\s*\(([^;]*?)\)\s*;"
    return {m.group(1): _types(m.group(2)) for m in re.finditer(pattern, text, re.S)}


def _value(expr: str, known: dict[str, int]) -> int | None:
    """An enumerator's value as the headers write them: a number, ``A << B``, or an earlier name; else None."""
    expr = expr.strip()
    if "<<" in expr:
        left, right = (_value(e, known) for e in expr.split("<<", 1))
        return None if left is None or right is None else left << right
    if expr in known:
        return known[expr]
    try:
        return int(expr.rstrip("uUlL"), 0)
    except ValueError:
        return None


def official_constants(headers: list[Path]) -> dict[str, int | None]:
    """Every enumerator (numbered as C numbers them) and numeric #define of the headers."""
    text = re.sub(r"//[^\n]*", "", "\n".join(h.read_text() for h in headers))
    out: dict[str, int | None] = {}
    for body in re.findall(r"\benum\s+\w*\s*\{(.*?)\}", text, re.S):
        following: int | None = 0
        for item in filter(None, (i.strip() for i in body.split(","))):
            name, _, expr = (t.strip() for t in item.partition("="))
            value = _value(expr, {k: v for k, v in out.items() if v is not None}) if expr else following
            out[name] = value
            following = None if value is None else value + 1
    for name, value in re.findall(r"#define\s+(TRITON\w+)\s+(\d+)\s*$", text, re.M):
        out[name] = int(value)
    return out


def declared_constants(source: Path = SOURCE) -> dict[str, int]:
    text = source.read_text()
    block = text[text.index('extern "C" {') : text.index("// ---- ONNX Runtime")]
    return {name: int(value) for name, value in re.findall(r"\b(k[A-Z]\w*)\s*=\s*(\d+)", block)}


def declared(source: Path = SOURCE) -> dict[str, list[str]]:
    text = source.read_text()
    block = text[text.index('extern "C" {') : text.index("// ---- ONNX Runtime")]
    pattern = r"\n\w[\w\s*]*?\b(TRITON\w+)\(([^;]*?)\);"
    return {m.group(1): _types(m.group(2)) for m in re.finditer(pattern, block, re.S)}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    theirs = official([Path(a) for a in argv[1:]])
    problems = 0
    for name, ours in declared().items():
        if name not in theirs:
            print(f"{name}: not in the headers given")
            problems += 1
        elif ours != theirs[name]:
            print(f"{name}: declared ({', '.join(ours)}), the header has ({', '.join(theirs[name])})")
            problems += 1
    print(f"{len(declared()) - problems} of {len(declared())} declarations agree with the headers")
    values, constants = official_constants([Path(a) for a in argv[1:]]), declared_constants()
    wrong = 0
    for name, header_name in CONSTANTS.items():
        if name not in constants:
            print(f"{name}: not declared in {SOURCE.name}")
        elif values.get(header_name) is None:
            print(f"{name}: {header_name} not (readably) in the headers given")
        elif values[header_name] != constants[name]:
            print(f"{name} = {constants[name]}: the header has {header_name} = {values[header_name]}")
        else:
            continue
        wrong += 1
    for name in sorted(set(constants) - set(CONSTANTS)):  # a constant added to the backend must be compared too
        print(f"{name}: declared in {SOURCE.name} but not compared (add it to CONSTANTS)")
        wrong += 1
    print(f"{len(CONSTANTS) - wrong} of {len(CONSTANTS)} constants agree with the headers")
    return 1 if problems or wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
