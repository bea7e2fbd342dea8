"""`alloynet registry ...`: list, inspect, verify, publish, promote and roll back model versions.

The registry is ``--registry``, else ``$ALLOYNET_REGISTRY``, else ``$ALLOYNET_HOME/registry`` (alloynet.settings).
Only ``publish`` creates a local registry directory; every other command, given a directory that does not exist,
says where it looked and exits 1 (an existing but empty registry is not an error: exit 0).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import typer
from rich.table import Table

from alloynet.console import make_console, printable

console = make_console()


class _Typer(typer.Typer):
    """Every command registered here turns a store failure (unreachable, refused) into one line and exit 1."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def deco(fn):
            @functools.wraps(fn)
            def one_line_errors(*a, **kw):
                from alloynet.captures.stores import StoreError

                try:
                    return fn(*a, **kw)
                except StoreError as exc:
                    _fail(exc)

            register(one_line_errors)
            return fn

        return deco


registry_app = _Typer(no_args_is_help=True)

RegistryOpt = typer.Option(
    None,
    "--registry",
    "-r",
    help="model store: a directory or s3://bucket/prefix (default $ALLOYNET_REGISTRY, else "
    "$ALLOYNET_HOME/registry; ALLOYNET_HOME defaults to ./demo-data)",
)
ModelOpt = typer.Option("alloynet", "--model", help="model name inside the store")


