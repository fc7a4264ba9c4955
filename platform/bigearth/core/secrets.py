"""Secrets stay secret: the one place that decides what a credential looks like and keeps it out of what is stored,
printed or handed to Ray.

- `redact(obj)`: a copy of a config, record or message with every credential masked: the password (or a lone token)
  in a URL's user info, the values of query and fragment parameters such as `token`, `password`, `key`,
  `X-Amz-Signature`, the values of fields named like a secret (`secret`, `token`, `password`, `api_key`,
  `secretAccessKey`, ...), nested in mappings and lists, and `name: value` / `name=value` with such a name in free
  text (`Authorization: Bearer ***`). Used
  wherever a config is written (checkpoint `meta.json`, MLflow) or printed (logs, `bigearth train`).
- `Sealed`: a secret value that pickles without its text. Inside a Ray driver or worker the text is put into the Ray
  object store once per process and the pickle carries only the `ObjectRef`, so task and actor arguments (kept in
  Ray's task specs, the GCS and its logs) never hold it; the receiving process reads it from the object store the
  first time it is used. Without Ray it pickles as the value (a plain process pool).
- `read_secret(...)`: one secret option of a command, from a file, the environment or (warned) the command line.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, urlencode

MASK = "***"

#: Field names (lower case, `-` as `_`) whose values are secrets wherever they appear.
SECRET_NAMES = frozenset(
    {
        "secret",
        "secret_key",
        "secret_access_key",
        "aws_secret_access_key",
        "token",
        "session_token",
        "aws_session_token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "password",
        "passwd",
        "pwd",
        "api_key",
        "apikey",
        "api_keys",
        "qdrant_api_key",
        "x_api_key",
        "s3_secret",
        "client_secret",
        "private_key",
        "authorization",
        "credentials",
        "sig",
        "signature",
        "x_amz_signature",
        "x_amz_security_token",
        "x_goog_signature",
        "x_goog_credential",
        "account_key",
        "connection_string",
        "passphrase",
        "credential",
    }
)
#: Name endings that mark a secret too (`db_password`, `mlflow_tracking_token`, `github_api_key`, ...).
SECRET_SUFFIXES = (
    "_secret",
    "_password",
    "_token",
    "_api_key",
    "_apikey",
    "_api_keys",
    "_private_key",
    "_secret_key",
    "_secret_access_key",
    "_account_key",
    "_connection_string",
    "_passphrase",
    "_credentials",  # not `_credential`: X-Amz-Credential is an access key id and a scope, not a secret
)
#: Names that are secrets as a URL's query or fragment parameter only (`?key=AIza...`: Google API keys); as a
#: config field, `key` is often an access key id or a lookup key.
URL_SECRET_NAMES = frozenset({"key"})

# a URL inside free text: scheme://anything up to white space (a password may hold quotes, brackets and
# parentheses, so they do not end it: masking a little too much beats letting a password through)
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+")


# `name: value` / `name=value` in free text (`Authorization: Bearer abc`, `AWS_SECRET_ACCESS_KEY=abc`,
# `"password": "x"`); the name starts after no other name character (no quadratic rescans inside a long name)
_ASSIGNMENT = re.compile(
    r"(?<![A-Za-z0-9_.-])([A-Za-z][A-Za-z0-9_.-]{0,80})([\"']?\s*[:=]\s*)"
    r"((?:Bearer|Basic|Token)\s+)?(\"[^\"]*\"|'[^']*'|[^\s&\"']+)"
)
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def is_secret_name(name: str) -> bool:
    """`name` (any case: `secretAccessKey`, `Secret-Access-Key` and `secret_access_key` alike) names a secret."""
    n = _CAMEL.sub(r"_\1", name.strip()).lower().replace("-", "_")
    return n in SECRET_NAMES or n.endswith(SECRET_SUFFIXES)


def _secret_param(name: str) -> bool:
    return is_secret_name(name) or name.strip().lower() in URL_SECRET_NAMES


def _redact_params(text: str) -> str:
    """A query string or fragment (`a=1&token=t`) with the values of secret parameters masked."""
    pairs = parse_qsl(text, keep_blank_values=True)
    if not any(_secret_param(k) for k, _ in pairs):
        return text
    return urlencode([(k, MASK if _secret_param(k) else v) for k, v in pairs], safe="*/:")


def redact_url(url: str) -> str:
    """`url` with its credentials masked: the password of the user info (`https://user:***@host`), a user info
    without a password on http(s) (a token in the user's place: `https://***@host`), and the values of secret query
    parameters. The user info is found by hand (a password may hold characters a URL parser refuses); text without
    `scheme://` comes back unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        return url
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        if ":" in userinfo:
            authority = f"{userinfo.split(':', 1)[0]}:{MASK}@{host}"
        elif scheme.lower() in {"http", "https"}:
            authority = f"{MASK}@{host}"
    tail, hash_, fragment = tail.partition("#")
    path, qmark, query = tail.partition("?")
    if qmark:
        tail = f"{path}?{_redact_params(query)}"
    if hash_ and "=" in fragment:  # an OAuth implicit grant's `#access_token=...`
        fragment = _redact_params(fragment)
    return f"{scheme}://{authority}{tail}{hash_}{fragment}"


def _mask_assignments(text: str) -> str:
    """Every `name: value` / `name=value` of a secret's name with the value masked; after another name the scan goes
    on right after its `:` or `=` (`failed: password=x`: the value of `failed` may itself be an assignment)."""
    out, pos = [], 0
    while (m := _ASSIGNMENT.search(text, pos)) is not None:
        if is_secret_name(m.group(1)) and m.group(4) != MASK:
            out.append(text[pos : m.start(4)] + MASK)
            pos = m.end(4)
        else:
            out.append(text[pos : m.end(2)])
            pos = m.end(2)
    return "".join(out) + text[pos:]


def redact_text(text: str) -> str:
    """`text` (a message, an exception's words) with every URL in it redacted, and the value of every
    `name: value` / `name=value` whose name is a secret's (`Authorization: Bearer ***`, `password=***`)."""
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return _mask_assignments(text) if ("=" in text or ":" in text) else text


def redact(obj: Any) -> Any:
    """A copy of `obj` (mappings, lists, tuples, strings, pydantic models, `Sealed` and `SecretStr` values) with
    every credential masked; other values come back as they are."""
    if isinstance(obj, Sealed):
        return MASK
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, Mapping):
        return {
            k: (MASK if v not in (None, "", [], {}) else v) if isinstance(k, str) and is_secret_name(k) else redact(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v) for v in obj) if isinstance(obj, list) else tuple(redact(v) for v in obj)
    if hasattr(obj, "get_secret_value"):  # pydantic's SecretStr / SecretBytes
        return MASK
    if hasattr(obj, "model_dump") and callable(obj.model_dump):
        return redact(obj.model_dump())
    return obj


