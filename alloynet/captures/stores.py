"""Object stores behind one small interface: a local directory (the embedded default) and S3 (boto3).

Keys are '/'-separated relative paths. ``put`` is atomic (readers never see half a file) and by default
refuses to overwrite: nothing already stored is replaced by accident. Create-if-absent is one atomic step
on both stores (``link`` locally, ``If-None-Match: *`` on S3), so two writers racing for one key cannot
both win; so is compare-and-set (``put_if`` against the version ``get_versioned`` read: an exclusive lock
locally, ``If-Match`` on S3). A local store is a boundary: a symbolic link is followed only to a file inside
its directory, and nothing outside it is ever read. A failure of the store itself (unreachable, refused
credentials, server error) raises
``StoreError`` with a one-line message: it is never the fault of the object being read.
S3 credentials come from the standard AWS environment/config chain, never from code; the endpoint
comes from the URI's ``?endpoint=`` or ``AWS_ENDPOINT_URL``/``ALLOYNET_S3_ENDPOINT``.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlparse


class ObjectMissing(KeyError):
    """The key does not exist (or vanished between list and get)."""


class ObjectRefused(ValueError):
    """The key exists but is not read: a symbolic link that leads outside the store's directory."""


class ObjectUnreadable(ObjectMissing):
    """The key is listed but cannot be read (permissions, not a regular file): for its reader, it is gone."""


class ObjectExists(FileExistsError):
    """A put would overwrite an existing object."""


class ObjectChanged(ObjectExists):
    """A compare-and-set write was refused: the object is no longer the version the writer read."""


class StoreError(RuntimeError):
    """The store itself failed (refused credentials, missing bucket, server error); the message is one line.
    ``transient`` says whether retrying can help (an endpoint that may come back) or not (a wrong bucket)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class StoreUnavailable(StoreError):
    """The store cannot be used at all: its endpoint does not answer (transient), its bucket is missing or its
    credentials are refused (not transient)."""

    def __init__(self, message: str, transient: bool = True):
        super().__init__(message, transient)


TEMP_PREFIX = ".tmp-"
LOCK_NAME = ".alloynet-writer.lock"  # LocalStore's writer lock file (never listed as an object)
CAS_LOCK_NAME = ".alloynet-cas.lock"  # LocalStore's lock for compare-and-set writes (never listed either)
LEASE_KEY = "state/writer.lease"  # the same for other stores: a lease object


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
    def get_versioned(self, key: str) -> tuple[bytes, str]: ...
    def put_if(self, key: str, data: bytes, expected: str | None) -> str: ...


def _check_key(key: str) -> str:
    parts = key.split("/") if isinstance(key, str) else [""]
    if not key or "\x00" in key or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}: must be a relative path without '..', '.' or empty parts")
    return key


def _check_prefix(prefix: str) -> str:
    if prefix and not prefix.endswith("/"):
        _check_key(prefix)
    elif prefix:
        _check_key(prefix[:-1])
    return prefix


class LocalStore:
    """A directory on disk."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        _check_prefix(prefix)
        base = self.root / prefix if prefix and prefix.endswith("/") else self.root
        if not base.exists():
            return
        for dirpath, _dirs, files in os.walk(base):  # symlinked directories are not entered
            for name in files:
                if name.startswith(TEMP_PREFIX) or name in (LOCK_NAME, CAS_LOCK_NAME):
                    continue
                p = Path(dirpath) / name
                key = p.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    # a link's own size and time: its target is only read by ``get``, and only inside the root
                    st = p.lstat() if p.is_symlink() else p.stat()
                except OSError:  # vanished since the directory was read
                    continue
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def get(self, key: str) -> bytes:
        """The object's bytes. A symbolic link is followed only to a file inside the store's directory
        (resolved, then opened without following links again); one that leads outside raises
        ``ObjectRefused`` without reading anything there. A file that vanished or cannot be read is missing."""
        path = self.path(key)
        try:
            target = path.resolve(strict=True)
        except (FileNotFoundError, RuntimeError):  # gone, a dangling link, or a link loop
            raise ObjectMissing(key) from None
        except OSError as exc:
            raise ObjectUnreadable(f"{key}: {exc.strerror or exc}") from None
        if target != path and not target.is_relative_to(self.root):
            raise ObjectRefused(f"{self.uri}/{key} is a symbolic link to outside {self.uri}; not followed")
        try:  # non-blocking: a FIFO planted in the source must not hang the reader
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        except OSError as exc:  # permissions, a link swapped in since the check
            raise ObjectUnreadable(f"{key}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise ObjectUnreadable(f"{key}: not a regular file")
                return f.read()
        except ObjectUnreadable:
            raise
        except OSError as exc:
            raise ObjectUnreadable(f"{key}: {exc.strerror or exc}") from None

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest.parent)
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

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object and its version token (the sha256 of its bytes), for ``put_if``."""
        data = self.get(key)
        return data, hashlib.sha256(data).hexdigest()

    def put_if(self, key: str, data: bytes, expected: str | None) -> str:
        """Compare-and-set: write ``data`` only if the object is still version ``expected`` (None: only if
        it does not exist); else ``ObjectChanged``. An exclusive ``flock`` makes the check and the rename one
        step for every writer using it (the kernel drops it when a holder dies, even by SIGKILL). Returns
        the new version token."""
        import fcntl

        fd = os.open(self.root / CAS_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current: str | None = self.get_versioned(key)[1]
            except ObjectMissing:
                current = None
            if current != expected:
                raise ObjectChanged(f"{self.uri}/{key} changed since it was read (compare-and-set refused)")
            self.put(key, data, overwrite=True)
            return hashlib.sha256(data).hexdigest()
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass

    def clean_temp(self, prefix: str = "", older_than: float = 3600.0) -> builtins.list[str]:
        """Remove temp files that a killed writer left behind (``put`` cleans up after itself otherwise).

        Only files older than ``older_than`` seconds go, so a live writer's temp file is never taken from
        under it; a caller that holds the destination's writer lock can pass 0. Returns what was removed."""
        _check_prefix(prefix)
        base = self.root / prefix if prefix else self.root
        cutoff = time.time() - older_than
        removed = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if not name.startswith(TEMP_PREFIX):
                    continue
                p = Path(dirpath) / name
                try:
                    if p.stat().st_mtime <= cutoff:
                        p.unlink()
                        removed.append(p.relative_to(self.root).as_posix())
                except FileNotFoundError:  # its writer finished meanwhile
                    pass
        return removed


