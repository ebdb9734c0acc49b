"""One writer per study: a lease object with a heartbeat.

A run takes the lease of its study before it writes anything
(``_studies/<study>/lease.json``: the run's id, host, pid, start time and last
heartbeat) and renews it every ``heartbeat_s`` from a background thread. A
second run of the same study finds the lease and refuses (:class:`LeaseHeld`,
naming the holder and its host), unless

- the lease is **stale**: no heartbeat for ``stale_s`` seconds (the holder was
  killed, or lost its network); or
- the holder ran **on this host and its process is gone** (a killed driver
  resumed on the same machine need not wait for the lease to go stale); or
- the run says ``force`` (``steer-sweep run --force-lease``).

A run whose lease was taken over notices at its next heartbeat
(:attr:`StudyLease.lost`) and stops, so two drivers never keep writing one
study. Read commands and ``compact`` do not take the lease.

Each read-decide-write is atomic. On a local folder it holds an ``fcntl``
lock on ``.lease.lock`` beside the lease, and the lease itself is replaced
whole (``put_bytes``). On S3 it is a conditional PutObject: ``If-None-Match: *``
to create, ``If-Match: <etag>`` to renew or take over; an endpoint that does
not support conditional writes (it answers 501) gets plain writes, each read
back to see who holds the lease, so two runs started within the same second
both notice within one heartbeat and one of them stops. Staleness compares
the holder's heartbeat time with this machine's clock: hosts should agree on
the time to within a few seconds (NTP).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.store import schemas as S
from orchestrator.store.errors import StoreError
from orchestrator.store.retry import OUTAGES
from orchestrator.store.roots import StoreRoot, delete_objects, get_bytes, put_bytes

log = logging.getLogger(__name__)

DEFAULT_STALE_S = 60.0


class LeaseHeld(StoreError):
    """Another run holds the study's lease; the message names it."""


