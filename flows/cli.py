"""`alloynet demo`: the whole nightly pipeline once, on the embedded default (local stores, CPU, in-process).

Simulates a small long-tailed data set into a local "rig upload" store, then runs the Prefect ``nightly``
flow in Prefect's ephemeral mode (no server to start): ingest -> retrain -> evaluate -> promote, with
export and packaging of the winner. Prints where the report, the registry entry and the packages are.
Run it again and it is the next night: nothing new arrived, so the champion stays.

alloynet/ does not depend on Prefect: ``flows`` is imported inside the command, the one bridge.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from alloynet import settings

# The top-level commands register() adds: alloynet.cli reads this literal from the source, without running
# this module, to register only the plugin a command needs (see its docstring).
COMMANDS = ("demo", "study-pool")

REPO = Path(__file__).resolve().parents[1]


# Prefect's lines about its in-process server: how to run a dedicated one, and that it stops at exit
PREFECT_SERVER_CHATTER = ("Starting temporary server", "Stopping temporary server")


def _quiet_prefect_console() -> None:
    """One copy of every line, and the demo's own last lines last: the library's lines (the trainer's epoch line)
    are printed by its console and also logged for the Prefect UI; Prefect's console handler on the root logger
    would print them a second time. Prefect's lines about its temporary server (a pointer to its docs on start,
    "Stopping temporary server" at exit, after the demo's next steps) are left out."""
    logging.getLogger("alloynet").propagate = False  # the UI handler sits on "alloynet" itself: the UI keeps them
    logging.getLogger("prefect").addFilter(lambda r: not r.getMessage().startswith(PREFECT_SERVER_CHATTER))


def alloynet_command() -> str:
    """How the user can type this program: ``alloynet`` when that name on PATH is this program, else the path it
    was started by (``.venv/bin/alloynet`` after `make demo`, whose venv is not activated)."""
    import shutil
    import sys

    exe = Path(sys.argv[0])
    on_path = shutil.which("alloynet")
    if exe.name != "alloynet" or (on_path is not None and Path(on_path).resolve() == exe.resolve()):
        return "alloynet"
    try:
        return str(exe.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(exe.resolve())


def next_steps(home: Path, alloynet: str = "alloynet") -> list[str]:
    """What a user runs after the demo in ``home``: serve the champion, ask it about a capture, stop."""
    registry = home / "registry"
    same = registry.resolve() == Path(settings.registry()).resolve()
    serve = "make serve" if same else f"make serve ALLOYNET_REGISTRY={registry}"
    capture = next(iter(sorted((home / "rig" / "captures").glob("*.png"))), None)  # not a calibration frame
    return [
        f"{serve}    # Triton on 127.0.0.1:8001 serving the champion (PORT=... picks another port)",
        f"{alloynet} infer {capture or '<capture.png>'}    # one line per capture: alloy, set, group",
        f"{alloynet} serve stop",
    ]


def ingest_line(res: dict) -> str:
    """The night's ingest in one line, with why retrain's "new labelled" count differs from ingest's "new"."""
    new, split = len(res["ingest"]["new"]), res.get("new_by_split") or {}
    parts = f"{split.get('train', 0) + split.get('val', 0)} training/validation, {split.get('test', 0)} test"
    parts += f", {split.get('unlabelled', 0)} unlabelled"
    return (
        f"ingest: {new} new" + (f" ({parts})" if split else "") + f", {len(res['quarantined'])} quarantined; "
        f"retrain: {res['retrain']}"
    )


def demo(
    out: Path = typer.Option(
        Path(settings.home()),
        help="working directory for the demo: $ALLOYNET_HOME, else ./demo-data",
    ),
    seed: int = typer.Option(0, help="seed of the simulated data set and of training"),
    size: int = typer.Option(64, help="image height = width in pixels"),
    n_max: int = typer.Option(150, help="head-class plates (the tail gets n_max / imbalance ratio)"),
    imbalance_ratio: float = typer.Option(10.0, help="long-tail profile of the simulated captures"),
    config: Path = typer.Option(
        REPO / "configs" / "demo.yaml", "--config", "-c", help="training config of the candidate"
    ),
    force_retrain: bool = typer.Option(False, help="retrain even if no new captures arrived"),
    simulate_only: bool = typer.Option(False, help="only simulate the data set and print its summary"),
) -> None:
    """Simulate a small data set and run the nightly flow once on it (CPU, in-process)."""
    from alloynet.captures.stores import LocalStore
    from alloynet.commands.data_cli import console, print_summary, progress_bar
    from alloynet.data.manifest import build_manifest
    from alloynet.data.simulate import DatasetSpec, simulate_dataset
    from alloynet.physics.simulator import RigConfig

    out = out.resolve()
    rig = LocalStore(out / "rig")
    spec = DatasetSpec(n_max=n_max, imbalance_ratio=imbalance_ratio, seed=seed, rig=RigConfig(height=size, width=size))
    if any(rig.list("captures/")):
        console.print(f"rig store {rig.root} already has captures: tonight nothing new arrives")
    else:
        total = sum(spec.plates_per_class().values()) * spec.captures_per_plate
        with progress_bar() as bar:
            task = bar.add_task("simulate", total=total)
            simulate_dataset(spec, rig, progress=lambda done, _: bar.update(task, completed=done))
    print_summary(build_manifest(rig, seed=seed))
    if simulate_only:
        return

    os.environ.setdefault("PREFECT_HOME", str(out / "prefect-home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # the in-process server gets 20 s to start by default: too little on a busy machine (seen failing there)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    _quiet_prefect_console()
    console.print("running the nightly flow in-process (Prefect's temporary server); its log follows", markup=False)
    from alloynet.registry import open_registry
    from alloynet.steps import Candidate
    from flows.nightly import nightly
    from flows.packaging import available_formats

    formats = available_formats()
    candidate = Candidate(
        name="profile-mlp",
        config=str(config) if config.exists() else None,
        overrides={} if config.exists() else {"epochs": 10},
    )
    state = nightly(
        source=str(rig.root),
        data_dir=str(out / "data"),
        registry=str(out / "registry"),
        work_dir=str(out / "runs"),
        candidates=[candidate],
        min_new_labelled=1,
        force_retrain=force_retrain,
        formats=formats,
        device="cpu",
        seed=seed,
        return_state=True,
    )
    if not state.is_completed():
        console.print(f"[red]nightly flow {state.name}:[/] {state.message}")
        raise typer.Exit(1)
    res = state.result()
    alloynet = alloynet_command()
    reg = open_registry(out / "registry")
    p = reg.pointer()
    console.print("\n" + ingest_line(res), markup=False, highlight=False)
    if res.get("decision"):
        console.print(f"[bold]decision[/]: {' '.join(res['decision']['reasons'])}")
    for name, d in (res.get("report_dirs") or {}).items():
        console.print(f"report ({name}): {Path(d) / 'report.md'}")
    if p:
        mv = reg.get(p.version)
        ceiling = mv.metrics.get("ceiling_accuracy")
        default = (out / "registry").resolve() == Path(settings.registry()).resolve()
        console.print(
            f"registry: {reg.uri} champion [bold]{p.version}[/] "
            f"(balanced accuracy {mv.metrics.get('balanced_accuracy', float('nan')):.3f}"
            + (f", physics bracket from {ceiling:.3f}" if ceiling is not None else "")
            + "); "
            + (f"`{alloynet} registry list`" if default else f"`{alloynet} registry list -r {out / 'registry'}`")
        )
        for fmt in ("export", *formats):
            if any(k.startswith(fmt + "/") for k in mv.artifacts):
                console.print(f"  {fmt}: {reg.artifact_path(p.version, fmt)}")
    else:
        console.print("registry: no champion yet")
        return
    console.print("\n[bold]next[/]:")
    for line in next_steps(out, alloynet):
        console.print(f"  {line}", markup=False, highlight=False)


def study_pool(
    config: Path = typer.Option(Path("configs/study.yaml"), "--config", "-c", help="study YAML (grid, data, training)"),
    deployment: str = typer.Option("study-cell/one-cell-cpu", help="the deployment that computes one cell"),
    attempts: int = typer.Option(2, help="runs per cell when its process or worker dies"),
    threads: int | None = typer.Option(
        None, help="OMP_NUM_THREADS of every cell (default: the deployment's, 1 for study-cell/one-cell-cpu)"
    ),
    out_dir: str | None = typer.Option(None, help="tables, plots and reports [default: the config's out_dir]"),
    work_dir: str | None = typer.Option(None, help="the cache of runs [default: the config's work_dir]"),
    timeout: float | None = typer.Option(
        None, help="seconds before unfinished cells are cancelled [default: no limit]"
    ),
) -> None:
    """The study with every cell as a flow run on a work pool (N workers, N cells at once); same tables as
    `alloynet study`, which shares its cache. Needs a Prefect server with the deployment and workers:
    `python -m infra.stack up --workers 2 && python -m infra.stack deploy` (infra/README.md)."""
    from alloynet.commands.data_cli import console
    from flows.study import StudyIncomplete, study

    if not os.environ.get("PREFECT_API_URL"):
        console.print(
            "PREFECT_API_URL is not set: point this shell at a Prefect server with workers "
            "(source .alloynet/stack/env.sh after python -m infra.stack up --workers 2)"
        )
        raise typer.Exit(2)
    jv = {"env": {"OMP_NUM_THREADS": str(threads)}} if threads else None
    try:
        res = study(str(config.resolve()), deployment, attempts, jv, out_dir, work_dir, timeout_s=timeout)
    except StudyIncomplete as e:
        console.print(f"study incomplete: {e}")
        raise typer.Exit(1) from None
    console.print(f"{res['finished']} of {res['cells']} cells; tables in {res['out_dir']}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
    app.command(name="study-pool")(study_pool)
