"""`alloynet import`: turn the layouts labs actually have into captures + sidecars in a capture store.

Two layouts (paths relative to ROOT; image files are .tif, .tiff or .png, any case):

    ImageFolder   ROOT/[train|val|test/]CLASS/[any sub-folders/]*.tif
                  CLASS is an alloy: ``Al1050`` or ``1050`` (any case), or an alloy added by config.
    labels CSV    a CSV with columns ``file, alloy`` and optionally ``thickness_mm, plate_id, wedge_mm, kvp,
                  dark, flat, role``; ``file`` is relative to ROOT. Every other image under ROOT is reported.

Reference captures for `alloynet rig fit` sit beside the plates in ``ROOT/reference/`` (dark/, flat/ or
open/, wedge-<mm>mm/, <alloy>-<mm>mm/) or are CSV rows with a ``role``: see ``importing.references``.

Rig settings (``kvp``, ``wedge_mm``, ``dose``, ``pixel_size_mm``, any sidecar ``rig`` field) come from a YAML
file and/or options; CSV columns override them per file. A multi-page TIFF holds one page per kVp. Fields
nobody gave take the sidecar's defaults, listed in the import's summary.

Calibration, for dark and for flat separately, first found wins:
  1. the CSV row's ``dark`` / ``flat``: a level (``1000`` or ``1000;980`` per channel) or a frame file
     relative to ROOT;
  2. a frame file ``dark.tif|tiff|png`` / ``flat.…`` in the image's own folder, else its parent, up to ROOT
     (the nearest folder wins: a session folder's frames beat the root's);
  3. the levels given as options or in the YAML (``dark_level``, ``flat_level``: one value per channel);
  4. the reference sessions' frames (ROOT/reference/dark, flat), the k-th capture of a plate the k-th
     session's; for reference plates these come before the levels (they were taken in those sessions).
A frame's level is its mean per channel without dead (0) and saturated pixels, as the simulator computes it;
frames are stored beside the captures as ``calibration/<session>/dark.png|tiff``, the session id derived
from the frames' and levels' content.

8-bit images are refused unless ``allow_8bit`` (``--allow-8bit``); then their pixels are kept as they are (not
rescaled, so levels given in the file's units stay valid) and the sidecar records ``rig.bit_depth: 8``. JPEG
and other lossy or foreign formats are refused, named; files that are not images (a labels CSV, notes) are
skipped and listed.

Capture ids derive from the source path relative to ROOT and the file's sha256 (``imp-<path>-<hash>``), so a
re-run writes nothing new and reports the captures as already present, and a changed file becomes a new
capture beside the old one: nothing stored is ever overwritten (writes go through ``store_capture``).
A file already imported under other labels or settings is rejected as a conflict; the stored one is kept.

Every file that cannot be imported is in ``ImportResult.rejected`` with its problem, its particulars and what
fixes it; ``report.problem_lines`` groups them, one line per distinct problem. All images of one import must
share one size: the most common one is taken, the others are rejected. The split folder is recorded in the
sidecar's ``source`` (``import train/Al1050/a.tif``) and returned in ``ImportResult.splits`` for the manifest.
"""

from alloynet.captures.importing.frames import frame_level, probe_size, read_source_image
from alloynet.captures.importing.plan import Reject, SourceFile, resolve_alloy
from alloynet.captures.importing.report import note_lines, problem_lines
from alloynet.captures.importing.run import REFERENCE_SOURCE, ImportResult, capture_id_for, run_import
from alloynet.captures.importing.settings import ImportSettings, ImportUsageError, load_settings

__all__ = [
    "REFERENCE_SOURCE",
    "ImportResult",
    "ImportSettings",
    "ImportUsageError",
    "Reject",
    "SourceFile",
    "capture_id_for",
    "frame_level",
    "load_settings",
    "note_lines",
    "probe_size",
    "problem_lines",
    "read_source_image",
    "resolve_alloy",
    "run_import",
]