class LeaseLost(StoreError):
    """This run's lease was taken over by another run while it ran."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease. Times are seconds since the epoch (UTC)."""

    run_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    command: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @staticmethod
    def from_json(data: bytes) -> Holder | None:
        try:
            raw = json.loads(data)
            return Holder(
                run_id=str(raw["run_id"]),
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                started_at=float(raw["started_at"]),
                heartbeat_at=float(raw["heartbeat_at"]),
                command=str(raw.get("command", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated as absent, and overwritten

    def describe(self, now: float) -> str:
        return (
            f"run {self.run_id} on host {self.host} (pid {self.pid}), started "
            f"{_ago(now - self.started_at)} ago, last heartbeat {_ago(now - self.heartbeat_at)} ago"
        )


def _ago(seconds: float) -> str:
    s = max(0.0, seconds)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


def lease_key(study: str) -> str:
    return f"_studies/{S.check_study_name(study)}/lease.json"


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return False


class StudyLease:
    """The lease of one study for one run; see the module docstring."""

    def __init__(
        self,
        root: StoreRoot,
        study: str,
        *,
        stale_s: float = DEFAULT_STALE_S,
        heartbeat_s: float | None = None,
        command: str = "",
    ) -> None:
        if not stale_s > 0:
            raise ValueError(f"stale_s must be positive, got {stale_s}")
        self.root, self.study, self.key = root, study, lease_key(study)
        self.stale_s = stale_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else stale_s / 6
        now = time.time()
        self.me = Holder(
            uuid.uuid4().hex[:12], socket.gethostname(), os.getpid(), now, now, command
        )
        self.lost: str | None = None  # why, once another run has taken the lease
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False
        self._conditional = True  # S3: until the endpoint says it cannot

    # ------------------------------------------------------------ public

    def acquire(self, *, force: bool = False) -> Holder | None:
        """Take the lease; returns the holder it was taken from, if any.

        Raises:
            LeaseHeld: another live run holds it (and ``force`` is off).
        """
        for _ in range(5):
            with self._locked():
                current, etag = self._read()
                now = time.time()
                if current is None:
                    if self._write(self._beat(now), etag=None, create=True):
                        self._held = True
                        return None
                    continue
                if current.run_id == self.me.run_id:
                    self._held, self._etag = True, etag
                    return None
                why = self._free(current, now)
                if why is None and not force:
                    raise LeaseHeld(self._held_message(current, now))
                if self._write(self._beat(now), etag=etag, create=False):
                    self._held = True
                    log.warning(
                        "study %s: took over the lease of %s (%s)",
                        self.study,
                        current.describe(now),
                        why or "--force-lease",
                    )
                    return current
        raise LeaseHeld(
            f"study {self.study!r} in {self.root.uri}: could not take its lease; another run "
            "is taking it at the same time. Run `steer-sweep status` to see the study, then "
            "retry."
        )

    def refuse_if_held(self, *, force: bool = False) -> None:
        """:meth:`acquire`'s refusal, read-only: for a run to refuse before it
        starts anything (Ray, actors) when another live run holds the study.
        :meth:`acquire` checks again.

        Raises:
            LeaseHeld: another live run holds it (and ``force`` is off).
        """
        current, _ = self._read()
        now = time.time()
        if current is not None and current.run_id != self.me.run_id and not force:
            if self._free(current, now) is None:
                raise LeaseHeld(self._held_message(current, now))

    def renew(self) -> bool:
        """One heartbeat. Returns False (and sets :attr:`lost`) when another run
        holds the lease now; a store error only logs and keeps the lease."""
        if not self._held or self.lost:
            return False
        try:
            with self._locked():
                current, etag = self._read()
                now = time.time()
                if current is not None and current.run_id != self.me.run_id:
                    self.lost = current.describe(now)
                elif not self._write(self._beat(now), etag=etag, create=current is None):
                    current, _ = self._read()
                    if current is not None and current.run_id != self.me.run_id:
                        self.lost = current.describe(now)
        except Exception as exc:  # noqa: BLE001 - the store may be down: retry next beat
            OUTAGES.failed("lease renewal", f"study {self.study}: {exc}", "retried next heartbeat")
            return True
        OUTAGES.succeeded("lease renewal")
        if self.lost:
            log.error("study %s: the lease was taken over by %s", self.study, self.lost)
            self._held = False
            return False
        return True

    def start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._beat_loop, name=f"lease-{self.study}", daemon=True
        )
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if this run still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if not self._held:
            return
        try:
            with self._locked():
                current, _ = self._read()
                if current is not None and current.run_id == self.me.run_id:
                    delete_objects(self.root, [self.key])
        except Exception as exc:  # noqa: BLE001 - it goes stale on its own
            log.warning("study %s: could not release the lease (%s)", self.study, exc)
        self._held = False

    def lost_error(self) -> LeaseLost:
        return LeaseLost(
            f"study {self.study!r} in {self.root.uri}: this run's lease was taken over by "
            f"{self.lost}, so this run stopped to leave the study to it. The trials this run "
            "finished are in the store; the other run resumes from them."
        )

    def __enter__(self) -> StudyLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------ internals

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.renew():
                return

    def _beat(self, now: float) -> Holder:
        self.me = Holder(
            self.me.run_id, self.me.host, self.me.pid, self.me.started_at, now, self.me.command
        )
        return self.me

    def _free(self, holder: Holder, now: float) -> str | None:
        """Why ``holder``'s lease may be taken, or None if it may not."""
        if now - holder.heartbeat_at > self.stale_s:
            return f"no heartbeat for {_ago(now - holder.heartbeat_at)}"
        if holder.host == self.me.host and holder.pid != self.me.pid and _process_gone(holder.pid):
            return f"its process {holder.pid} on this host is gone"
        return None

    def _held_message(self, holder: Holder, now: float) -> str:
        wait = max(0.0, self.stale_s - (now - holder.heartbeat_at))
        return (
            f"study {self.study!r} in {self.root.uri} is being run by {holder.describe(now)}. "
            "Two runs of one study would both run every trial. Wait for that run to finish "
            f"(see `steer-sweep status {self.study} --root {self.root.uri}`); if it is gone, "
            f"its lease goes stale {_ago(wait)} after its last heartbeat "
            f"(store.lease_stale_s = {self.stale_s:g}), or rerun with --force-lease to take "
            "it now."
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self.root.is_s3:
            yield  # conditional writes do the locking
            return
        import fcntl

        path = self.root.path(self.key)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, ".lease.lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self) -> tuple[Holder | None, str | None]:
        if not self.root.is_s3:
            try:
                data = get_bytes(self.root, self.key)
            except FileNotFoundError:
                return None, None
            return Holder.from_json(data), None
        import botocore.exceptions as bce

        client = self.root.boto3_client()
        try:
            resp = client.get_object(Bucket=self.root.bucket, Key=self.root.s3_key(self.key))
        except bce.ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None, None
            raise
        return Holder.from_json(resp["Body"].read()), str(resp.get("ETag", ""))

    def _write(self, holder: Holder, *, etag: str | None, create: bool) -> bool:
        """Write the lease; False when a condition failed (another run won)."""
        data = holder.to_json()
        if not self.root.is_s3:
            put_bytes(self.root, self.key, data)  # under the lock
            return True
        import botocore.exceptions as bce

        client = self.root.boto3_client()
        args: dict[str, Any] = {
            "Bucket": self.root.bucket,
            "Key": self.root.s3_key(self.key),
            "Body": data,
            "ContentType": "application/json",
        }
        if self._conditional:
            if create:
                args["IfNoneMatch"] = "*"
            elif etag:
                args["IfMatch"] = etag
        try:
            resp = client.put_object(**args)
        except bce.ClientError as exc:
            code = _code(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            if code in ("NotImplemented", "501") and self._conditional:
                log.warning(
                    "%s does not support conditional writes; the study lease falls back to "
                    "writing and reading back",
                    self.root.endpoint_url or "this S3 endpoint",
                )
                self._conditional = False
                return self._write(holder, etag=etag, create=create)
            raise
        self._etag = str(resp.get("ETag", ""))
        if not self._conditional:
            current, _ = self._read()
            return current is not None and current.run_id == holder.run_id
        return True


def _code(exc: Any) -> str:
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status or "")


def read_holder(root: StoreRoot, study: str) -> Holder | None:
    """The current holder of a study's lease, or None (for ``status`` and ``compact``)."""
    try:
        data = get_bytes(root, lease_key(study))
    except (FileNotFoundError, OSError):
        return None
    return Holder.from_json(data)
