"""Compare the Triton functions alloynet_ort.cc declares by hand with the official headers.

The build cannot install tritonserver.h / tritonbackend.h (no package ships them), so the backend declares
the few functions it calls. Before moving to another Triton release, check them against that release's headers
(include/triton/core/ of triton-inference-server/core at the release's tag):

    python serving/triton/backend/check_declarations.py path/to/tritonserver.h path/to/tritonbackend.h

Prints each function whose argument types differ, or is missing from the headers; exits 1 if any.
Enum arguments compare equal to ``int`` (the hand declarations pass them as int, the same size in the ABI).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("alloynet_ort.cc")
ENUMS = {"TRITONSERVER_DataType", "TRITONSERVER_MemoryType", "TRITONSERVER_Error_Code", "TRITONBACKEND_ArtifactType"}


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
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
