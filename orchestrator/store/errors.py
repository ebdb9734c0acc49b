"""Exceptions raised by the result store.

Every message is written for a person reading a log: it names the root and the
object involved and says what to check. No message ever contains credentials.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class StoreConfigError(StoreError):
    """The root cannot be used: bad URI, missing bucket, bad credentials,
    access denied or an unreachable endpoint. Raised by ``check_store`` before
    any GPU work starts."""


class StoreNameError(StoreConfigError, ValueError):
    """A study or file-set name that is not a plain folder name (``../x``,
    ``/abs``, ``a/b``): names never reach outside their place in the root."""


class StoreWriteError(StoreError):
    """A write failed for good (a permanent error, or transient errors that
    outlasted the retry policy). The caller should keep the trial pending: no
    partial trial is ever visible, so rewriting it later is safe.

    ``permanent`` is true when no retry can fix it by itself (a missing bucket,
    access denied, bad credentials): someone has to change the store."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class NoSuchStudy(StoreError):
    """A read command named a study the root does not hold."""


class StudyConfigMismatch(StoreError):
    """A study of this name already exists in the root with a different config."""