def _open(registry: str | None, model: str, create: bool = False):
    """The registry; a local directory that does not exist is created only when ``create`` (publishing)."""
    from alloynet import settings
    from alloynet.registry import open_registry

    uri = registry or settings.registry()
    if not create and "://" not in str(uri) and not Path(uri).is_dir():
        console.print(
            f"no registry at {printable(Path(uri).resolve())} (looked there: --registry, "
            f"$ALLOYNET_REGISTRY or $ALLOYNET_HOME picks another; `make demo` writes one)",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(1)
    return open_registry(uri, model)


def _fail(exc: Exception) -> None:
    console.print(f"error: {printable(' '.join(str(exc).split()))}", markup=False, highlight=False)
    raise typer.Exit(1)


@registry_app.command("list")
def list_cmd(registry: str | None = RegistryOpt, model: str = ModelOpt) -> None:
    """Published versions, with the champion and rollback targets marked."""
    reg = _open(registry, model)
    p = reg.pointer()
    versions = reg.versions()
    if not versions:
        console.print(
            f"no versions in {reg.uri} (model {model!r}); `alloynet registry publish` or `make demo` adds one",
            markup=False,
            highlight=False,
        )
    t = Table(title=f"{reg.uri}")
    for c in ("version", "created (UTC)", "balanced acc.", "macro F1", "thickness MAE mm", "parent", "role"):
        t.add_column(c)
    for v in versions:
        role = "champion" if p and v.version == p.version else ("previous" if p and v.version in p.previous else "")
        m = v.metrics
        fmt = lambda k, m=m: f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "-"  # noqa: E731
        t.add_row(
            v.version,
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            fmt("balanced_accuracy"),
            fmt("macro_f1"),
            fmt("thickness_mae_mm"),
            v.parent or "-",
            role,
        )
    if versions:
        console.print(t)
    for version, idle in reg.unfinished().items():
        console.print(
            f"{version}: unfinished publication (last write {idle:.0f} s ago); "
            f"remove it with `alloynet registry discard {version}` or `alloynet registry clean`",
            markup=False,
            highlight=False,
        )


@registry_app.command("show")
def show_cmd(version: str, registry: str | None = RegistryOpt, model: str = ModelOpt) -> None:
    """A version's metadata as JSON (metrics, config, manifest hash, artifact hashes)."""
    from alloynet.registry import RegistryError

    try:
        typer.echo(_open(registry, model).get(version).model_dump_json(indent=1))
    except RegistryError as exc:
        _fail(exc)


@registry_app.command("champion")
def champion_cmd(registry: str | None = RegistryOpt, model: str = ModelOpt) -> None:
    """The champion pointer (current version and rollback targets)."""
    reg = _open(registry, model)
    p = reg.pointer()
    if p is None:
        console.print(f"no champion yet in {reg.uri}", markup=False, highlight=False)
        raise typer.Exit(1)
    typer.echo(p.model_dump_json(indent=1))


@registry_app.command("verify")
def verify_cmd(
    version: str | None = typer.Argument(None, help="default: the champion"),
    registry: str | None = RegistryOpt,
    model: str = ModelOpt,
) -> None:
    """Check every artifact of a version against its recorded sha256."""
    from alloynet.registry import RegistryError

    reg = _open(registry, model)
    try:
        version = version or (reg.pointer() or _no_champion()).version
        mv = reg.verify(version)
    except RegistryError as exc:
        _fail(exc)
    console.print(f"{version}: {len(mv.artifacts)} artifacts verified")


def _no_champion():
    from alloynet.registry import RegistryError

    raise RegistryError("no champion yet")


@registry_app.command("publish")
def publish_cmd(
    directory: Path = typer.Argument(..., exists=True, file_okay=False),
    metrics: Path | None = typer.Option(None, help="JSON file of evaluation metrics [default: none recorded]"),
    manifest_hash: str | None = typer.Option(
        None, help="hash of the manifest the model was trained on, recorded with the version [default: none recorded]"
    ),
    registry: str | None = RegistryOpt,
    model: str = ModelOpt,
) -> None:
    """Publish every file under DIRECTORY as a new version (the champion is not changed)."""
    reg = _open(registry, model, create=True)
    m = json.loads(metrics.read_text()) if metrics else {}
    mv = reg.publish(directory, metrics=m, manifest_hash=manifest_hash, info={"published_by": "cli"})
    console.print(f"published {mv.version} ({len(mv.artifacts)} artifacts)")


ServeToOpt = typer.Option(
    None,
    "--serve-to",
    help="also publish the champion's Triton repository here (e.g. s3://alloynet-models/serving/triton) "
    "[default: not published]",
)


def _publish_serving(reg, serve_to: str | None) -> None:
    if serve_to:
        from alloynet.captures.stores import open_store
        from alloynet.registry.publish import publish_triton

        m = publish_triton(reg, open_store(serve_to))
        console.print(f"Triton repository of {m['version']} published to {serve_to} as model version {m['generation']}")


@registry_app.command("promote")
def promote_cmd(
    version: str,
    reason: str = typer.Option("manual promotion", help="recorded in the audit log"),
    registry: str | None = RegistryOpt,
    model: str = ModelOpt,
) -> None:
    """Make VERSION the champion by hand (after verifying its artifacts)."""
    from alloynet.registry import RegistryError

    try:
        p = _open(registry, model).promote(version, reason)
    except RegistryError as exc:
        _fail(exc)
    console.print(f"champion: {p.version} (previous: {', '.join(p.previous) or 'none'})")


@registry_app.command("rollback")
def rollback_cmd(
    to: str | None = typer.Option(None, help="an earlier champion; default: the previous one"),
    reason: str = typer.Option("manual rollback", help="recorded in the audit log"),
    serve_to: str | None = ServeToOpt,
    registry: str | None = RegistryOpt,
    model: str = ModelOpt,
) -> None:
    """Restore the previous champion (its artifacts are verified first)."""
    from alloynet.registry import RegistryError

    reg = _open(registry, model)
    before = reg.pointer()
    try:
        p = reg.rollback(reason, to=to)
    except RegistryError as exc:
        _fail(exc)
    console.print(f"champion: {p.version} (rolled back from {before.version})")
    _publish_serving(reg, serve_to)


@registry_app.command("publish-serving")
def publish_serving_cmd(
    target: str = typer.Argument(..., help="store URI Triton reads its model repository from"),
    keep: int = typer.Option(2, help="Triton model versions to keep"),
    registry: str | None = RegistryOpt,
    model: str = ModelOpt,
) -> None:
    """Publish the champion's (verified) Triton repository where the serving fleet reads it."""
    from alloynet.captures.stores import open_store
    from alloynet.registry import RegistryError
    from alloynet.registry.publish import publish_triton

    try:
        m = publish_triton(_open(registry, model), open_store(target), keep=keep)
    except RegistryError as exc:
        _fail(exc)
    console.print(
        f"{m['version']} published to {target} as Triton model version {m['generation']} ({', '.join(m['models'])})"
    )


@registry_app.command("fetch")
def fetch_cmd(
    version: str,
    dest: Path,
    only: list[str] | None = typer.Option(
        None, help="only artifacts under this path prefix, repeatable [default: every artifact]"
    ),
    registry: str | None = RegistryOpt,
    model: str = ModelOpt,
) -> None:
    """Download a version's artifacts (verified) into DEST."""
    from alloynet.registry import RegistryError

    reg = _open(registry, model)
    try:
        version = reg.pointer().version if version == "champion" and reg.pointer() else version
        reg.fetch(version, dest, only=only or None)
    except RegistryError as exc:
        _fail(exc)
    console.print(f"{version} -> {dest}")


@registry_app.command("discard")
def discard_cmd(
    version: str,
    reason: str = typer.Option(..., help="recorded in the audit log"),
    force: bool = typer.Option(
        False, help="also an unfinished version written to in the last 10 minutes (its publisher may still be running)"
    ),
    registry: str | None = RegistryOpt,
    model: str = ModelOpt,
) -> None:
    """Delete a version that never served (published or half-published); never the champion or a rollback target."""
    from alloynet.registry import RegistryError

    reg = _open(registry, model)
    if version not in {v.version for v in reg.versions()} and version not in reg.unfinished():
        _fail(RegistryError(f"{reg.uri}: no version {version}, published or unfinished"))
    try:
        reg.discard(version, reason, force=force)
    except RegistryError as exc:
        _fail(exc)
    console.print(f"discarded {version}", markup=False)


@registry_app.command("clean")
def clean_cmd(
    older_than: float = typer.Option(
        3600.0, help="seconds without a write before a temp file or an unfinished version counts as abandoned"
    ),
    registry: str | None = RegistryOpt,
    model: str = ModelOpt,
) -> None:
    """Remove what killed publishers left: temp files and unfinished versions idle for OLDER_THAN seconds."""
    done = _open(registry, model).clean(older_than)
    for v in done["discarded"]:
        console.print(f"discarded unfinished {v}", markup=False)
    console.print(
        f"{len(done['temp_files'])} temp file(s) removed, {len(done['discarded'])} unfinished version(s) discarded",
        markup=False,
    )


@registry_app.command("history")
def history_cmd(registry: str | None = RegistryOpt, model: str = ModelOpt) -> None:
    """The audit log: promotions, rollbacks and discarded versions, with reasons."""
    reg = _open(registry, model)
    events = reg.events()
    if not events:
        console.print(f"no events in {reg.uri} (model {model!r})", markup=False, highlight=False)
    for e in events:
        extra = f" (replaced {e['replaced']})" if e.get("replaced") else ""
        gen = f"g{e['generation']:<5} " if e.get("generation") is not None else " " * 7
        typer.echo(printable(f"{e['at']}  {gen}{e['action']:<8} {e['version'] or '-'}{extra}: {e['reason']}"))


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry", help="Model store: versions, champion, promotion, rollback.")
