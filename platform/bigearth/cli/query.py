"""`bigearth query`: call a running service (classify, segment, search, patch, rgb, reference) through the client
SDK."""

from __future__ import annotations

import argparse
import json

from bigearth.cli.common import add_secret_argument, secret_from_args


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("query", help="call a running service (classify, segment, search, patch, rgb, reference)")
    p.add_argument("--url", default=None, help="service URL (default: $BIGEARTH_URL or http://127.0.0.1:8000)")
    add_secret_argument(p, "--api-key", "BIGEARTH_API_KEY", "API key (X-API-Key)")
    p.add_argument("--timeout", type=float, default=60.0)
    q = p.add_subparsers(dest="call", required=True)
    c = q.add_parser("classify", help="classify band folders/files, or --patch-id")
    c.add_argument("patch", nargs="*", help="band GeoTIFF folders or files (S2 and S1 of one pair)")
    c.add_argument("--patch-id")
    c.add_argument("--threshold", type=float)
    c = q.add_parser("segment", help="land-cover map of band folders/files, or --patch-id: PNG to --out, shares")
    c.add_argument("patch", nargs="*", help="band GeoTIFF folders or files (S2 and S1 of one pair)")
    c.add_argument("--patch-id")
    c.add_argument("--out", required=True, help="where to write the map (paletted PNG)")
    c = q.add_parser("search", help="similar pairs to --patch-id or to uploaded band folders")
    c.add_argument("patch", nargs="*")
    c.add_argument("--patch-id")
    c.add_argument("--k", type=int, default=10)
    c.add_argument("--using", default="fused", choices=["fused", "s1", "s2"])
    c.add_argument("--query-modality", choices=["fused", "s1", "s2"])
    c.add_argument("--labels-any", nargs="+")
    c.add_argument("--labels-all", nargs="+")
    c.add_argument("--split", nargs="+")
    c.add_argument("--country", nargs="+")
    c.add_argument("--season", nargs="+")
    c.add_argument("--date-from")
    c.add_argument("--date-to")
    c = q.add_parser("patch", help="metadata of an archived pair")
    c.add_argument("patch_id")
    c = q.add_parser("rgb", help="true-colour quicklook PNG of an archived pair")
    c.add_argument("patch_id")
    c.add_argument("--out", required=True)
    c.add_argument("--scale", type=int, default=1)
    c = q.add_parser("reference", help="the archive's reference map PNG of a pair")
    c.add_argument("patch_id")
    c.add_argument("--out", required=True)
    p.set_defaults(func=run)


FILTER_ARGS = ("labels_any", "labels_all", "split", "country", "season", "date_from", "date_to")


def run(a: argparse.Namespace) -> int:
    from bigearth.client import Client

    # the environment ($BIGEARTH_API_KEY, $BIGEARTH_API_KEY_FILE) is the Client's to read
    with Client(a.url, api_key=secret_from_args(a, "--api-key", None), timeout=a.timeout) as c:
        if a.call == "classify":
            out: object = c.classify(*a.patch, patch_id=a.patch_id, threshold=a.threshold).model_dump()
        elif a.call == "search":
            flt = {k: getattr(a, k) for k in FILTER_ARGS if getattr(a, k)}
            res = c.search(
                *a.patch,
                patch_id=a.patch_id,
                k=a.k,
                using=a.using,
                query_modality=a.query_modality,
                filter=flt or None,
            )
            out = res.model_dump()
        elif a.call == "segment":
            seg = c.segment(*a.patch, patch_id=a.patch_id)
            png = seg.png_bytes
            _write(a.out, png)
            shares = {n: round(s, 6) for n, s in seg.shares.items() if s > 0}
            out = {"patch_id": seg.patch_id, "written": a.out, "bytes": len(png), "scored_pixels": seg.scored_pixels}
            out |= {"shares": dict(sorted(shares.items(), key=lambda x: -x[1])), "model": seg.model.model_dump()}
        elif a.call == "patch":
            out = c.patch(a.patch_id).model_dump()
        else:
            data = c.rgb(a.patch_id, scale=a.scale) if a.call == "rgb" else c.reference_map(a.patch_id)
            _write(a.out, data)
            out = {"written": a.out, "bytes": len(data)}
    print(json.dumps(out, indent=1, default=str))
    return 0


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
