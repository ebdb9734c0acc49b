"""Retries with exponential backoff for store I/O.

Errors are sorted into transient (worth retrying: lost connections, time-outs,
HTTP 5xx, throttling) and permanent (access denied, missing bucket, full disk,
a bug). pyarrow's S3 client reports failures as ``OSError`` whose message holds
the AWS error name, so that message is what gets classified for S3.
"""

from __future__ import annotations

import errno
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from orchestrator.store.errors import StoreWriteError

log = logging.getLogger(__name__)
T = TypeVar("T")

# AWS error names (pyarrow spells them in upper snake case, botocore in camel
# case) that no retry can fix.
_PERMANENT_S3 = re.compile(
    r"ACCESS_DENIED|AccessDenied|NO_SUCH_BUCKET|NoSuchBucket|INVALID_ACCESS_KEY_ID|"
    r"InvalidAccessKeyId|SIGNATURE_DOES_NOT_MATCH|SignatureDoesNotMatch|EXPIRED_TOKEN|"
    r"ExpiredToken|InvalidBucketName|HTTP status (400|401|403|404|405)\b"
)
_TRANSIENT_S3 = re.compile(
    r"NETWORK_CONNECTION|SLOW_DOWN|SlowDown|THROTTLING|Throttl|SERVICE_UNAVAILABLE|"
    r"ServiceUnavailable|INTERNAL_FAILURE|InternalError|REQUEST_TIMEOUT|RequestTimeout|"
    r"curlCode|HTTP status 5\d\d|Could not connect|Connection reset|timed out"
)
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.EIO, errno.ETIMEDOUT}


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` is worth retrying."""
    try:  # botocore is optional at import time for local-only use
        import botocore.exceptions as bce

        if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError)):
            return True
        if isinstance(exc, bce.ClientError):
            err = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            code = str(err.get("Code", ""))
            return status >= 500 or status == 429 or bool(_TRANSIENT_S3.search(code))
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(exc, OSError):
        return False  # ValueError, TypeError, ...: a bug or bad input, not the network
    msg = str(exc)
    if _PERMANENT_S3.search(msg):
        return False
    if _TRANSIENT_S3.search(msg):
        return True
    if exc.errno is not None:
        return exc.errno in _TRANSIENT_ERRNOS
    # An OSError with no errno and no AWS error name we know: retrying costs a
    # few seconds, failing would cost a trial, so retry.
    return not isinstance(exc, (PermissionError, FileNotFoundError, IsADirectoryError))


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry a transient failure.

    The delay before attempt ``k`` (``k >= 1`` retries so far) is
    ``min(max_delay_s, base_delay_s * 2**(k-1))``, times a random factor in
    ``[0.5, 1]`` when ``jitter`` is on. The default waits about 15 s in total
    over 6 attempts, enough to ride out an endpoint restart.
    """

    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("RetryPolicy delays must be >= 0")

    def delay_s(self, retry: int) -> float:
        """Seconds to sleep before retry number ``retry`` (1-based)."""
        d = min(self.max_delay_s, self.base_delay_s * 2 ** (retry - 1))
        return d * random.uniform(0.5, 1.0) if self.jitter else d


@dataclass
class RetryStats:
    """Counts kept across calls, so a caller can report how bumpy a write was."""

    attempts: int = 0
    retries: int = 0


@dataclass
class Outage:
    """The store's outages as a user reads them in the log: one WARNING when
    store errors begin (what failed, and that it is retried), at most one a
    minute while they last (failed attempts so far, by kind), and one WARNING
    when an operation of a kind that failed succeeds again; every single
    attempt goes to DEBUG (``--debug``). A failure after ``every_s`` without
    one starts a new outage. One per process, :data:`OUTAGES`:
    store I/O retries, the committer's backoff, lease renewals and the
    read-back all report here, so one outage is one story.
    """

    every_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    since: float | None = None
    said: float = 0.0
    last_failure: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    last: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def failed(self, kind: str, detail: str, then: str = "retried") -> None:
        """One failed attempt of ``kind`` ("write", "read", "lease renewal"...)."""
        log.debug("store %s failed (%s): %s", kind, then, detail)
        with self._lock:
            now = self.clock()
            if self.since is not None and now - self.last_failure > self.every_s:
                # Nothing failed for a while and nothing said it works again (the
                # run that saw it ended, say): this failure starts a new outage.
                self.since, self.counts = None, {}
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.last, self.last_failure = detail, now
            if self.since is None:
                self.since, self.said = now, now
                log.warning(
                    "store errors: a %s failed and is %s (further attempts: --debug): %s",
                    kind,
                    then,
                    detail,
                )
            elif now - self.said >= self.every_s:
                self.said = now
                log.warning(
                    "store still failing after %.0f s (%s); last error: %s",
                    now - self.since,
                    self._counted(),
                    detail,
                )

    def succeeded(self, kind: str) -> None:
        """An operation of ``kind`` succeeded: the outage ends if that kind failed in it."""
        if self.since is None or kind not in self.counts:  # the common case: no lock
            return
        with self._lock:
            if self.since is None or kind not in self.counts:
                return
            log.warning(
                "store working again after %.0f s (%s failed and were retried)",
                self.clock() - self.since,
                self._counted(),
            )
            self.since, self.counts, self.last = None, {}, ""

    def reset(self) -> None:
        """Forget an outage in progress, without a line."""
        with self._lock:
            self.since, self.counts, self.last = None, {}, ""

    def _counted(self) -> str:
        return ", ".join(f"{n} {k} attempt(s)" for k, n in sorted(self.counts.items()))


OUTAGES = Outage()
"""The process's one :class:`Outage`."""


def with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy,
    stats: RetryStats | None = None,
) -> T:
    """Call ``fn`` until it succeeds, retrying transient errors per ``policy``.

    Raises ``StoreWriteError`` (with the last error as its cause) on a
    permanent error or when the attempts run out. ``what`` names the operation
    in messages, e.g. ``"put s3://bucket/prefix/trials/..."``.
    """
    start = time.monotonic()
    for attempt in range(1, policy.max_attempts + 1):
        if stats is not None:
            stats.attempts += 1
        try:
            out = fn()
        except Exception as exc:
            elapsed = time.monotonic() - start
            if not is_transient(exc):
                raise StoreWriteError(
                    f"{what} failed with a permanent error after {attempt} attempt(s): "
                    f"{_short(exc)}",
                    permanent=True,
                ) from exc
            if attempt == policy.max_attempts:
                raise StoreWriteError(
                    f"{what} still failing after {attempt} attempts over {elapsed:.1f} s; "
                    f"last error: {_short(exc)}"
                ) from exc
            delay = policy.delay_s(attempt)
            OUTAGES.failed(
                "store call",
                f"{what} (attempt {attempt}/{policy.max_attempts}): {_short(exc)}",
                f"retried in {delay:.2f} s",
            )
            if stats is not None:
                stats.retries += 1
            time.sleep(delay)
            continue
        OUTAGES.succeeded("store call")
        return out
    raise AssertionError("unreachable")  # pragma: no cover


def _short(exc: BaseException, limit: int = 400) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
