"""`alloynet simulate`, `alloynet ingest` and `alloynet data ...`."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from alloynet.console import make_console, printable

console = make_console()
data_app = typer.Typer(no_args_is_help=True)

EXIT_BUSY = 75  # EX_TEMPFAIL: another writer holds the destination; try again later


def _fail(exc: BaseException, code: int = 1) -> None:
    """One plain line, no traceback: store outages, a busy destination, bad URIs."""
    console.print(f"error: {printable(' '.join(str(exc).split()))}", markup=False, highlight=False)
    raise typer.Exit(code)


def missing_local_store(store: str) -> Path | None:
    """The absolute path of ``store`` when it is a local directory that does not exist, else None. Commands that
    read a store check this first: opening a local store creates its directory, and a read command creates
    nothing, it says where it looked."""
    local = store.removeprefix("file://") if store.startswith("file://") or "://" not in store else None
    return Path(local).resolve() if local is not None and not Path(local).is_dir() else None


def require_store(store: str, what: str = "capture store") -> None:
    missing = missing_local_store(store)
    if missing is not None:
        _fail(f"no {what} at {missing} (no such directory)")


SizeOpt = typer.Option(
    None, "--accept-size", help="accepted image size HxW (repeatable); default: the standard sizes 64x64 to 512x512"
)


def _sizes(values: list[str] | None):
    if not values:
        return None
    try:
        return {tuple(int(x) for x in v.lower().split("x", 1)) for v in values}
    except ValueError:
        raise typer.BadParameter(f"--accept-size takes HxW, e.g. 64x64; got {values}") from None


WaitOpt = typer.Option(
    0.0,
    help="seconds to wait for another writer of the destination (ingest, manifest) "
    f"before giving up with exit code {EXIT_BUSY}",
)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.show_progress,
    )


def print_summary(df) -> None:
    from alloynet.data.manifest import summary

    s = summary(df)
    table = Table(title=f"{len(df)} captures, {df.plate_id.nunique()} plates")
    table.add_column("alloy")
    for c in s.columns:
        table.add_column(str(c), justify="right")
    for alloy, row in s.iterrows():
        table.add_row(str(alloy), *[str(int(v)) for v in row])
    console.print(table)


# What `simulate` does without a config or an option: DatasetSpec's defaults, stated in its --help
# (tests/unit/commands/test_help.py holds them to DatasetSpec, which stays unimported until a command runs).
SIMULATE_DEFAULTS = {"n_max": 60, "imbalance_ratio": 100.0, "imbalance": "exponential", "size": 256, "seed": 0}


def simulate(
    out: str = typer.Option(..., help="capture store: a directory or s3://bucket/prefix"),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML with DatasetSpec fields (rig: {...} nested); the options below override it [default: none]",
    ),
    n_max: int | None = typer.Option(
        None, help=f"plates of the most frequent alloy [default: the config's, else {SIMULATE_DEFAULTS['n_max']}]"
    ),
    imbalance_ratio: float | None = typer.Option(
        None,
        help="head / tail plates: the rarest alloy gets n_max / ratio "
        f"[default: the config's, else {SIMULATE_DEFAULTS['imbalance_ratio']:g}]",
    ),
    imbalance: str | None = typer.Option(
        None,
        help="shape of the class counts, head to tail: exponential | step | balanced "
        f"[default: the config's, else {SIMULATE_DEFAULTS['imbalance']}]",
    ),
    old_imbalance: str | None = typer.Option(
        None, "--profile", hidden=True, help="the old name of --imbalance, read in this release"
    ),
    size: int | None = typer.Option(
        None, help=f"image height = width in pixels [default: the config's, else {SIMULATE_DEFAULTS['size']}]"
    ),
    seed: int | None = typer.Option(
        None,
        help="seed of the simulation and of the manifest's splits "
        f"[default: the config's, else {SIMULATE_DEFAULTS['seed']}]",
    ),
    manifest: bool = typer.Option(True, help="write manifest.csv beside a local store"),
    rig_profile: Path | None = typer.Option(
        None,
        help="a rig profile (alloynet rig fit): simulate the fitted rig instead of the nominal one "
        "[default: the nominal rig]",
    ),
) -> None:
    """Simulate a long-tailed data set into a capture store and print its summary."""
    from alloynet.captures.stores import LocalStore, open_store
    from alloynet.data.manifest import build_manifest, manifest_path, write_manifest
    from alloynet.data.simulate import DatasetSpec, renamed_imbalance_key, simulate_dataset

    if old_imbalance is not None:
        if imbalance is not None and imbalance != old_imbalance:
            _fail(
                ValueError(
                    f"--imbalance {imbalance} and --profile {old_imbalance}: --profile is the old name of "
                    "--imbalance; give --imbalance only"
                ),
                2,
            )
        typer.echo("note: --profile is renamed --imbalance; --profile is still read in this release", err=True)
        imbalance = old_imbalance
    raw = yaml.safe_load(config.read_text()) if config else {}
    try:  # the config's old key first, so that an option still overrides it
        raw = renamed_imbalance_key(raw, where=str(config))
    except ValueError as exc:
        _fail(ValueError(f"{config}: {exc}"), 2)
    over = {
        k: v
        for k, v in dict(n_max=n_max, imbalance_ratio=imbalance_ratio, imbalance=imbalance, seed=seed).items()
        if v is not None
    }
    raw.update(over)
    if size:
        raw.setdefault("rig", {}).update(height=size, width=size)
    if rig_profile is not None:
        raw["rig_profile"] = str(rig_profile)
    spec = DatasetSpec.model_validate(raw)
    if spec.rig_profile:
        from alloynet.physics.rig_profile import load_rig_profile

        try:  # refused before anything is written: a profile of another rig setting or image size
            prof = load_rig_profile(spec.rig_profile)
            for w in spec.wedges_mm:
                prof.apply(spec.rig.model_copy(update={"wedge_mm": w}))
        except ValueError as exc:
            _fail(exc, 2)
        console.print(f"rig profile: {spec.rig_profile}", markup=False, highlight=False)
    store = open_store(out)
    plan = spec.plates_per_class()
    console.print(
        f"simulating {sum(plan.values()) * spec.captures_per_plate} captures "
        f"({spec.rig.height}x{spec.rig.width}, kVp {spec.rig.kvp}, seed {spec.seed}) into {store.uri}"
    )
    from alloynet.captures.stores import StoreError

    try:
        with progress_bar() as bar:
            task = bar.add_task("simulate", total=sum(plan.values()) * spec.captures_per_plate)
            simulate_dataset(spec, store, progress=lambda done, total: bar.update(task, completed=done))
        df = build_manifest(store, seed=spec.seed)
    except StoreError as exc:
        _fail(exc)
    if manifest and isinstance(store, LocalStore):
        path = manifest_path(store)
        write_manifest(df, path)
        console.print(f"manifest: {path}")
    print_summary(df)


def _print_result(res) -> None:
    console.print(res.summary(), markup=False)
    for key, why in res.quarantined.items():
        console.print(f"quarantined {printable(key)}: {printable(why)}", markup=False, highlight=False)
    for folder in res.released:
        console.print(f"released {printable(folder)}", markup=False, highlight=False)
    for key in res.orphans:
        console.print(f"orphan image {printable(key)}: no sidecar", markup=False, highlight=False)


def ingest(
    source: str = typer.Argument(..., help="capture store to pull from (s3://bucket/prefix or a directory)"),
    dest: str | None = typer.Argument(None, help="local data directory [default: $ALLOYNET_HOME/data]"),
    seed: int = typer.Option(0, help="seed of the manifest's split assignment of new plates"),
    wait: float = WaitOpt,
    retry_quarantined: bool = typer.Option(
        False, "--retry-quarantined", help="also retry every quarantined capture of SOURCE"
    ),
    orphan_grace: float = typer.Option(
        3600.0, help="seconds an image may wait for its sidecar before it is reported as an orphan"
    ),
    accept_size: list[str] | None = SizeOpt,
) -> None:
    """Pull new captures (since the watermark), verify, quarantine bad ones, update the manifest."""
    from alloynet import settings
    from alloynet.captures.stores import LocalStore, StoreError, WriterBusy, open_store
    from alloynet.data.manifest import ingest_and_refresh

    dest = dest or settings.data_dir()
    try:
        src = open_store(source)
    except ValueError as exc:  # a malformed store URI
        _fail(exc)
    try:
        res, df, changed = ingest_and_refresh(
            src,
            LocalStore(dest),
            seed,
            accepted_sizes=_sizes(accept_size),
            wait=wait,
            retry_quarantined=retry_quarantined,
            orphan_grace_s=orphan_grace,
        )
    except WriterBusy as exc:
        _fail(exc, EXIT_BUSY)
    except StoreError as exc:
        _fail(f"{exc}; ingest stopped, nothing stored was lost and the next run resumes there")
    except OSError as exc:  # the destination's disk: full, read-only, gone
        _fail(f"{dest}: {exc}; ingest stopped, nothing stored was lost and the next run resumes there")
    _print_result(res)
    console.print(f"manifest: {len(df)} captures ({'updated' if changed else 'unchanged'})", markup=False)


@data_app.command("manifest")
def manifest_cmd(
    store: str = typer.Argument(..., help="local capture store (directory)"),
    seed: int = typer.Option(0, help="seed of the split assignment of new plates"),
    out: Path | None = typer.Option(None, help="manifest CSV to write [default: manifest.csv in the store]"),
    wait: float = WaitOpt,
) -> None:
    """(Re)build the manifest of a local store, keeping existing split assignments frozen."""
    from alloynet.captures.stores import LocalStore, WriterBusy
    from alloynet.data.manifest import refresh_manifest

    require_store(store)
    try:
        df, _ = refresh_manifest(LocalStore(store), seed, out, wait=wait)
    except WriterBusy as exc:
        _fail(exc, EXIT_BUSY)
    print_summary(df)


@data_app.command("quarantine")
def quarantine_cmd(
    store: str = typer.Argument(..., help="the data directory (ingest's destination)"),
    retry: bool = typer.Option(
        False, "--retry", help="try every quarantined capture again; those whose problem is gone leave the quarantine"
    ),
    source: str | None = typer.Option(
        None, help="capture store to retry from (default: the one each entry was quarantined from)"
    ),
    seed: int = typer.Option(0, help="seed of the split assignment of released plates"),
    wait: float = WaitOpt,
    accept_size: list[str] | None = SizeOpt,
) -> None:
    """The quarantine as it is now: each entry's reason, since when, and how many attempts failed."""
    from alloynet.captures.ingest import retry_quarantined
    from alloynet.captures.layout import list_quarantine
    from alloynet.captures.stores import LocalStore, StoreError, WriterBusy, open_store, writer_lock
    from alloynet.data.manifest import refresh_manifest

    require_store(store, "data directory")
    try:
        st = open_store(store)
        if retry:
            uris = [source] if source else sorted({r["source_uri"] for r in list_quarantine(st) if r.get("source_uri")})
            sources = [open_store(u) for u in uris]
            with writer_lock(st, "quarantine retry", wait):
                for src in sources:
                    _print_result(retry_quarantined(src, st, accepted_sizes=_sizes(accept_size), lock=False))
                if isinstance(st, LocalStore):
                    df, changed = refresh_manifest(st, seed, lock=False)
                    console.print(
                        f"manifest: {len(df)} captures ({'updated' if changed else 'unchanged'})", markup=False
                    )
        rows = list_quarantine(st)
    except WriterBusy as exc:
        _fail(exc, EXIT_BUSY)
    except StoreError as exc:
        _fail(exc)
    except ValueError as exc:  # a malformed store URI (only open_store raises it here)
        _fail(exc)
    for r in rows:
        since = f" (since {r['quarantined_at']}, {r.get('attempts', 1)} attempt(s))" if "quarantined_at" in r else ""
        console.print(printable(f"{r['folder']}: {r['reason']}{since}"), markup=False, highlight=False)
    console.print(f"{len(rows)} quarantined")


