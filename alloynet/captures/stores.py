"""Object stores behind one small interface: a local directory (the embedded default) and S3 (boto3).

Keys are '/'-separated relative paths. ``put`` is atomic (readers never see half a file) and by default
refuses to overwrite: nothing already stored is replaced by accident.
S3 credentials come from the standard AWS environment/config chain, never from code; the endpoint
comes from the URI's ``?endpoint=`` or ``AWS_ENDPOINT_URL``/``ALLOYNET_S3_ENDPOINT``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import parse_qs, urlparse


class ObjectMissing(KeyError):
    """The key does not exist (or vanished between list and get)."""


class ObjectExists(FileExistsError):
    """A put would overwrite an existing object."""


class StoreUnavailable(RuntimeError):
    """The store itself cannot be used: its bucket is missing, its endpoint does not answer, or its
    credentials are refused. ``transient`` says whether retrying can help (an endpoint that may come back)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # POSIX seconds
    etag: str | None = None


class ObjectStore(Protocol):
    uri: str

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def get(self, key: str) -> bytes: ...
    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"invalid object key {key!r}: must be a relative path without '..'")
    return key


class LocalStore:
    """A directory on disk."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix and prefix.endswith("/") else self.root
        if not base.exists():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                p = Path(dirpath) / name
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    st = p.stat()
                    yield ObjectInfo(key, st.st_size, st.st_mtime)

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, dest)
            else:
                try:
                    os.link(tmp, dest)  # atomic create-if-absent
                except FileExistsError:
                    raise ObjectExists(f"{self.uri}/{key} exists; refusing to overwrite") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass


class S3Store:
    """An S3 bucket (and optional prefix) through boto3; works with any S3-compatible server."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 client=None):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        endpoint_url = endpoint_url or os.environ.get("ALLOYNET_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        # A fresh Session reads the AWS environment/config now; boto3's default session caches credentials.
        self.client = client or boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}))
        self.uri = f"s3://{bucket}/{self.prefix}"

    def _k(self, key: str) -> str:
        return self.prefix + _check_key(key)

    @contextlib.contextmanager
    def _usable(self):
        """Store-level failures as one clear StoreUnavailable line instead of a botocore traceback."""
        from botocore.exceptions import (ClientError, ConnectionError as BotoConnectionError, NoCredentialsError,
                                         PartialCredentialsError)

        where = f"{self.uri} (endpoint {self.client.meta.endpoint_url})"
        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise StoreUnavailable(f"{where}: bucket {self.bucket!r} does not exist; create it or fix the "
                                       "bucket in the URI") from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                raise StoreUnavailable(f"{where}: credentials refused ({code}); check AWS_ACCESS_KEY_ID / "
                                       "AWS_SECRET_ACCESS_KEY and the bucket's permissions") from None
            raise
        except BotoConnectionError as exc:
            raise StoreUnavailable(f"{where}: the object store does not answer ({type(exc).__name__}); is it "
                                   "running, and is AWS_ENDPOINT_URL (or ?endpoint=) right?", transient=True) from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StoreUnavailable(f"{where}: {exc}; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        with self._usable():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][len(self.prefix):], obj["Size"], obj["LastModified"].timestamp(),
                                     obj.get("ETag", "").strip('"') or None)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            with self._usable():
                return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissing(key) from None
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._usable():
                self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        # A single PUT is atomic on S3: readers see the old object or the whole new one.
        if not overwrite and self.exists(key):
            raise ObjectExists(f"{self.uri}{key} exists; refusing to overwrite")
        with self._usable():
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)

    def delete(self, key: str) -> None:
        with self._usable():
            self.client.delete_object(Bucket=self.bucket, Key=self._k(key))


def object_path(store: ObjectStore, key: str) -> str:
    """Human-readable location of a key, for error messages."""
    return store.uri.rstrip("/") + "/" + key


def open_store(uri: str | os.PathLike) -> ObjectStore:
    """``s3://bucket/prefix[?endpoint=http://127.0.0.1:8333]`` or a local path / ``file://`` URI."""
    s = str(uri)
    if s.startswith("s3://"):
        u = urlparse(s)
        endpoint = parse_qs(u.query).get("endpoint", [None])[0]
        if not u.netloc:
            raise ValueError(f"store URI {s!r}: missing bucket name (expected s3://bucket/prefix)")
        return S3Store(u.netloc, u.path, endpoint_url=endpoint)
    if s.startswith("file://"):
        s = urlparse(s).path
    return LocalStore(s)
