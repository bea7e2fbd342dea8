"""Packaging an export bundle for the model servers, through the packagers in serving/.

alloynet/ cannot import serving/ (serving depends on alloynet), so the bridge lives here, on the flows side.
A requested format whose packager is missing is an error, never a silent skip: a promotion that cannot
package leaves the old champion serving.
"""
from __future__ import annotations

import importlib
from pathlib import Path

FORMATS = ("torchserve", "triton")


class PackagingUnavailable(RuntimeError):
    """The packager for a requested serving format is not installed / not importable."""


def _torchserve(bundle_dir: Path, out: Path, version: str) -> Path:
    try:
        from serving.torchserve.archive import build_mar
    except ModuleNotFoundError as exc:
        raise PackagingUnavailable(f"the TorchServe archiver (serving/torchserve/archive.py) is missing: {exc}") from exc

    return build_mar(bundle_dir, out, model_name="alloynet", version=version)


def _triton(bundle_dir: Path, out: Path, version: str) -> Path:
    try:
        repo = importlib.import_module("serving.triton.repository")
    except ModuleNotFoundError as exc:
        raise PackagingUnavailable(f"the Triton repository builder (serving/triton/repository.py) is missing: {exc}") from exc
    return Path(repo.build_repository(bundle_dir, out, name="alloynet"))


_PACKAGERS = {"torchserve": _torchserve, "triton": _triton}


def available_formats() -> list[str]:
    """Formats whose packager imports here (the demo packages what it can; production asks for both)."""
    out = []
    for fmt, mod in (("torchserve", "serving.torchserve.archive"), ("triton", "serving.triton.repository")):
        try:
            importlib.import_module(mod)
            out.append(fmt)
        except ImportError:
            pass
    return out


def package_for_serving(bundle_dir: str | Path, out_dir: str | Path, formats: list[str] | tuple[str, ...],
                        version: str = "1.0") -> dict[str, str]:
    """Build each requested package into ``out_dir/<format>``; returns {format: path}."""
    unknown = [f for f in formats if f not in _PACKAGERS]
    if unknown:
        raise ValueError(f"unknown serving format(s) {unknown}; known: {', '.join(FORMATS)}")
    out = Path(out_dir)
    return {fmt: str(_PACKAGERS[fmt](Path(bundle_dir), out / fmt, version)) for fmt in formats}
