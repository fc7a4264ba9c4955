"""A request's body as the service reads it: counted while it streams in (a chunked body stops at the limit, a
stalled one times out), a multipart upload parsed into bands (`bigearth.api.uploads`) in a worker thread, off the
event loop. Starlette requests only; no Serve."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from bigearth.api.schemas import ApiError
from bigearth.api.uploads import from_geotiffs, from_npz


async def read_body(request: Any, limit: int, timeout: float) -> bytes:
    """A Starlette request's body, counted while it streams in: a chunked body (no Content-Length) stops at `limit`
    bytes (413), a client that sends nothing for `timeout` s is refused (408; the proxy's `request_timeout_s` caps
    the whole request); neither is buffered whole first."""
    cached: bytes | None = getattr(request, "_body", None)
    if cached is not None:
        return cached
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise ApiError(408, f"request body: nothing received for {timeout:g} s", "body") from None
        except ClientDisconnect:
            raise ApiError(400, "the client disconnected before sending the whole body", "body") from None
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes", "body")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # what Starlette's own body() keeps: form() parses it from here
    return body


async def read_upload(request: Any, limit: int, timeout: float) -> tuple[dict[str, np.ndarray], str | None]:
    """Bands from a multipart upload (band GeoTIFFs or one .npz), and its `request` form field if any. The bands
    are decoded in a worker thread: a slow file does not hold up the other requests on this event loop."""
    await read_body(request, limit, timeout)
    try:
        form = await request.form(max_files=32, max_fields=4, max_part_size=limit)
    except Exception as e:  # a malformed multipart body is the client's error
        raise ApiError(400, f"unreadable multipart body: {e}", "body") from None
    files, extra = [], None
    for key, value in form.multi_items():
        if isinstance(value, str):
            if key != "request":
                raise ApiError(422, f"unexpected form field {key!r}; expected band files and `request`", key)
            extra = value
        else:
            files.append((key, value.filename, await value.read()))
    if not files:
        raise ApiError(422, "no files uploaded: send band GeoTIFFs or one .npz", "files")
    npz = [f for f in files if (f[1] or f[0]).lower().endswith(".npz")]
    if npz:
        if len(files) > 1:
            raise ApiError(422, "send either one .npz or band GeoTIFFs, not both", "files")
        return await run_in_threadpool(from_npz, npz[0][2], npz[0][1] or npz[0][0]), extra
    return await run_in_threadpool(from_geotiffs, files), extra
