"""Store roots: a local folder or an S3 bucket and prefix, and the few object
operations the store needs (atomic put, get, list, delete).

- Data (Parquet bytes) goes through ``pyarrow.fs.S3FileSystem`` on S3.
- Listing and deleting use boto3, which pages and batches them properly.
- The endpoint comes from ``endpoint_url``, else ``AWS_ENDPOINT_URL_S3``, else
  ``AWS_ENDPOINT_URL`` (MinIO, Ceph, moto); region and credentials come from
  the standard AWS environment variables or profile. Credentials are never
  copied into this object, so they cannot leak through its repr or logs.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal
from urllib.parse import urlparse

import pyarrow.fs as pafs

from orchestrator.store.errors import StoreConfigError

_client_lock = threading.Lock()


@dataclass(frozen=True)
class ObjectInfo:
    """An object under a root: ``key`` relative to the root, ``size`` in bytes,
    ``mtime`` in seconds since the epoch."""

    key: str
    size: int
    mtime: float


@dataclass(frozen=True)
class StoreRoot:
    """A resolved root. Build it with ``resolve_root``.

    ``base`` is the pyarrow filesystem path of the root: an absolute local
    folder, or ``bucket/prefix`` on S3.
    """

    uri: str
    scheme: Literal["file", "s3"]
    base: str
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    def path(self, key: str) -> str:
        """pyarrow filesystem path of ``key`` (relative to the root)."""
        return f"{self.base}/{key}"

    def s3_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def display(self, key: str = "") -> str:
        """A URI for messages: ``s3://bucket/prefix/key`` or ``file:///path/key``."""
        return f"{self.uri}/{key}" if key else self.uri

    @cached_property
    def filesystem(self) -> pafs.FileSystem:
        if not self.is_s3:
            return pafs.LocalFileSystem()
        endpoint, scheme = None, "https"
        if self.endpoint_url:
            parsed = urlparse(self.endpoint_url)
            endpoint, scheme = parsed.netloc, parsed.scheme or "https"
        return pafs.S3FileSystem(
            region=self.region,
            endpoint_override=endpoint,
            scheme=scheme,
            connect_timeout=5.0,
            request_timeout=30.0,
            # The store retries whole objects itself (retry.py); the SDK's own
            # retries only smooth over single dropped requests.
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
            # Small objects then go up as one PutObject at close, not a
            # multipart upload: fewer requests, and atomic either way.
            allow_delayed_open=True,
            allow_bucket_creation=False,
            allow_bucket_deletion=False,
        )

    def boto3_client(self, *, quick: bool = False) -> Any:
        """An S3 client for listing, deleting and checks. ``quick`` gives short
        time-outs (seconds) and one retry, for the start-up check."""
        import boto3
        from botocore.config import Config

        cfg = Config(
            connect_timeout=2 if quick else 5,
            read_timeout=5 if quick else 60,
            # max_attempts counts the first try: quick = one retry.
            retries={"max_attempts": 2 if quick else 3, "mode": "standard"},
            s3={"addressing_style": "path"} if self.endpoint_url else {},
        )
        with _client_lock:  # boto3 sessions are not thread-safe to create
            session = boto3.session.Session()
            return session.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=cfg
            )

    @cached_property
    def _client(self) -> Any:
        return self.boto3_client()