def _s3_error(store: S3Store, exc: Exception, what: str) -> Exception:
    """botocore's exception -> ObjectMissing for a missing key, ObjectExists for a refused conditional write,
    StoreUnavailable when the store cannot be used (with what to check), else a one-line StoreError."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    where = f"{store.uri} (endpoint {store.client.meta.endpoint_url})"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            return ObjectMissing(what)
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return ObjectExists(f"{store.uri}{what} exists; refusing to overwrite")
        if code == "NoSuchBucket":
            return StoreUnavailable(
                f"{where}: bucket {store.bucket!r} does not exist; create it or fix the bucket in the URI",
                transient=False,
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return StoreUnavailable(
                f"{where}: credentials refused ({code}); check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY and the bucket's permissions",
                transient=False,
            )
        msg = " ".join(str(err.get("Message", "")).split())
        return StoreError(f"{store.uri}: {code or 'error'}: {msg or exc} ({what})")
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):  # refused, reset, closed, timed out
        return StoreUnavailable(
            f"object store unreachable: {where}: the object store does not answer "
            f"({type(exc).__name__}); is it running, and is AWS_ENDPOINT_URL (or ?endpoint=) right?"
        )
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StoreUnavailable(f"{where}: {exc}; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY", transient=False)
    if isinstance(exc, BotoCoreError):
        return StoreError(f"{store.uri}: {' '.join(str(exc).split())}")
    return exc


class S3Store:
    """An S3 bucket (and optional prefix) through boto3; works with any S3-compatible server."""

    def __init__(
        self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None, client=None
    ):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        endpoint_url = endpoint_url or os.environ.get("ALLOYNET_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        # A fresh Session reads the AWS environment/config now; boto3's default session caches credentials.
        self.client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            config=Config(
                retries={"max_attempts": 4, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                s3={"addressing_style": "path"},
            ),
        )
        self.uri = f"s3://{bucket}/{self.prefix}"

    def _k(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        _check_prefix(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        obj["Key"][len(self.prefix) :],
                        obj["Size"],
                        obj["LastModified"].timestamp(),
                        obj.get("ETag", "").strip('"') or None,
                    )
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error(self, exc, prefix or "(list)") from None

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        k = self._k(key)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=k)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error(self, exc, key) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        k = self._k(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=k)
            return True
        except (BotoCoreError, ClientError) as exc:
            err = _s3_error(self, exc, key)
            if isinstance(err, ObjectMissing):
                return False
            raise err from None

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        """A single PUT is atomic on S3: readers see the old object or the whole new one. Without
        ``overwrite`` the PUT is conditional (If-None-Match: *), so of two racing writers exactly one wins;
        the HEAD before it keeps servers that ignore the condition from overwriting in the common case."""
        from botocore.exceptions import BotoCoreError, ClientError

        k = self._k(key)
        if not overwrite and self.exists(key):
            raise ObjectExists(f"{self.uri}{key} exists; refusing to overwrite")
        extra = {} if overwrite else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.bucket, Key=k, Body=data, **extra)
        except ClientError as exc:
            if extra and exc.response.get("Error", {}).get("Code") == "NotImplemented":
                try:  # a server without conditional writes: the HEAD above is the best it allows
                    self.client.put_object(Bucket=self.bucket, Key=k, Body=data)
                    return
                except (BotoCoreError, ClientError) as exc2:
                    raise _s3_error(self, exc2, key) from None
            raise _s3_error(self, exc, key) from None
        except BotoCoreError as exc:
            raise _s3_error(self, exc, key) from None

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object and its ETag, for ``put_if``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            return r["Body"].read(), r["ETag"]
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error(self, exc, key) from None

    def put_if(self, key: str, data: bytes, expected: str | None) -> str:
        """Compare-and-set with a conditional PUT: If-Match the ETag read (If-None-Match: * when there was
        no object); the server refuses it (412) if another writer got there first: ``ObjectChanged``.
        There is no fallback: a server without conditional writes fails with a ``StoreError`` that says so."""
        from botocore.exceptions import BotoCoreError, ClientError

        cond = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, **cond)["ETag"]
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "NoSuchKey", "404"):
                raise ObjectChanged(f"{self.uri}{key} changed since it was read (compare-and-set refused)") from None
            if code == "NotImplemented":
                raise StoreError(
                    f"{self.uri}: the S3 server does not support conditional writes (If-Match / "
                    "If-None-Match), which the champion pointer needs"
                ) from None
            raise _s3_error(self, exc, key) from None
        except BotoCoreError as exc:
            raise _s3_error(self, exc, key) from None

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        k = self._k(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=k)
        except (BotoCoreError, ClientError) as exc:
            err = _s3_error(self, exc, key)
            if not isinstance(err, ObjectMissing):
                raise err from None


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


# ---- one writer per destination ---------------------------------------------------------------------
class WriterBusy(RuntimeError):
    """Another process holds the destination's writer lock (an ingest, a manifest refresh)."""


