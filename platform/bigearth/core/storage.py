"""Where data lives: any fsspec URL (local path, file://, s3://, gs://, ...) with S3 options in one place.

`StorageOptions` is a plain, picklable value: jobs build it from CLI flags / environment and hand it to Ray tasks,
which open their own filesystem with it. Its secret and session token pickle as `bigearth.core.secrets.Sealed` values:
in a Ray process only an `ObjectRef` to them travels in task arguments, never the text.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import fsspec
import pyarrow.fs as pafs
from fsspec import AbstractFileSystem

from bigearth.core.secrets import Sealed, reveal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StorageOptions:
    """Options for object stores: the one place that maps credentials onto both filesystem stacks (fsspec's s3fs
    and pyarrow's native S3).

    Credentials: an explicit key and secret (and, for temporary credentials, a session `token`), or none at all,
    in which case each process that opens the store uses the standard AWS credential chain (environment, the shared
    credentials/config files and `AWS_PROFILE`, web identity, container and instance metadata), as boto and the
    AWS C++ SDK do.
    """

    endpoint_url: str | None = None
    anon: bool = False
    key: str | None = None
    secret: str | Sealed | None = None  # read with `secret_text()` (a Sealed one after crossing to a Ray worker)
    region: str | None = None
    token: str | Sealed | None = None
    retry_s: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if bool(self.key) != bool(self.secret):
            have, lacks = ("key", "secret") if self.key else ("secret", "key")
            raise ValueError(f"S3 credentials: a {have} without a {lacks} (give both, or neither for the AWS chain)")
        if self.token and not self.key:
            raise ValueError("S3 credentials: a session token without the temporary key and secret it belongs to")
        if self.anon and self.key:
            raise ValueError("S3 credentials: anonymous access and a key at once (choose one)")
        if self.retry_s < 0:
            raise ValueError(f"retry_s: expected seconds >= 0, got {self.retry_s}")

    @classmethod
    def from_env(cls, **overrides: Any) -> StorageOptions:
        """Read `BIGEARTH_S3_ENDPOINT` / `AWS_ENDPOINT_URL`, `BIGEARTH_S3_ANON`, `AWS_ACCESS_KEY_ID`,
        `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`; explicit overrides win (an explicit key
        replaces the environment's key, secret and token together). The values travel with the Ray tasks (the
        secret and token through the object store, never in the task's arguments), so workers whose environment
        lacks them (a laptop cluster) still reach the store. With no key anywhere,
        every process resolves the AWS credential chain itself (a pod's service account, an instance profile)."""
        env: dict[str, Any] = {
            "endpoint_url": os.environ.get("BIGEARTH_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL"),
            "anon": os.environ.get("BIGEARTH_S3_ANON", "").lower() in {"1", "true", "yes"},
            "key": os.environ.get("AWS_ACCESS_KEY_ID") or None,
            "secret": os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
            "token": os.environ.get("AWS_SESSION_TOKEN") or None,
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        }
        given = {k: v for k, v in overrides.items() if v is not None}
        if "key" in given:  # an explicit key replaces the environment's credentials, anonymity included
            env.update(secret=None, token=None, anon=False)
        if env["anon"] and "key" not in given:  # BIGEARTH_S3_ANON=1 wins over exported AWS keys
            env.update(key=None, secret=None, token=None)
        if given.get("anon"):
            env.update(key=None, secret=None, token=None)
        env.update(given)
        return cls(**env)

    def for_protocol(self, protocol: str) -> dict[str, Any]:
        """Keyword arguments for the fsspec filesystem of `protocol`."""
        if protocol in {"s3", "s3a"}:
            # no listings cache: ingest workers check for files other processes wrote moments ago
            opts: dict[str, Any] = {"anon": self.anon, "use_listings_cache": False}
            if self.key:
                opts["key"] = self.key
            if self.secret:
                opts["secret"] = self.secret_text()
            if self.token:
                opts["token"] = self.token_text()
            client: dict[str, Any] = {}
            if self.endpoint_url:
                client["endpoint_url"] = self.endpoint_url
            if self.region:
                client["region_name"] = self.region
            if client:
                opts["client_kwargs"] = client
            opts.update(self.extra)
            return opts
        return dict(self.extra) if protocol not in {"file", "local"} else {}

    def secret_text(self) -> str | None:
        return reveal(self.secret)

    def token_text(self) -> str | None:
        return reveal(self.token)

    def as_dict(self) -> dict[str, Any]:
        """The options as a mapping, secret and token included (for building a client, never for printing)."""
        return {**asdict(self), "secret": self.secret_text(), "token": self.token_text()}

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with the secret and token `Sealed`: a Ray task's arguments carry references, not the text."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("secret", "token"):
            if isinstance(kw[name], str) and kw[name]:
                kw[name] = Sealed(kw[name])
        return (_storage_options, (kw,))

    def __repr__(self) -> str:  # never print the secret
        return (
            f"StorageOptions(endpoint_url={self.endpoint_url!r}, anon={self.anon}, key={self.key!r}, "
            f"secret={'***' if self.secret else None}, token={'***' if self.token else None}, region={self.region!r})"
        )


def _storage_options(kw: dict[str, Any]) -> StorageOptions:
    return StorageOptions(**kw)


def open_fs(url: str, options: StorageOptions | None = None) -> tuple[AbstractFileSystem, str]:
    """Filesystem and protocol-less root path for `url` (a local path is made absolute)."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    opts = (options or StorageOptions.from_env()).for_protocol(protocol)
    fs, path = fsspec.core.url_to_fs(url, **opts)
    if protocol == "file":
        path = os.path.abspath(path)
    return fs, path.rstrip("/") or "/"


def join(*parts: str) -> str:
    """Join path parts with '/', as every fsspec filesystem expects."""
    return posixpath.join(*parts)


def to_url(fs: AbstractFileSystem, path: str) -> str:
    """Full URL of `path` on `fs` (what Ray Data and users get back)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in {"file", "local"} else f"{protocol}://{path}"


def _protocol(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def arrow_filesystem(url: str, options: StorageOptions | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem for `url`: native for local paths and S3 (C++ I/O, no Python request signing), the
    fsspec one wrapped for any other protocol. Paths on it are the protocol-less ones `open_fs` returns."""
    protocol = _protocol(url)
    fs, root = open_fs(url, options)
    if protocol in ("file", "local"):
        return pafs.LocalFileSystem(), root
    if protocol in ("s3", "s3a"):
        opts = options or StorageOptions.from_env()
        scheme, endpoint = "https", opts.endpoint_url
        if endpoint and "://" in endpoint:
            scheme, endpoint = endpoint.split("://", 1)
        s3 = pafs.S3FileSystem(
            access_key=opts.key,
            secret_key=opts.secret_text(),
            session_token=opts.token_text(),
            region=opts.region or "us-east-1",
            endpoint_override=endpoint,
            scheme=scheme,
            anonymous=opts.anon,
        )
        return s3, root
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), root


class _SealedS3(pafs.FileSystemHandler):
    """pyarrow's native S3 filesystem behind a handler that pickles as its `StorageOptions` (secret and token
    sealed), not as the native one's options (which hold the secret key in clear)."""

    def __init__(self, url: str, options: StorageOptions) -> None:
        self.url, self.options = url, options
        self._fs: pafs.FileSystem | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_SealedS3, (self.url, self.options))

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs = arrow_filesystem(self.url, self.options)[0]
        return self._fs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SealedS3) and (self.url, self.options) == (other.url, other.options)

    def get_type_name(self) -> str:
        return "bigearth-s3"

    def normalize_path(self, path: str) -> str:
        return str(self.fs.normalize_path(path))

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return list(self.fs.get_file_info(paths))

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return list(self.fs.get_file_info(selector))

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError(f"{self.url}: refusing to delete the contents of the store's root")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: dict[str, str] | None = None) -> Any:
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: dict[str, str] | None = None) -> Any:
        return self.fs.open_append_stream(path, metadata=metadata)