# --- secrets that cross process boundaries ------------------------------------------------------------------------

_refs: dict[str, Any] = {}  # text -> ObjectRef, one `ray.put` per secret and process (the owner is this process)
_refs_lock = threading.Lock()


def _ray_connected() -> bool:
    if "ray" not in sys.modules:  # never import Ray to find out
        return False
    import ray

    return bool(ray.is_initialized())


def _put(text: str) -> Any:
    """The `ObjectRef` of `text` in the object store, put once per process. The put runs on a helper thread: this
    one may be in the middle of Ray's own serialisation of a task's arguments, whose state is per thread."""
    import ray

    with _refs_lock:
        ref = _refs.get(text)
        if ref is None:
            with ThreadPoolExecutor(1, thread_name_prefix="bigearth-seal") as pool:
                ref = _refs[text] = pool.submit(ray.put, text).result()
        return ref


class Sealed:
    """A secret string that never shows itself: `str()` / `repr()` are masked, and a pickle made in a Ray process
    carries an `ObjectRef` to the text in the object store, not the text. `reveal()` gives the text (read from the
    object store the first time after such a pickle crossed into another process)."""

    __slots__ = ("_ref", "_text")

    def __init__(self, text: str) -> None:
        self._text: str | None = text
        self._ref: Any = None

    def reveal(self) -> str:
        if self._text is None:
            if not _ray_connected():
                raise RuntimeError(
                    "a sealed secret (pickled in a Ray process, where it travels as an object-store reference) can "
                    "only be read in a process of that Ray cluster; give this process its own credentials"
                )
            import ray

            self._text = ray.get(self._ref)
        assert self._text is not None
        return self._text

    def __repr__(self) -> str:
        return f"Sealed({MASK})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sealed | str):
            return self.reveal() == reveal(other)
        return NotImplemented

    def __copy__(self) -> Sealed:  # immutable
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Sealed:
        return self

    def __hash__(self) -> int:
        return hash(self.reveal())

    def __reduce__(self) -> tuple[Any, ...]:
        if self._ref is None and _ray_connected():
            self._ref = _put(self.reveal())
        if self._ref is not None:
            return (_unseal_ref, (self._ref,))
        return (Sealed, (self.reveal(),))


def _unseal_ref(ref: Any) -> Sealed:
    s = Sealed.__new__(Sealed)
    s._text, s._ref = None, ref
    return s


def reveal(value: str | Sealed | None) -> str | None:
    """The text of a secret that may be `Sealed`."""
    return value.reveal() if isinstance(value, Sealed) else value


# --- secret options of commands ----------------------------------------------------------------------------------


def read_secret_file(path: str, option: str) -> str:
    """The secret in the file `path` (surrounding white space dropped); an error names the option and the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError as e:
        raise ValueError(f"{option}: cannot read the secret file {path!r} ({e.strerror or e})") from e
    if not text:
        raise ValueError(f"{option}: the secret file {path!r} is empty")
    return text


def argv_warning(flag: str, instead: str) -> str:
    return (
        f"warning: {flag} on the command line is visible to every user of this machine (ps, /proc/<pid>/cmdline) "
        f"and is kept in shell history; use {instead}"
    )


def read_secret(value: str | None, file: str | None, env: str | None, flag: str) -> str | None:
    """One secret option: `{flag}-file` (a file holding it), else the environment variable `env`, else the value
    given as `flag` itself, which still works but prints a warning on stderr (it is visible in `ps`). Giving both
    the value and the file is an error."""
    if value and file:
        raise ValueError(f"{flag} and {flag}-file: give one of them")
    if file:
        return read_secret_file(file, f"{flag}-file")
    if value:
        instead = f"{flag}-file" + (f" or ${env}" if env else "")
        print(argv_warning(flag, instead), file=sys.stderr)
        return value
    return (os.environ.get(env) or None) if env else None