def _holder_text(info: dict) -> str:
    if not info:
        return "another process"
    return (
        f"{info.get('what', 'a writer')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
        f"since {info.get('since', '?')})"
    )


def _me(what: str) -> dict:
    return {
        "what": what,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@contextmanager
def writer_lock(
    store: ObjectStore, what: str = "ingest", wait: float = 0.0, lease_s: float = 6 * 3600.0, poll: float = 0.2
) -> Iterator[None]:
    """Hold the one-writer lock of ``store`` for the duration of the block.

    A local directory uses ``flock`` on a lock file: the kernel releases it when the holder exits, even by
    SIGKILL, so a crashed writer never leaves a stale lock. Other stores use a lease object created with an
    atomic create-if-absent; a lease older than ``lease_s`` (a writer that died) is taken over.
    Waits up to ``wait`` seconds, then raises ``WriterBusy`` naming the holder."""
    if isinstance(store, LocalStore):
        cm = _flock(store, what, wait, poll)
    else:
        cm = _lease(store, what, wait, lease_s, poll)
    with cm:
        yield


@contextmanager
def _flock(store: LocalStore, what: str, wait: float, poll: float) -> Iterator[None]:
    import fcntl

    path = store.root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    try:
                        info = json.loads(path.read_text() or "{}")
                    except (OSError, ValueError):
                        info = {}
                    raise WriterBusy(
                        f"{store.uri} is busy: {_holder_text(info)} is writing to it; "
                        f"try again later or wait for it (--wait SECONDS)"
                    ) from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me(what)).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _lease(store: ObjectStore, what: str, wait: float, lease_s: float, poll: float) -> Iterator[None]:
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    while True:
        body = {**_me(what), "token": token, "expires": time.time() + lease_s}
        try:
            store.put(LEASE_KEY, json.dumps(body).encode())
            break
        except ObjectExists:
            info = _read_lease(store)
            if info is not None and info.get("expires", 0) < time.time():
                store.delete(LEASE_KEY)  # the holder died without releasing: take the lease over
                continue
            if time.monotonic() >= deadline:
                raise WriterBusy(
                    f"{store.uri} is busy: {_holder_text(info or {})} holds its writer lease; "
                    f"try again later or wait for it (--wait SECONDS)"
                ) from None
            time.sleep(poll)
    try:
        yield
    finally:
        info = _read_lease(store)
        if info is not None and info.get("token") == token:
            store.delete(LEASE_KEY)


def _read_lease(store: ObjectStore) -> dict | None:
    try:
        return json.loads(store.get(LEASE_KEY))
    except ObjectMissing:
        return None
    except ValueError:
        return {}