def portable_arrow_filesystem(url: str, options: StorageOptions | None = None) -> tuple[pafs.FileSystem, str]:
    """`arrow_filesystem` for a filesystem that is pickled into Ray tasks and actors (Ray Train's
    `storage_filesystem`): S3 with an explicit secret goes behind a handler that pickles its secret sealed
    (`bigearth.core.secrets.Sealed`); anything else is `arrow_filesystem`'s own."""
    opts = options or StorageOptions.from_env()
    fs, root = arrow_filesystem(url, opts)
    if _protocol(url) in ("s3", "s3a") and opts.secret:
        handler = _SealedS3(url, opts)
        handler._fs = fs
        return pafs.PyFileSystem(handler), root
    return fs, root


class StorageError(OSError):
    """The store, not a file, is at fault: the whole job stops (a re-run resumes), nothing is quarantined."""


class StorageUnavailable(StorageError):
    """The store kept failing (down, unreachable, throttling) for longer than `StorageOptions.retry_s`."""


class StorageAccessDenied(StorageError, PermissionError):
    """The store refused the request (403): retrying cannot help. (S3 also answers 403 for a missing key when the
    role may not list the bucket, so a reader treats this per file.)"""


#: What S3 and the two client stacks (s3fs: CamelCase, pyarrow: UPPER_CASE) say when a request is refused.
_DENIED = (
    "ACCESS_DENIED",
    "AccessDenied",
    "SignatureDoesNotMatch",
    "SIGNATURE_DOES_NOT_MATCH",
    "InvalidAccessKeyId",
    "INVALID_ACCESS_KEY_ID",
    "InvalidClientTokenId",
    "INVALID_CLIENT_TOKEN_ID",
    "ExpiredToken",
    "EXPIRED_TOKEN",
    "RequestExpired",
    "REQUEST_EXPIRED",
    "HTTP status 403",
)
#: What a store says while it is down, unreachable, restarting or throttling: worth reading again.
_TRANSIENT = (
    "NETWORK_CONNECTION",
    "curlCode",
    "Connection refused",
    "Could not connect",
    "connection reset",
    "timed out",
    "Timeout",
    "TIMEOUT",
    "SLOW_DOWN",
    "SlowDown",
    "Throttl",
    "THROTTL",
    "SERVICE_UNAVAILABLE",
    "ServiceUnavailable",
    "INTERNAL_FAILURE",
    "InternalError",
    "HTTP status 5",
    "Broken pipe",
    "temporarily",
)


