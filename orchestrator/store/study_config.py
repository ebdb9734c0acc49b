"""The copy of the resolved study config kept next to the tables.

``_studies/<study>/config.json`` holds the config after redaction, and its
hash is the ``config_hash`` stamped on every row. Redaction removes:

- values under secret-looking keys (``password``, ``secret_key``,
  ``aws_session_token``, ``hf_token``, ``api_key``, ...; but not
  ``max_new_tokens`` or ``token_selection``, which a steering config has);
- any occurrence of the AWS credentials in the current environment;
- passwords inside URLs (``https://user:pw@host``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from orchestrator.store import schemas as S
from orchestrator.store.errors import StudyConfigMismatch
from orchestrator.store.retry import RetryPolicy, with_retries
from orchestrator.store.roots import StoreRoot, exists, get_bytes, put_bytes, resolve_root

REDACTED = "<redacted>"
_SECRET_WORDS = {
    "secret",
    "password",
    "passwd",
    "passphrase",
    "credential",
    "credentials",
    "apikey",
    "accesskey",
    "secretkey",
    "privatekey",
    "authorization",
}
_SECRET_PAIRS = {
    ("api", "key"),
    ("access", "key"),
    ("secret", "key"),
    ("private", "key"),
    ("session", "token"),
    ("access", "token"),
    ("auth", "token"),
    ("bearer", "token"),
    ("refresh", "token"),
    ("id", "token"),
}
# "<x>_token" is a secret unless x says it is a count or a special token.
_TOKEN_NOT_SECRET = {"max", "min", "num", "n", "pad", "bos", "eos", "unk", "sep", "cls", "mask"}
_TOKEN_NOT_SECRET |= {"start", "end", "stop", "special", "target", "first", "last", "per"}
_ENV_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/:@\s]+):[^/@\s]+@")


def _words(key: str) -> list[str]:
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)  # camelCase -> camel_Case
    return [w for w in re.split(r"[^a-z0-9]+", key.lower()) if w]


def is_secret_key(key: str) -> bool:
    """True for keys whose values look like credentials."""
    words = _words(key)
    if not words:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    if any(pair in _SECRET_PAIRS for pair in zip(words, words[1:], strict=False)):
        return True
    if words[-1] == "token":
        return len(words) == 1 or words[-2] not in _TOKEN_NOT_SECRET
    return False


def redact(config: Any) -> Any:
    """A deep copy of ``config`` with secrets replaced by ``"<redacted>"``."""
    env_secrets = [v for k in _ENV_SECRETS if len(v := os.environ.get(k, "")) >= 4]
    return _redact(config, env_secrets)


def _redact(obj: Any, env_secrets: list[str]) -> Any:
    if isinstance(obj, Mapping):
        return {
            str(k): REDACTED if is_secret_key(str(k)) and v is not None else _redact(v, env_secrets)
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [_redact(v, env_secrets) for v in obj]
    if isinstance(obj, str):
        for s in env_secrets:
            obj = obj.replace(s, REDACTED)
        return _URL_PASSWORD.sub(rf"\g<head>:{REDACTED}@", obj)
    return obj


def canonical_json(config: Mapping[str, Any]) -> str:
    """Redacted config as JSON with sorted keys: the text that is hashed and stored."""
    return json.dumps(redact(config), sort_keys=True, indent=2, default=str, allow_nan=True)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex, 16 digits) of the redacted, canonical config."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def save_study_config(
    root: str | os.PathLike[str] | StoreRoot,
    study: str,
    config: Mapping[str, Any],
    *,
    overwrite: bool = False,
    retry: RetryPolicy | None = None,
) -> str:
    """Store the redacted ``config`` of ``study`` and return its hash.

    Saving the same config again is a no-op, which is what a resumed run does.
    A different config under the same study name raises
    ``StudyConfigMismatch`` unless ``overwrite``: results of two configs must
    not mix silently.
    """
    r = resolve_root(root)
    S.check_study_name(study)
    key = S.config_key(study)
    text = canonical_json(config)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    old = load_study_config(r, study)
    if old is not None and not overwrite:
        old_hash = config_hash(old)
        if old_hash == digest:
            return digest
        raise StudyConfigMismatch(
            f"study {study!r} in {r.uri} was created with config {old_hash}, "
            f"this config is {digest}; use a new study name or overwrite=True"
        )
    with_retries(
        lambda: put_bytes(r, key, text.encode()),
        what=f"put {r.display(key)}",
        policy=retry or RetryPolicy(),
    )
    return digest


def load_study_config(
    root: str | os.PathLike[str] | StoreRoot, study: str
) -> dict[str, Any] | None:
    """The stored (redacted) config of ``study``, or None if none was saved."""
    r = resolve_root(root)
    key = S.config_key(study)
    if not exists(r, key):
        return None
    loaded: dict[str, Any] = json.loads(get_bytes(r, key))
    return loaded
