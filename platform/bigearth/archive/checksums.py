"""What each download's md5 must be, and the check that stops an ingest before any shard when it is not.

A tar has no checksum of its own: a download whose member bytes were altered (a bad mirror, a flipped bit) reads
as different pixels. The expected digest of a published file name is its published md5
(bigearth.archive.layouts.v1_downloads / v2_downloads); an `MD5SUMS` file beside the downloads (the `md5sum`
output format: `<32 hex digits>  <name>` or `<32 hex digits> *<name>`) states the digest of the other names. It
comes from the same place as the downloads, so a bad mirror would ship one that matches its bad files: an
`MD5SUMS` entry that disagrees with the published md5 of a published name stops the ingest (`check_md5sums`)
unless the user trusts it (`trust_md5sums`, for a re-packed or synthetic archive: `bigearth synth --packed`
writes its files under the published names with an `MD5SUMS`); then its digests replace the published ones.
`MD5SUMS` is outside bytes too: it is read up to `MAX_MD5SUMS` bytes, every line that is not a digest and a name
is reported and ignored, and a name listed twice with different digests counts as not listed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from bigearth.archive.layouts.base import Download
from bigearth.core.storage import join

MD5SUMS = "MD5SUMS"
MAX_MD5SUMS = 1 << 20  # bytes: a list of a few downloads is under 1 KB
_LINE = re.compile(rb"([0-9a-fA-F]{32}) ([ *])(.+)")


class ChecksumMismatch(RuntimeError):
    """A download's md5 differs from the expected one and the user did not accept it."""


def parse_md5sums(data: bytes, where: str = MD5SUMS) -> tuple[dict[str, str], list[str]]:
    """name -> lower-case md5 of every well-formed line of an `md5sum` output, and what was wrong with the rest.
    Names are as listed (a leading `./` dropped); md5sum's escaped lines (`\\<hex>  name` with `\\n`, `\\\\`) are
    understood."""
    if len(data) > MAX_MD5SUMS:
        return {}, [f"{where} is larger than {MAX_MD5SUMS:,} bytes: not read"]
    entries: dict[str, str] = {}
    problems: list[str] = []
    conflicting: set[str] = set()
    for number, line in enumerate(data.split(b"\n"), 1):
        line = line.removesuffix(b"\r")
        if not line.strip() or line.startswith(b"#"):
            continue
        escaped = line.startswith(b"\\")
        m = _LINE.fullmatch(line[1:] if escaped else line)
        if m is None:
            problems.append(f"{where} line {number}: not `<32 hex digits>  <file name>` ({line[:60]!r})")
            continue
        raw = m[3]
        if escaped:
            raw = re.sub(rb"\\(.)", lambda e: {b"n": b"\n", b"r": b"\r", b"\\": b"\\"}.get(e[1], e[0]), raw)
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{where} line {number}: the file name is not UTF-8")
            continue
        name = name.removeprefix("./")
        digest = m[1].decode().lower()
        if name in conflicting:
            continue
        if entries.get(name, digest) != digest:
            problems.append(f"{where} line {number}: {name} is listed again with another md5: neither is used")
            conflicting.add(name)
            del entries[name]
            continue
        entries[name] = digest
    return entries, problems


def format_md5sums(digests: dict[str, str]) -> str:
    """The `md5sum` output for name -> md5 (what `md5sum -c MD5SUMS` checks; odd names escaped as md5sum does)."""
    lines = []
    for name, md5 in sorted(digests.items()):
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        prefix = "\\" if escaped != name else ""
        lines.append(f"{prefix}{md5}  {escaped}\n")
    return "".join(lines)


def read_md5sums(fs: Any, root: str) -> tuple[dict[str, str], list[str]]:
    """The entries of `<root>/MD5SUMS` (none if there is no such file) and its problems."""
    path = join(root, MD5SUMS)
    if not fs.exists(path):
        return {}, []
    with fs.open(path, "rb") as f:
        data = f.read(MAX_MD5SUMS + 1)
    return parse_md5sums(data)


def check_md5sums(downloads: Sequence[Download], md5sums: dict[str, str], archive: str, trust_md5sums: bool) -> None:
    """Raise ChecksumMismatch, naming every published file whose `MD5SUMS` entry differs from its published md5 and
    both digests, unless `trust_md5sums` (checked before anything is read or staged)."""
    if trust_md5sums:
        return
    wrong = [
        f"{join(archive, d.name)}: {MD5SUMS} states md5 {md5sums[d.name]}, the published md5 is {d.md5}"
        for d in downloads
        if d.md5 and d.name in md5sums and md5sums[d.name] != d.md5
    ]
    if wrong:
        raise ChecksumMismatch(
            f"the {MD5SUMS} beside the downloads disagrees with the published checksums, so its files are not the "
            "ones published (a bad mirror, or a re-packed or synthetic archive): " + "; ".join(wrong) + ". Nothing "
            "was read. Fetch the files from the published source, or pass --trust-md5sums (trust_md5sums=True) "
            f"to check them against {MD5SUMS} instead."
        )


def expected_md5(
    download: Download, md5sums: dict[str, str], trust_md5sums: bool = False
) -> tuple[str | None, str | None]:
    """(expected md5, where it comes from: "MD5SUMS" or "published"), or (None, None) if nothing states one.
    The published md5 wins over an `MD5SUMS` entry unless `trust_md5sums`."""
    if download.md5 and not (trust_md5sums and download.name in md5sums):
        return download.md5, "published"
    if download.name in md5sums:
        return md5sums[download.name], MD5SUMS
    return None, None


def check_md5(
    records: Sequence[dict[str, Any]],
    downloads: Sequence[Download],
    md5sums: dict[str, str],
    archive: str,
    accept: bool,
    trust_md5sums: bool = False,
) -> None:
    """Annotate each staged download's record with its expected md5 (`expected_md5`, `md5_source`, `md5_matches`:
    None when nothing states one) and raise ChecksumMismatch, naming every file that differs and both digests,
    unless `accept`."""
    by_name = {d.name: d for d in downloads}
    wrong = []
    for r in records:
        d = by_name.get(r["download"])
        if d is None or r.get("missing") or "md5" not in r:
            continue
        expected, source = expected_md5(d, md5sums, trust_md5sums)
        r["expected_md5"], r["md5_source"] = expected, source
        r["md5_matches"] = None if expected is None else r["md5"] == expected
        if r["md5_matches"] is False:
            what = "the md5 MD5SUMS states" if source == MD5SUMS else "the published md5"
            wrong.append(f"{join(archive, d.name)}: md5 {r['md5']}, {what} is {expected}")
    if wrong and not accept:
        raise ChecksumMismatch(
            "a download differs from its expected checksum, so its bytes are not the ones published (a bad mirror, "
            "a damaged copy): " + "; ".join(wrong) + ". Nothing was written. Fetch the file again, or pass "
            "--accept-checksum-mismatch (accept_checksum_mismatch=True) to ingest it as it is."
        )
