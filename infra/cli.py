"""`alloynet serve start|status|stop|reload`: the registry's champion on supervised model servers.

infra/ drives the processes (infra/serve.py), so its commands live here, registered as a plugin of the
`alloynet.commands` entry-point group (pyproject.toml), like serving/cli.py and flows/cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from alloynet.console import make_console

# The top-level commands register() adds: alloynet.cli reads this literal from the source, without running
# this module, to register only the plugin a command needs (see its docstring).
COMMANDS = ("serve",)

console = make_console()

serve_app = typer.Typer(no_args_is_help=True)
DirOpt = typer.Option(
    None, "--dir", help="state directory (default $ALLOYNET_SERVE_DIR or .alloynet/serve in the checkout)"
)


def _serve_fail(exc: Exception) -> None:
    console.print(f"error: {exc}", markup=False, highlight=False)
    raise typer.Exit(1)


def _print_serving(st: dict) -> None:
    out = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731
    serving, champ = st.get("serving") or {}, st.get("champion") or {}
    if serving:
        out(f"serving {serving['version']} (generation {serving['generation']}) of {st.get('registry')}")
    failed = st.get("failed_swap") or {}
    if failed:
        out(
            f"swap to {failed['version']} (generation {failed['generation']}) failed on {failed.get('server')}: "
            f"{failed['error']}"
        )
    elif champ and serving and champ.get("generation") != serving.get("generation"):
        out(f"champion is {champ['version']} (generation {champ['generation']}): swap pending")
    for name, info in (st.get("servers") or {}).items():
        up = ("" if info.get("supervised", True) else "  UNSUPERVISED") if info.get("up", True) else "  DOWN"
        extra = f"  key file {info['key_file']}" if info.get("key_file") else ""
        if info.get("generation") and serving and info["generation"] != serving.get("generation"):
            extra += f"  (still generation {info['generation']})"
        if "ready" in info and info.get("up", True):
            extra += {True: "  model ready", False: "  MODEL NOT READY", None: "  model readiness unknown"}[
                info["ready"]
            ]
        http = f"  http {info['http']}" if info.get("http") else ""
        out(
            f"  {name:<10} {info.get('url')}  (gRPC {info.get('grpc')}{http}; pid {info.get('pid')}, "
            f"restarts {info.get('restarts', 0)}){extra}{up}"
        )
    if st.get("supervisor_pid"):
        out(f"  supervisor pid {st['supervisor_pid']}, log {Path(st.get('dir', '.')) / 'supervisor.log'}")
    if st.get("env_file") and st.get("status") == "serving":
        out(f"  env file   {st['env_file']}  (`alloynet infer` reads it; `source` it in a shell)")


@serve_app.command("start")
def serve_start(
    registry: str | None = typer.Option(
        None,
        "--registry",
        "-r",
        help="model store whose champion is served "
        "(default $ALLOYNET_REGISTRY, else $ALLOYNET_HOME/registry; "
        "ALLOYNET_HOME defaults to ./demo-data, what `make demo` writes)",
    ),
    model: str = typer.Option("alloynet", help="model name inside the registry"),
    torchserve: bool = typer.Option(False, "--torchserve", help="also serve with TorchServe (archived upstream)"),
    triton_grpc_port: int = typer.Option(8001, help="Triton gRPC port"),
    triton_http_port: int = typer.Option(0, help="Triton HTTP port (0: no HTTP)"),
    torchserve_grpc_port: int = typer.Option(7070, help="TorchServe gRPC inference port"),
    torchserve_http_port: int = typer.Option(8080, help="TorchServe REST inference port"),
    torchserve_grpc_management_port: int = typer.Option(7071, help="TorchServe gRPC management port"),
    torchserve_metrics_port: int = typer.Option(8082, help="TorchServe metrics port"),
    token_expiry_min: float = typer.Option(
        7 * 24 * 60.0,
        help="TorchServe keys expire this many minutes after they are made; renewed when a quarter is left",
    ),
    max_request_mb: float = typer.Option(8.0, help="TorchServe refuses larger requests"),
    poll: float = typer.Option(5.0, help="seconds between reads of the champion pointer"),
    health_every: float = typer.Option(5.0, help="seconds between health probes of each server"),
    hang_after: int = typer.Option(6, help="a server that misses this many probes in a row is restarted"),
    state_dir: Path | None = DirOpt,
) -> None:
    """Serve the registry's champion: Triton (and TorchServe with --torchserve) on fixed ports, supervised
    (restarted on the same ports if it exits), following the champion pointer (promotions and rollbacks
    are loaded without dropping requests). Idempotent: if it already serves, says what."""
    from alloynet import settings
    from infra.serve import ServeConfig, ServeError, start

    cfg = ServeConfig(
        registry=registry or settings.registry(),
        model=model,
        torchserve=torchserve,
        triton_grpc_port=triton_grpc_port,
        triton_http_port=triton_http_port,
        torchserve_grpc_port=torchserve_grpc_port,
        torchserve_http_port=torchserve_http_port,
        torchserve_grpc_management_port=torchserve_grpc_management_port,
        torchserve_metrics_port=torchserve_metrics_port,
        token_expiry_min=token_expiry_min,
        max_request_bytes=int(max_request_mb * (1 << 20)),
        poll_s=poll,
        health_every_s=health_every,
        hang_after=hang_after,
    )
    try:
        st, already = start(cfg, state_dir)
    except ServeError as exc:
        _serve_fail(exc)
    from infra.serve import status

    st = status(state_dir)
    if already:
        console.print(f"already serving (supervisor pid {st['supervisor_pid']}); nothing started", markup=False)
        running = st.get("config") or {}
        differs = [k for k, v in cfg.__dict__.items() if k in running and running[k] != v and k != "registry"]
        if differs:
            console.print(
                f"note: it runs with other settings ({', '.join(differs)}); `alloynet serve stop` first to change them",
                markup=False,
            )
    _print_serving(st)


@serve_app.command("status")
def serve_status(
    state_dir: Path | None = DirOpt, as_json: bool = typer.Option(False, "--json", help="the state as JSON")
) -> None:
    """What serves: the version, each server's endpoint, pid, restarts; the champion if a swap is pending."""
    from infra.serve import status

    st = status(state_dir)
    if as_json:
        print(json.dumps(st, indent=1, default=str))
        return
    console.print(f"status: {st['status']}" + (f" ({st['error']})" if st.get("error") else ""), markup=False)
    if st["status"] == "not started":  # say where the state was looked for (ALLOYNET_SERVE_DIR, --dir move it)
        from infra.serve import default_dir

        console.print(f"state directory: {Path(state_dir or default_dir()).resolve()}", markup=False, highlight=False)
    if st.get("leftovers"):
        console.print(
            f"{st['leftovers']} process(es) of a previous run still live: `alloynet serve stop`", markup=False
        )
    _print_serving(st)
    if st["status"] != "serving":
        raise typer.Exit(3)


@serve_app.command("stop")
def serve_stop(state_dir: Path | None = DirOpt) -> None:
    """Stop the supervisor and every server it started (what a crash left behind included)."""
    from infra.serve import stop

    out = stop(state_dir)
    console.print(
        f"supervisor: {out['supervisor']}"
        + (f"; {out['leftovers']} leftover process(es) stopped" if out["leftovers"] else ""),
        markup=False,
    )


@serve_app.command("reload")
def serve_reload(
    state_dir: Path | None = DirOpt, timeout: float = typer.Option(300.0, help="seconds to wait for the swap")
) -> None:
    """Look at the registry's champion now (the supervisor also does every --poll seconds) and wait until it
    serves it."""
    from infra.serve import ServeError, reload, status

    try:
        st = reload(state_dir, timeout)
    except ServeError as exc:
        _serve_fail(exc)
    _print_serving(status(state_dir))
    if st.get("failed_swap"):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(
        serve_app,
        name="serve",
        help="Serve the registry's champion (Triton; TorchServe optional), "
        "supervised, following promotions and rollbacks.",
    )
