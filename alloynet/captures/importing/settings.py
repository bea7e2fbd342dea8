"""What applies to every file of an import unless its CSV row says otherwise: the ``--rig`` YAML and options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alloynet.captures.format import RigInfo
from alloynet.physics.alloys import AlloyTable, alloys_from_config

# RigInfo fields a lab must give: the physics cannot guess them
REQUIRED_RIG = ("kvp", "wedge_mm")
# where each missing setting can come from, for the report's "fix" line
SETTING_SOURCES = {
    "kvp": "--kvp KV (one per channel), kvp under rig: in the --rig YAML, or a kvp column in the CSV",
    "wedge_mm": "--wedge-mm MM, wedge_mm under rig: in the --rig YAML, or a wedge_mm column in the CSV",
    "thickness_mm": "--thickness-mm MM, thickness_mm in the --rig YAML, or a thickness_mm column in the CSV",
    "dark": "--dark-level ADU, dark_level in the --rig YAML, a dark column in the CSV, a dark.tif beside the "
    "images, or reference/dark/ frames",
    "flat": "--flat-level ADU, flat_level in the --rig YAML, a flat column in the CSV, a flat.tif beside the "
    "images, or reference/flat/ frames",
}


class ImportUsageError(ValueError):
    """A bad option, YAML or CSV header: nothing can be imported until it is fixed (exit code 2)."""


class ImportSettings(BaseModel):
    """What applies to every file unless its CSV row says otherwise: the ``--rig`` YAML, then options."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rig: dict[str, Any] = Field(default_factory=dict, description="sidecar rig fields: kvp, wedge_mm, dose, ...")
    thickness_mm: float | None = Field(None, gt=0, description="plate thickness (mm) of every file without its own")
    dark_level: list[Annotated[float, Field(ge=0)]] | None = Field(None, min_length=1, description="ADU per channel")
    flat_level: list[Annotated[float, Field(gt=0)]] | None = Field(None, min_length=1, description="ADU per channel")
    custom_alloys: dict[str, dict] = Field(default_factory=dict, description="extra alloys, see alloys_from_config")
    allow_8bit: bool = Field(False, description="import 8-bit images (recorded as bit_depth 8 in the sidecar)")

    def alloy_table(self) -> AlloyTable:
        """The standard alloys plus ``custom_alloys``: the labels an import accepts."""
        return alloys_from_config(self.custom_alloys)


def validation_message(exc: ValidationError) -> str:
    """The first error of a pydantic validation as ``field: message, got value``."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    got = err.get("input")
    got = f", got {got!r}" if isinstance(got, (int, float, str)) and len(repr(got)) < 80 else ""
    return f"{loc}: {err['msg'].removeprefix('Value error, ')}{got}"


def _read_yaml(rig_yaml: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(rig_yaml).read_text()) or {}
    except OSError as exc:
        raise ImportUsageError(f"{rig_yaml}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ImportUsageError(f"{rig_yaml}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise ImportUsageError(
            f"{rig_yaml}: expected a mapping (rig: {{kvp: [50], wedge_mm: 50}}, thickness_mm, "
            f"dark_level, flat_level, custom_alloys), got {type(raw).__name__}"
        )
    return raw


def load_settings(rig_yaml: Path | None = None, **overrides: Any) -> ImportSettings:
    """The YAML (if any) with the options that were given on top. ``kvp``, ``wedge_mm``, ``dose``,
    ``pixel_size_mm`` (and any other sidecar rig field) go to ``rig``; ``thickness_mm``, ``dark_level``,
    ``flat_level``, ``custom_alloys`` and ``allow_8bit`` stay top-level. Errors name the file (or "options")
    and field."""
    raw = _read_yaml(rig_yaml) if rig_yaml is not None else {}
    top = set(ImportSettings.model_fields) - {"rig"}
    given = {k: v for k, v in overrides.items() if v is not None}
    where = str(rig_yaml) if rig_yaml else "options"
    try:
        settings = ImportSettings.model_validate(raw)
        rig = {**settings.rig, **{k: v for k, v in given.items() if k not in top}}
        alloys = {**settings.custom_alloys, **given.pop("custom_alloys", {})}
        settings = ImportSettings.model_validate(
            {
                **settings.model_dump(),
                "rig": rig,
                "custom_alloys": alloys,
                **{k: v for k, v in given.items() if k in top},
            }
        )
        # every rig field given must be valid already; kvp and wedge_mm may still come per file (CSV)
        RigInfo.model_validate({"kvp": [1.0], "wedge_mm": 1.0, **settings.rig})
    except ValidationError as exc:
        field = validation_message(exc)
        if exc.title == "RigInfo":
            field = "rig." + field
        raise ImportUsageError(f"{where}: {field}") from None
    try:
        settings.alloy_table()
    except ValueError as exc:
        raise ImportUsageError(f"{where}: custom_alloys: {exc}") from None
    return settings


def defaulted_rig_fields(given: set[str]) -> dict[str, Any]:
    """The sidecar rig fields an import fills from RigInfo's defaults because nobody gave them (listed in the
    import's summary, so a lab sees what it did not set)."""
    out = {}
    for name, f in RigInfo.model_fields.items():
        if name in given or name in REQUIRED_RIG or f.is_required():
            continue
        out[name] = f.default
    return out
