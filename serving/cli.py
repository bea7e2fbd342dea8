"""`alloynet package torchserve|triton` and `alloynet infer`.

Packaging and the client live in the repository's ``serving/`` package (which imports alloynet, never the
reverse): these commands import it lazily, from the checkout alloynet runs from. `alloynet serve` drives
processes, so it is infra's plugin (infra/cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from alloynet.console import make_console

# The top-level commands register() adds: alloynet.cli reads this literal from the source, without running
# this module, to register only the plugin a command needs (see its docstring).
COMMANDS = ("package", "infer")

console = make_console()
package_app = typer.Typer(no_args_is_help=True)


def _bundle(
    checkpoint: Path | None, bundle: Path | None, export_dir: Path, tensorrt: str | None, store: str | None
) -> Path:
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
    diffs = (b.meta.parity or {})["max_abs_diff"]  # export_checkpoint checks parity, or raises
    console.print(
        f"exported {checkpoint} -> {export_dir} (parity ok; max |dp| "
        + ", ".join(f"{k} {v['probabilities']:.1e}" for k, v in diffs.items())
        + ")"
    )
    return export_dir


@package_app.command("torchserve")
def package_torchserve(
    out: Path = typer.Option(..., help="model store directory; the .mar is written here"),
    checkpoint: Path | None = typer.Option(
        None, help="trained checkpoint (exported first) [default: none; give this or --bundle]"
    ),
    bundle: Path | None = typer.Option(
        None, help="existing export bundle (model.pt, export.json) [default: none; give this or --checkpoint]"
    ),
    export_dir: Path | None = typer.Option(None, help="where to export a checkpoint (default OUT-export)"),
    store: str | None = typer.Option(
        None,
        "--store",
        "-s",
        help="data set whose test captures check parity (default: the one the checkpoint was trained on)",
    ),
    model_name: str = typer.Option("alloynet", help="model name the server registers"),
    version: str = typer.Option("1.0", help="archive version"),
    batch_size: int = typer.Option(8, help="TorchServe batch size"),
    max_batch_delay_ms: int = typer.Option(5, help="ms TorchServe waits to fill a batch"),
    workers: int = typer.Option(1, help="TorchServe workers of the model"),
    threads: int = typer.Option(1, help="torch threads per worker"),
) -> None:
    """Build a TorchServe .mar (TorchServe is archived upstream; Triton is the primary path)."""
    from serving.torchserve.archive import build_mar

    b = _bundle(checkpoint, bundle, export_dir or out.with_name(out.name + "-export"), None, store)
    mar = build_mar(b, out, model_name, version, batch_size, max_batch_delay_ms, workers, threads=threads)
    console.print(f"wrote {mar}")


@package_app.command("triton")
def package_triton(
    out: Path = typer.Option(..., help="model repository directory"),
    checkpoint: Path | None = typer.Option(
        None, help="trained checkpoint (exported first) [default: none; give this or --bundle]"
    ),
    bundle: Path | None = typer.Option(
        None, help="existing export bundle (model.onnx, export.json) [default: none; give this or --checkpoint]"
    ),
    export_dir: Path | None = typer.Option(None, help="where to export a checkpoint (default OUT-export)"),
    store: str | None = typer.Option(
        None,
        "--store",
        "-s",
        help="data set whose test captures check parity (default: the one the checkpoint was trained on)",
    ),
    model_name: str = typer.Option("alloynet", help="model name in the repository"),
    max_batch_size: int = typer.Option(32, help="Triton's dynamic batcher: largest batch"),
    max_queue_delay_us: int = typer.Option(0, help="microseconds Triton waits to fill a batch"),
    instances: int = typer.Option(1, help="model instances"),
    threads: int = typer.Option(1, help="ONNX Runtime intra-op threads per instance"),
    gpu: bool = typer.Option(False, help="GPU instances + TensorRT execution accelerator for the ONNX model"),
    tensorrt: str | None = typer.Option(
        None,
        help="also build a TensorRT engine: fp16 | int8 (GPU + TensorRT only; skipped with a message elsewhere) "
        "[default: none]",
    ),
    backend: str | None = typer.Option(
        None,
        help="the served model's backend: alloynet_ort (alloynet's own, "
        "for CPU servers), onnxruntime (stock Triton) or tensorrt "
        "(needs --tensorrt); default alloynet_ort, onnxruntime with "
        "--gpu",
    ),
) -> None:
    """Write a Triton model repository (alloynet's own backend for CPU servers, ONNX Runtime model, TensorRT plan)."""
    from serving.triton.repository import BACKENDS, BatchingOptions, build_repository

    if backend is not None and backend not in BACKENDS:
        raise typer.BadParameter(f"expected one of {', '.join(BACKENDS)}, got {backend!r}", param_hint="--backend")

    b = _bundle(checkpoint, bundle, export_dir or out.with_name(out.name + "-export"), tensorrt, store)
    opts = BatchingOptions(
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        intra_op_threads=threads,
    )
    repo = build_repository(b, out, model_name, opts, gpu=gpu, backend=backend)
    models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").exists())
    console.print(f"wrote {repo}: {', '.join(models)} (configs parsed and checked against the ONNX model)")


def infer(
    captures: list[Path] = typer.Argument(..., help="16-bit PNG/TIFF captures (or .npy arrays)"),
    url: str | None = typer.Option(
        None,
        help="triton://HOST:PORT/MODEL or torchserve://HOST:PORT/MODEL (gRPC); "
        "default: $ALLOYNET_SERVING_URL, else what `alloynet serve` wrote "
        "in its env file, else triton://127.0.0.1:8001/alloynet",
    ),
    token: str | None = typer.Option(
        None,
        envvar="ALLOYNET_SERVING_TOKEN",
        help="TorchServe inference key [default: $ALLOYNET_SERVING_TOKEN, else the key file's]",
    ),
    key_file: Path | None = typer.Option(
        None,
        help="TorchServe key_file.json (read again whenever the key is "
        "refused; default: the one `alloynet serve` wrote)",
    ),
    timeout: float = typer.Option(10.0, help="seconds per request"),
    retry_budget: float = typer.Option(
        30.0, help="seconds to keep retrying while the server is unavailable (e.g. restarting)"
    ),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per capture instead of a line"),
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
                raise typer.Exit(2) from None
            if as_json:
                print(json.dumps({"capture": str(path), **p.to_dict()}))
            else:
                flags = f"  flags: {', '.join(p.flags)}" if p.flags else ""
                console.print(
                    f"{path}: {p.alloy} (p={p.confidence:.3f}) set {{{', '.join(p.prediction_set)}}} "
                    f"{p.group} (p={p.group_probability:.3f})  thickness {p.thickness_mm:.2f} mm  "
                    f"a0 {p.absorption['a0']:.3f}  mu_eff {p.absorption['mu_eff']:.3f}/cm{flags}",
                    markup=False,
                    highlight=False,
                )
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(package_app, name="package", help="Package an exported model for TorchServe or Triton.")
    app.command()(infer)
