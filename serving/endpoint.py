"""The serving env file: where `alloynet serve` says what it serves, and where clients look for it.

Its names, its default place, how it is read and how it is written live here only: infra/serve.py writes it
through :func:`write_env_file`, the client and `alloynet infer` read it through :func:`serving_setting`.
The file is ``export NAME=VALUE`` lines (shell-quoted), so a shell can ``source`` it too.

Where it is: ``$ALLOYNET_SERVING_ENV``, else ``serving.env`` in the serve directory (``$ALLOYNET_SERVE_DIR``,
else ``<checkout>/.alloynet/serve``).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

DEFAULT_URL = "triton://127.0.0.1:8001/alloynet"
SERVE_DIR_ENV = "ALLOYNET_SERVE_DIR"
ENV_FILE_ENV = "ALLOYNET_SERVING_ENV"
ENV_FILE = "serving.env"
# The variables of the env file (and of the environment, which wins over it).
URL_VAR = "ALLOYNET_SERVING_URL"
TRITON_URL_VAR = "ALLOYNET_TRITON_URL"
TORCHSERVE_URL_VAR = "ALLOYNET_TORCHSERVE_URL"
KEY_FILE_VAR = "ALLOYNET_TORCHSERVE_KEY_FILE"
MAX_REQUEST_VAR = "ALLOYNET_TORCHSERVE_MAX_REQUEST_BYTES"
HEADER = "# written by `alloynet serve start`; `alloynet infer` and serving.client read it\n"


def default_serve_dir() -> Path:
    """Where `alloynet serve` keeps its state and env file: ``$ALLOYNET_SERVE_DIR``, else the checkout's
    ``.alloynet/serve``."""
    return Path(os.environ.get(SERVE_DIR_ENV) or Path(__file__).resolve().parents[1] / ".alloynet" / "serve")


def env_file_path(serve_dir: Path | None = None) -> Path:
    """The env file of ``serve_dir``; without one, ``$ALLOYNET_SERVING_ENV`` or the default serve directory's."""
    if serve_dir is not None:
        return Path(serve_dir) / ENV_FILE
    return Path(os.environ.get(ENV_FILE_ENV) or default_serve_dir() / ENV_FILE)


def read_env_file(path: Path | None = None) -> dict[str, str]:
    """``export NAME=VALUE`` lines (shell-quoted) of an env file; {} when there is none."""
    path = Path(path) if path else env_file_path()
    out = {}
    try:
        text = path.read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        parts = shlex.split(line, comments=True)
        if parts and parts[0] == "export":
            parts = parts[1:]
        for p in parts:
            if "=" in p:
                k, v = p.split("=", 1)
                out[k] = v
    return out


def write_env_file(path: Path, env: Mapping[str, str]) -> Path:
    """Write ``env`` as the env file ``path``, atomically (a reader sees the old file or the new one)."""
    path = Path(path)
    unknown = sorted(set(env) - set(SETTINGS))
    if unknown:
        raise ValueError(f"{path}: unknown serving setting(s) {unknown}; expected some of {list(SETTINGS)}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(HEADER + "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in env.items()))
    os.replace(tmp, path)
    return path


def serving_setting(name: str) -> str | None:
    """``name`` from the environment, else from the env file `alloynet serve` wrote."""
    return os.environ.get(name) or read_env_file().get(name)


def default_url() -> str:
    """The URL clients connect to when given none: ``$ALLOYNET_SERVING_URL``, the env file's, else DEFAULT_URL."""
    return serving_setting(URL_VAR) or DEFAULT_URL


SETTINGS = (URL_VAR, TRITON_URL_VAR, SERVE_DIR_ENV, TORCHSERVE_URL_VAR, KEY_FILE_VAR, MAX_REQUEST_VAR)