def is_transient(e: BaseException) -> bool:
    """A store fault that may go away (connection, timeout, throttling, 5xx), not a property of the file."""
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    return not isinstance(e, (FileNotFoundError, PermissionError)) and any(w in str(e) for w in _TRANSIENT)


class BlobReader:
    """Reads many whole files concurrently (a pool of threads over the pyarrow filesystem of `url`).

    `read_many` never raises for a single file: a missing file comes back as a `FileNotFoundError` instance, any
    other failure as the exception, so the caller can say which file was bad and go on. A refused request comes
    back at once as `StorageAccessDenied`. A fault of the store rather than of the file (a restart, a network
    blip, throttling, a 5xx: `is_transient`) is read again with exponential back-off for up to `retry_s`
    seconds; what still fails comes back as `StorageUnavailable`.
    """

    def __init__(self, url: str, options: StorageOptions | None = None, threads: int = 16) -> None:
        self.fs, self.root = arrow_filesystem(url, options)
        self.threads = threads if _protocol(url) not in ("file", "local") else 1
        self.retry_s = (options or StorageOptions.from_env()).retry_s
        self.retried = 0  # files read again after a store error, over this reader's life

    def _read(self, path: str) -> bytes | BaseException:
        try:
            with self.fs.open_input_stream(path) as f:
                data: bytes = f.read()
                return data
        except FileNotFoundError as e:
            return e
        except PermissionError as e:
            if isinstance(self.fs, pafs.LocalFileSystem):
                return e
            return StorageAccessDenied(f"{path}: access denied ({e})"[:600])
        except OSError as e:
            if "does not exist" in str(e) or "NoSuchKey" in str(e) or "Not Found" in str(e):
                return FileNotFoundError(path)
            if any(word in str(e) for word in _DENIED) and not isinstance(self.fs, pafs.LocalFileSystem):
                return StorageAccessDenied(f"{path}: access denied ({e})"[:600])
            return e
        except Exception as e:  # another stack's errors (fsspec-wrapped protocols: aiohttp, ...)
            return e

    def _read_all(self, paths: Sequence[str]) -> dict[str, bytes | BaseException]:
        if self.threads == 1 or len(paths) == 1:
            return {p: self._read(p) for p in paths}
        with ThreadPoolExecutor(min(self.threads, len(paths))) as pool:
            return dict(zip(paths, pool.map(self._read, paths), strict=True))

    def read_many(self, paths: Sequence[str]) -> dict[str, bytes | BaseException]:
        import time

        out = self._read_all(paths)
        start, wait = time.monotonic(), 0.5
        while True:
            failing = [p for p, v in out.items() if isinstance(v, Exception) and is_transient(v)]
            if not failing:
                return out
            left = self.retry_s - (time.monotonic() - start)
            if left <= 0:
                for p in failing:
                    err = out[p]
                    assert isinstance(err, BaseException)
                    out[p] = StorageUnavailable(
                        f"{p}: the store kept failing for {self.retry_s:g} s ({type(err).__name__}: {err})"[:600]
                    )
                return out
            log.warning("%d file(s) failed to read (%s); retrying in %.1f s", len(failing), out[failing[0]], wait)
            time.sleep(min(wait, left))
            wait = min(wait * 2, 8.0)
            self.retried += len(failing)
            out.update(self._read_all(failing))
