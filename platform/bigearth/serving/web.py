"""The web page at `/`: the files of `bigearth.web`, shipped in the package. Nothing is loaded from elsewhere
(no CDN, no map tiles): the Content-Security-Policy sent with them allows this origin only, so a page that tried
would fail in the browser, visibly."""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import PurePath

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".geojson": "application/geo+json",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # a re-deployed app serves its own page
}


@functools.cache
def assets() -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, media type), read once per process."""
    folder = files("bigearth.web")
    return {
        f.name: (f.read_bytes(), TYPES[PurePath(f.name).suffix])
        for f in folder.iterdir()
        if PurePath(f.name).suffix in TYPES
    }


def paths() -> set[str]:
    """The URL paths of the page (answered without an API key: the page asks for one before calling the API)."""
    return {"/", *(f"/web/{name}" for name in assets() if name != "index.html")}