@data_app.command("summary")
def summary_cmd(manifest: Path = typer.Argument(..., help="a manifest.csv")) -> None:
    """Captures per alloy and split."""
    from alloynet.data.manifest import read_manifest

    try:
        df = read_manifest(manifest)
    except FileNotFoundError as exc:
        _fail(exc)
    print_summary(df)


@data_app.command("relabel")
def relabel_cmd(
    store: str = typer.Argument(..., help="the data directory (ingest's destination)"),
    corrections: Path = typer.Argument(
        ...,
        help="CSV with the header capture_id,field,value,who,why; "
        "field: alloy, plate_id, nominal_thickness_mm or "
        "thickness_mm",
    ),
    seed: int = typer.Option(0, help="seed of the split assignment when the manifest is rebuilt"),
    wait: float = WaitOpt,
) -> None:
    """Apply label corrections: each changed capture gets a recorded revision (who, why, old and new values),
    its sidecar is rewritten and the manifest rebuilt. Nothing is written if any row is wrong."""
    from alloynet.commands.labels_cli import run_relabel

    run_relabel(store, corrections, seed, wait)


@data_app.command("history")
def history_cmd(
    store: str = typer.Argument(..., help="the data directory"),
    capture_id: str = typer.Argument(..., help="the capture"),
) -> None:
    """A capture's labels now and every recorded revision: when, who, why, each field's old and new value."""
    from alloynet.commands.labels_cli import show_history

    show_history(store, capture_id)


def register(app: typer.Typer) -> None:
    app.command()(simulate)
    app.command()(ingest)
    app.add_typer(data_app, name="data", help="Manifests, summaries, the quarantine and label history.")
