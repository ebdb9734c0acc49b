"""Start-up check of a store root, and clean-up of stale partial uploads.

``check_store`` runs before any GPU work: it turns the usual S3 failures
(unreachable endpoint, missing bucket, unknown key, wrong secret, denied
access, no credentials at all) into one readable ``StoreConfigError``. It uses
boto3 with short time-outs and one retry so that a bad setting fails in
seconds, then writes and deletes a probe object through the same pyarrow
client the data will use.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from orchestrator.store.errors import StoreConfigError
from orchestrator.store.roots import StoreRoot, delete_objects, put_bytes, resolve_root

_CODE_HINTS = {
    "NoSuchBucket": "bucket {bucket!r} does not exist at {endpoint}; create it first",
    "InvalidAccessKeyId": (
        "the access key was not recognised by {endpoint}; check AWS_ACCESS_KEY_ID "
        "or the AWS profile in use"
    ),
    "SignatureDoesNotMatch": (
        "the secret key does not match the access key; check AWS_SECRET_ACCESS_KEY "
        "or the AWS profile in use"
    ),
    "AccessDenied": (
        "access denied to {uri}: the credentials need s3:ListBucket, s3:GetObject, "
        "s3:PutObject and s3:DeleteObject there"
    ),
    "ExpiredToken": "the session token has expired; refresh the credentials",
    "InvalidToken": "the session token is invalid; refresh the credentials",
    "InvalidBucketName": "{bucket!r} is not a valid bucket name",
}


@dataclass(frozen=True)
class StoreCheck:
    """What ``check_store`` found: the root, endpoint (None for AWS), region,
    and how long the check took, in seconds."""

    uri: str
    endpoint_url: str | None
    region: str | None
    seconds: float


def check_store(
    root: str | os.PathLike[str] | StoreRoot,
    *,
    endpoint_url: str | None = None,
    probe_write: bool = True,
) -> StoreCheck:
    """Fail fast, with a readable ``StoreConfigError``, if ``root`` is unusable.

    ``probe_write`` also writes and deletes a small object under
    ``<root>/_check/`` of an S3 root, so read-only credentials are caught now
    rather than at the first trial. A local root is checked by
    :func:`check_local_root`, which leaves nothing behind.
    """
    t0 = time.monotonic()
    r = resolve_root(root, endpoint_url=endpoint_url)
    if not r.is_s3:
        check_local_root(r.path(""))
        return StoreCheck(r.uri, None, None, time.monotonic() - t0)
    _check_s3(r)
    if probe_write:
        key = f"_check/{uuid.uuid4().hex}.probe"
        try:
            put_bytes(r, key, b"steer-sweep write probe\n")
            delete_objects(r, [key])
        except Exception as exc:
            raise StoreConfigError(
                f"the store {r.uri} is readable but a test write failed: {_explain(exc, r)}"
            ) from exc
    return StoreCheck(r.uri, r.endpoint_url, r.region, time.monotonic() - t0)


def check_local_root(path: str) -> None:
    """A local root is a folder this user can write in, or can be created: its
    nearest existing parent is a folder this user can write in. Tested by
    making and removing a temporary folder there (``os.access`` says yes to
    root for read-only file systems such as /proc); nothing is left behind.

    Raises:
        StoreConfigError: not a folder, or not writable.
    """
    import tempfile

    path = os.path.abspath(path.rstrip("/") or "/")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = (
            "exists and is not a folder"
            if existing == path
            else f"does not exist and cannot be created: {existing} is a file, not a writable folder"
        )
        raise StoreConfigError(f"{path} {what}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".steer-sweep-probe-", dir=existing))
    except OSError as exc:
        where = (
            "is not writable"
            if existing == path
            else (f"does not exist and cannot be created: {existing} is not a writable folder")
        )
        raise StoreConfigError(f"{path} {where} ({exc.strerror or exc})") from None


def _check_s3(r: StoreRoot) -> None:
    import boto3
    import botocore.exceptions as bce

    where = r.endpoint_url or "AWS S3"
    if boto3.session.Session().get_credentials() is None:
        raise StoreConfigError(
            f"no AWS credentials found for {r.uri}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        )
    client = r.boto3_client(quick=True)
    try:
        client.list_objects_v2(
            Bucket=r.bucket, Prefix=f"{r.prefix}/" if r.prefix else "", MaxKeys=1
        )
    except (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError) as exc:
        raise StoreConfigError(
            f"cannot reach the S3 endpoint {where} for {r.uri}: {type(exc).__name__}; "
            "check AWS_ENDPOINT_URL / endpoint_url and the network"
        ) from exc
    except bce.NoCredentialsError as exc:
        raise StoreConfigError(f"no AWS credentials found for {r.uri}") from exc
    except bce.ClientError as exc:
        raise StoreConfigError(f"S3 check of {r.uri} failed: {_explain(exc, r)}") from exc
    except bce.BotoCoreError as exc:
        raise StoreConfigError(f"S3 check of {r.uri} failed: {type(exc).__name__}: {exc}") from exc


def _explain(exc: BaseException, r: StoreRoot) -> str:
    """A readable reason for a boto3 or pyarrow error; never includes credentials."""
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if not code or code == str(status):  # HEAD-style errors carry only a status
            code = {403: "AccessDenied", 404: "NoSuchBucket"}.get(status or 0, code)
    else:
        text = str(exc).upper().replace("_", "")
        for known in _CODE_HINTS:
            if known.upper() in text:
                code = known
                break
    fmt = {"bucket": r.bucket, "endpoint": r.endpoint_url or "AWS S3", "uri": r.uri}
    if code in _CODE_HINTS:
        return f"{code}: " + _CODE_HINTS[code].format(**fmt)
    if isinstance(exc, PermissionError):
        return f"permission denied writing under {r.uri}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class CleanupReport:
    aborted_uploads: int
    removed_temp_files: int


def cleanup(
    root: str | os.PathLike[str] | StoreRoot,
    *,
    older_than_s: float = 86400.0,
    endpoint_url: str | None = None,
) -> CleanupReport:
    """Remove what interrupted writes leave behind, if older than ``older_than_s`` seconds.

    S3: abort incomplete multipart uploads under the prefix (invisible, but
    billed). Local: delete hidden ``.*.tmp-*`` files. Keep the age well above
    the longest upload time so a running write is never cut off.
    """
    r = resolve_root(root, endpoint_url=endpoint_url)
    cutoff = time.time() - older_than_s
    if r.is_s3:
        client = r._client
        aborted = 0
        pager = client.get_paginator("list_multipart_uploads")
        prefix = f"{r.prefix}/" if r.prefix else ""
        limit = datetime.now(timezone.utc) - timedelta(seconds=older_than_s)
        for page in pager.paginate(Bucket=r.bucket, Prefix=prefix):
            for up in page.get("Uploads", []):
                if up["Initiated"] <= limit:
                    client.abort_multipart_upload(
                        Bucket=r.bucket, Key=up["Key"], UploadId=up["UploadId"]
                    )
                    aborted += 1
        return CleanupReport(aborted, 0)
    removed = 0
    for dirpath, _dirs, files in os.walk(r.base):
        for name in files:
            path = os.path.join(dirpath, name)
            if name.startswith(".") and ".tmp-" in name and os.path.getmtime(path) <= cutoff:
                os.remove(path)
                removed += 1
    return CleanupReport(0, removed)
