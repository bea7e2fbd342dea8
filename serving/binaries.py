"""Finding the command-line tools serving runs (torch-model-archiver) and infra starts (torchserve, weed)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def find_binary(name: str, install_hint: str) -> str:
    """``name`` from this interpreter's bin directory (the venv), else from PATH."""
    cand = Path(sys.executable).parent / name
    found = str(cand) if cand.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is missing: {install_hint}")
    return found