def resolve_root(
    root: str | os.PathLike[str] | StoreRoot,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> StoreRoot:
    """Parse ``file:///abs/path``, a plain path, or ``s3://bucket/prefix``.

    Raises ``StoreConfigError`` for other schemes and for credentials embedded
    in the URI (they belong in the environment or a profile, never in a URI
    that ends up in logs).
    """
    if isinstance(root, StoreRoot):
        return root
    text = os.fspath(root)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        if parsed.username or parsed.password or "@" in parsed.netloc:
            raise StoreConfigError(
                "credentials in the store URI are not allowed; use AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY or an AWS profile"
            )
        bucket, prefix = parsed.netloc, parsed.path.strip("/")
        if any(part in (".", "..") for part in prefix.split("/")):
            raise StoreConfigError(
                f"store URI {text!r}: '.' and '..' are not allowed in an S3 prefix"
            )
        if not bucket:
            raise StoreConfigError(
                f"store URI {text!r} names no bucket (expected s3://bucket/prefix)"
            )
        endpoint = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        if endpoint and urlparse(endpoint).password:
            raise StoreConfigError("credentials in the endpoint URL are not allowed")
        reg = region or _default_region(endpoint, bucket)
        base = f"{bucket}/{prefix}" if prefix else bucket
        uri = f"s3://{base}"
        return StoreRoot(uri, "s3", base, bucket, prefix, endpoint, reg)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreConfigError(f"store URI {text!r}: use file:///absolute/path")
        path = parsed.path
    elif parsed.scheme and len(parsed.scheme) > 1:  # len 1: a Windows drive letter
        raise StoreConfigError(f"store URI {text!r}: scheme must be file:// or s3://")
    else:
        path = text
    path = os.path.abspath(os.path.expanduser(path)).rstrip("/") or "/"
    return StoreRoot(f"file://{path}", "file", path)


def _default_region(endpoint: str | None, bucket: str) -> str:
    import boto3

    region = boto3.session.Session().region_name
    if region:
        return str(region)
    if endpoint is None:  # real AWS: ask where the bucket lives
        try:
            return str(pafs.resolve_s3_region(bucket))
        except OSError:
            pass
    return "us-east-1"


# ---------------------------------------------------------------- object operations


def put_bytes(root: StoreRoot, key: str, data: bytes) -> None:
    """Write ``data`` at ``key`` so that readers see the old object or the new
    one, never a partial one.

    Local: a hidden temp file in the same folder, fsync, ``os.replace``.
    S3: one PutObject (or a multipart upload, which is invisible until it
    completes); a failed upload leaves the old object in place.
    """
    if root.is_s3:
        with root.filesystem.open_output_stream(root.path(key)) as out:
            out.write(data)
        return
    final = root.path(key)
    folder, name = os.path.split(final)
    os.makedirs(folder, exist_ok=True)
    # Leading "." keeps pyarrow datasets and "*.parquet" globs off the temp file.
    tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(folder)


def get_bytes(root: StoreRoot, key: str) -> bytes:
    if root.is_s3:
        with root.filesystem.open_input_stream(root.path(key)) as f:
            return bytes(f.read())
    with open(root.path(key), "rb") as fh:
        return fh.read()


def exists(root: StoreRoot, key: str) -> bool:
    info = root.filesystem.get_file_info(root.path(key))
    return bool(info.type != pafs.FileType.NotFound)


def list_objects(
    root: StoreRoot, folder: str, name_prefix: str = "", *, include_hidden: bool = False
) -> list[ObjectInfo]:
    """Objects directly inside ``folder`` (relative to the root) whose names
    start with ``name_prefix``, sorted by key. Names starting with '.' or '_'
    (temp files) are skipped unless ``include_hidden``."""
    folder = folder.strip("/")
    out: list[ObjectInfo] = []
    if root.is_s3:
        pager = root._client.get_paginator("list_objects_v2")
        full = root.s3_key(f"{folder}/{name_prefix}")
        strip = len(root.prefix) + 1 if root.prefix else 0
        for page in pager.paginate(Bucket=root.bucket, Prefix=full, Delimiter="/"):
            for obj in page.get("Contents", []):
                out.append(
                    ObjectInfo(
                        obj["Key"][strip:], int(obj["Size"]), obj["LastModified"].timestamp()
                    )
                )
    else:
        try:
            entries = list(os.scandir(root.path(folder)))
        except FileNotFoundError:
            return []
        for e in entries:
            if not e.name.startswith(name_prefix):
                continue
            if not include_hidden and e.name.startswith((".", "_")):
                continue  # a temp file another writer may rename away under us
            try:
                if not e.is_file():
                    continue
                st = e.stat()
            except FileNotFoundError:
                continue  # gone since the listing: renamed or deleted by a writer
            out.append(ObjectInfo(f"{folder}/{e.name}", st.st_size, st.st_mtime))
    if not include_hidden:
        out = [o for o in out if not o.key.rsplit("/", 1)[-1].startswith((".", "_"))]
    return sorted(out, key=lambda o: o.key)


def list_folders(root: StoreRoot, folder: str) -> list[str]:
    """Names of the folders directly inside ``folder`` (relative to the root), sorted."""
    folder = folder.strip("/")
    names: set[str] = set()
    if root.is_s3:
        pager = root._client.get_paginator("list_objects_v2")
        full = root.s3_key(f"{folder}/")
        for page in pager.paginate(Bucket=root.bucket, Prefix=full, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.add(common["Prefix"][len(full) :].strip("/"))
    else:
        try:
            names = {e.name for e in os.scandir(root.path(folder)) if e.is_dir()}
        except (FileNotFoundError, NotADirectoryError):
            return []
    return sorted(n for n in names if n)


def delete_objects(root: StoreRoot, keys: list[str]) -> None:
    """Delete ``keys`` (relative to the root); missing keys are fine."""
    if not keys:
        return
    if not root.is_s3:
        for k in keys:
            try:
                os.remove(root.path(k))
            except FileNotFoundError:
                pass
        return
    for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": root.s3_key(k)} for k in keys[i : i + 1000]]
        resp = root._client.delete_objects(
            Bucket=root.bucket, Delete={"Objects": batch, "Quiet": True}
        )
        errors = resp.get("Errors") or []
        if errors:
            first = errors[0]
            raise OSError(
                f"could not delete {len(errors)} object(s), e.g. {first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message')}"
            )


def _fsync_dir(folder: str) -> None:
    # Makes the rename itself durable; not supported on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
