"""`alloynet package torchserve|triton`, `alloynet serve start|status|stop|reload` and `alloynet infer`.

Packaging and the client live in the repository's ``serving/`` package (which imports alloynet, never the
reverse at import time): these commands import it lazily, from the checkout alloynet runs from.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from alloynet.console import make_console

# The top-level commands register() adds: alloynet.cli reads this literal from the source, without running
# this module, to register only the plugin a command needs (see its docstring).
COMMANDS = ("package", "serve", "infer")

console = make_console()
package_app = typer.Typer(no_args_is_help=True)


def _bundle(checkpoint: Optional[Path], bundle: Optional[Path], export_dir: Path, tensorrt: Optional[str],
            store: Optional[str]) -> Path:
    """An export bundle: the given one, or exported now from a checkpoint (parity-checked on the test split
    of ``store``, by default the data set the checkpoint was trained on)."""
    if bundle:
        if checkpoint:
            raise typer.BadParameter("give --checkpoint or --bundle, not both")
        return bundle
    if not checkpoint:
        raise typer.BadParameter("give --checkpoint (a trained model) or --bundle (an export directory)")
    from alloynet.export import export_checkpoint

    b = export_checkpoint(checkpoint, export_dir, store, tensorrt=tensorrt, log=console.print)
    diffs = b.meta.parity["max_abs_diff"]
    console.print(f"exported {checkpoint} -> {export_dir} (parity ok; max |dp| "
                  + ", ".join(f"{k} {v['probabilities']:.1e}" for k, v in diffs.items()) + ")")
    return export_dir


@package_app.command("torchserve")
def package_torchserve(
    out: Path = typer.Option(..., help="model store directory; the .mar is written here"),
    checkpoint: Optional[Path] = typer.Option(None, help="trained checkpoint (exported first)"),
    bundle: Optional[Path] = typer.Option(None, help="existing export bundle (model.pt, export.json)"),
    export_dir: Optional[Path] = typer.Option(None, help="where to export a checkpoint (default OUT-export)"),
    store: Optional[str] = typer.Option(None, help="data set whose test captures check parity (default: the one "
                                                   "the checkpoint was trained on)"),
    model_name: str = "alloynet", version: str = "1.0", batch_size: int = 8, max_batch_delay_ms: int = 5,
    workers: int = 1, threads: int = typer.Option(1, help="torch threads per worker"),
) -> None:
    """Build a TorchServe .mar (TorchServe is archived upstream; Triton is the primary path)."""
    from serving.torchserve.archive import build_mar

    b = _bundle(checkpoint, bundle, export_dir or out.with_name(out.name + "-export"), None, store)
    mar = build_mar(b, out, model_name, version, batch_size, max_batch_delay_ms, workers, threads=threads)
    console.print(f"wrote {mar}")


@package_app.command("triton")
def package_triton(
    out: Path = typer.Option(..., help="model repository directory"),
    checkpoint: Optional[Path] = typer.Option(None, help="trained checkpoint (exported first)"),
    bundle: Optional[Path] = typer.Option(None, help="existing export bundle (model.onnx, export.json)"),
    export_dir: Optional[Path] = typer.Option(None, help="where to export a checkpoint (default OUT-export)"),
    store: Optional[str] = typer.Option(None, help="data set whose test captures check parity (default: the one "
                                                   "the checkpoint was trained on)"),
    model_name: str = "alloynet", max_batch_size: int = 32, max_queue_delay_us: int = 0, instances: int = 1,
    threads: int = typer.Option(1, help="ONNX Runtime intra-op threads per instance"),
    gpu: bool = typer.Option(False, help="GPU instances + TensorRT execution accelerator for the ONNX model"),
    tensorrt: Optional[str] = typer.Option(None, help="also build a TensorRT engine: fp16 | int8 (GPU + TensorRT "
                                                      "only; skipped with a message elsewhere)"),
) -> None:
    """Write a Triton model repository (alloynet's own backend for CPU servers, ONNX Runtime model, TensorRT plan)."""
    from serving.triton.repository import BatchingOptions, build_repository

    b = _bundle(checkpoint, bundle, export_dir or out.with_name(out.name + "-export"), tensorrt, store)
    opts = BatchingOptions(max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                           instances=instances, intra_op_threads=threads)
    repo = build_repository(b, out, model_name, opts, gpu=gpu)
    models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").exists())
    console.print(f"wrote {repo}: {', '.join(models)} (configs parsed and checked against the ONNX model)")


def infer(
    captures: list[Path] = typer.Argument(..., help="16-bit PNG/TIFF captures (or .npy arrays)"),
    url: Optional[str] = typer.Option(None, help="triton://HOST:PORT/MODEL or torchserve://HOST:PORT/MODEL (gRPC); "
                                                 "default: $ALLOYNET_SERVING_URL, else what `alloynet serve` wrote "
                                                 "in its env file, else triton://127.0.0.1:8001/alloynet"),
    token: Optional[str] = typer.Option(None, envvar="ALLOYNET_SERVING_TOKEN", help="TorchServe inference key"),
    key_file: Optional[Path] = typer.Option(None, help="TorchServe key_file.json (read again whenever the key is "
                                                       "refused; default: the one `alloynet serve` wrote)"),
    timeout: float = typer.Option(10.0, help="seconds per request"),
    retry_budget: float = typer.Option(30.0, help="seconds to keep retrying while the server is unavailable "
                                                  "(e.g. restarting)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Send captures to a model server over gRPC and print the alloy, the prediction set, the group,
    thickness, absorption and any flags. Each capture's calibration and wedge size are read from its sidecar
    beside it (``<capture>.json``, as alloynet stores captures; .npy captures too); without one the server
    says calibration_missing.
    A refused capture is reported on its own line (exit code 1 at the end); an unreachable server stops
    the run (exit code 2)."""
    import numpy as np

    from serving.client import InvalidCaptureError, ServingError, connect, context_of

    def show_error(path: Path, exc: Exception) -> None:
        if as_json:
            print(json.dumps({"capture": str(path), "error": str(exc), "code": getattr(exc, "code", "UNKNOWN")}))
        else:
            console.print(f"{path}: rejected: {exc}", markup=False, highlight=False, style="red")

    failed = 0
    try:
        client = connect(url, token=token, timeout_s=timeout, retry_budget_s=retry_budget, key_file=key_file)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--url") from None
    with client:
        for path in captures:
            try:
                capture = np.load(path, allow_pickle=False) if path.suffix == ".npy" else path
                p = client.predict(capture, *context_of(path))  # the array alone has no sidecar to read
            except (InvalidCaptureError, OSError, ValueError) as exc:
                failed += 1
                show_error(path, exc)
                continue
            except ServingError as exc:
                if as_json:
                    print(json.dumps({"capture": str(path), "error": str(exc), "code": exc.code}))
                else:
                    console.print(f"{path}: {exc}", markup=False, highlight=False, style="red")
                raise typer.Exit(2)
            if as_json:
                print(json.dumps({"capture": str(path), **p.to_dict()}))
            else:
                flags = f"  flags: {', '.join(p.flags)}" if p.flags else ""
                console.print(f"{path}: {p.alloy} (p={p.confidence:.3f}) set {{{', '.join(p.prediction_set)}}} "
                              f"{p.group} (p={p.group_probability:.3f})  thickness {p.thickness_mm:.2f} mm  "
                              f"a0 {p.absorption['a0']:.3f}  mu_eff {p.absorption['mu_eff']:.3f}/cm{flags}",
                              markup=False, highlight=False)
    if failed:
        raise typer.Exit(1)


# -- alloynet serve ---------------------------------------------------------------------------------------

serve_app = typer.Typer(no_args_is_help=True)
DirOpt = typer.Option(None, "--dir", help="state directory (default $ALLOYNET_SERVE_DIR or .alloynet/serve in the "
                                          "checkout)")


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
        out(f"swap to {failed['version']} (generation {failed['generation']}) failed on {failed.get('server')}: "
            f"{failed['error']}")
    elif champ and serving and champ.get("generation") != serving.get("generation"):
        out(f"champion is {champ['version']} (generation {champ['generation']}): swap pending")
    for name, info in (st.get("servers") or {}).items():
        up = ("" if info.get("supervised", True) else "  UNSUPERVISED") if info.get("up", True) else "  DOWN"
        extra = f"  key file {info['key_file']}" if info.get("key_file") else ""
        if info.get("generation") and serving and info["generation"] != serving.get("generation"):
            extra += f"  (still generation {info['generation']})"
        http = f"  http {info['http']}" if info.get("http") else ""
        out(f"  {name:<10} {info.get('url')}  (gRPC {info.get('grpc')}{http}; pid {info.get('pid')}, "
            f"restarts {info.get('restarts', 0)}){extra}{up}")
    if st.get("supervisor_pid"):
        out(f"  supervisor pid {st['supervisor_pid']}, log {Path(st.get('dir', '.')) / 'supervisor.log'}")
    if st.get("env_file") and st.get("status") == "serving":
        out(f"  env file   {st['env_file']}  (`alloynet infer` reads it; `source` it in a shell)")


@serve_app.command("start")
def serve_start(
    registry: Optional[str] = typer.Option(None, "--registry", "-r", help="model store whose champion is served "
                                           "(default $ALLOYNET_REGISTRY, else demo-data/registry: what `make demo` "
                                           "writes)"),
    model: str = typer.Option("alloynet", help="model name inside the registry"),
    torchserve: bool = typer.Option(False, "--torchserve", help="also serve with TorchServe (archived upstream)"),
    triton_grpc_port: int = typer.Option(8001, help="Triton gRPC port"),
    triton_http_port: int = typer.Option(0, help="Triton HTTP port (0: no HTTP)"),
    torchserve_grpc_port: int = typer.Option(7070, help="TorchServe gRPC inference port"),
    torchserve_http_port: int = typer.Option(8080, help="TorchServe REST inference port"),
    torchserve_grpc_management_port: int = typer.Option(7071, help="TorchServe gRPC management port"),
    torchserve_metrics_port: int = typer.Option(8082, help="TorchServe metrics port"),
    token_expiry_min: float = typer.Option(7 * 24 * 60.0, help="TorchServe keys expire this many minutes after "
                                                               "they are made; renewed when a quarter is left"),
    max_request_mb: float = typer.Option(8.0, help="TorchServe refuses larger requests"),
    poll: float = typer.Option(5.0, help="seconds between reads of the champion pointer"),
    health_every: float = typer.Option(5.0, help="seconds between health probes of each server"),
    hang_after: int = typer.Option(6, help="a server that misses this many probes in a row is restarted"),
    state_dir: Optional[Path] = DirOpt,
) -> None:
    """Serve the registry's champion: Triton (and TorchServe with --torchserve) on fixed ports, supervised
    (restarted on the same ports if it exits), following the champion pointer (promotions and rollbacks
    are loaded without dropping requests). Idempotent: if it already serves, says what."""
    import os

    from infra.serve import DEFAULT_REGISTRY, ServeConfig, ServeError, start

    cfg = ServeConfig(registry=registry or os.environ.get("ALLOYNET_REGISTRY") or str(DEFAULT_REGISTRY), model=model,
                      torchserve=torchserve, triton_grpc_port=triton_grpc_port, triton_http_port=triton_http_port,
                      torchserve_grpc_port=torchserve_grpc_port, torchserve_http_port=torchserve_http_port,
                      torchserve_grpc_management_port=torchserve_grpc_management_port,
                      torchserve_metrics_port=torchserve_metrics_port, token_expiry_min=token_expiry_min,
                      max_request_bytes=int(max_request_mb * (1 << 20)), poll_s=poll, health_every_s=health_every,
                      hang_after=hang_after)
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
            console.print(f"note: it runs with other settings ({', '.join(differs)}); `alloynet serve stop` first to "
                          "change them", markup=False)
    _print_serving(st)


@serve_app.command("status")
def serve_status(state_dir: Optional[Path] = DirOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """What serves: the version, each server's endpoint, pid, restarts; the champion if a swap is pending."""
    from infra.serve import status

    st = status(state_dir)
    if as_json:
        print(json.dumps(st, indent=1, default=str))
        return
    console.print(f"status: {st['status']}" + (f" ({st['error']})" if st.get("error") else ""), markup=False)
    if st.get("leftovers"):
        console.print(f"{st['leftovers']} process(es) of a previous run still live: `alloynet serve stop`",
                      markup=False)
    _print_serving(st)
    if st["status"] != "serving":
        raise typer.Exit(3)


@serve_app.command("stop")
def serve_stop(state_dir: Optional[Path] = DirOpt) -> None:
    """Stop the supervisor and every server it started (what a crash left behind included)."""
    from infra.serve import stop

    out = stop(state_dir)
    console.print(f"supervisor: {out['supervisor']}" + (f"; {out['leftovers']} leftover process(es) stopped"
                                                        if out["leftovers"] else ""), markup=False)


@serve_app.command("reload")
def serve_reload(state_dir: Optional[Path] = DirOpt,
                 timeout: float = typer.Option(300.0, help="seconds to wait for the swap")) -> None:
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
    app.add_typer(package_app, name="package", help="Package an exported model for TorchServe or Triton.")
    app.add_typer(serve_app, name="serve", help="Serve the registry's champion (Triton; TorchServe optional), "
                                                "supervised, following promotions and rollbacks.")
    app.command()(infer)
