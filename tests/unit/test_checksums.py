"""The expected md5 of each download (bigearth.archive.checksums), without Ray: `MD5SUMS` parsed defensively (it
is outside bytes too), and the check that stops an ingest naming the file and both digests."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bigearth.archive.checksums import (
    MAX_MD5SUMS,
    ChecksumMismatch,
    check_md5,
    check_md5sums,
    expected_md5,
    format_md5sums,
    parse_md5sums,
    read_md5sums,
)
from bigearth.archive.layouts.base import Download
from bigearth.archive.layouts.v2_downloads import V2_DOWNLOADS
from bigearth.core.storage import open_fs

A, B = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
S2 = V2_DOWNLOADS[0]


def test_md5sum_output_in_both_modes_escapes_and_crlf() -> None:
    text = (
        f"{A}  BigEarthNet-S2.tar.zst\r\n"
        f"{B.upper()} *./BigEarthNet-S1.tar.zst\n"
        "# a comment\n\n"
        f"\\{A}  odd\\nname\\\\.tar\n"
    ).encode()
    entries, problems = parse_md5sums(text)
    assert entries == {"BigEarthNet-S2.tar.zst": A, "BigEarthNet-S1.tar.zst": B, "odd\nname\\.tar": A}
    assert problems == []
    assert parse_md5sums(format_md5sums(entries).encode())[0] == entries


def test_malformed_lines_are_reported_with_their_numbers_and_ignored() -> None:
    text = (
        f"{A}  good.tar.zst\n"
        f"{A[:-1]}  short-digest\n"
        f"{A}-no-space\n"
        f"{A} one-space-is-not-a-mode\n"
        f"{A}  \xff\xfe.tar\n".encode("latin-1").decode("latin-1")
    ).encode("latin-1")
    entries, problems = parse_md5sums(text, "mirror/MD5SUMS")
    assert entries == {"good.tar.zst": A}
    assert [p.split(":")[0] for p in problems] == [f"mirror/MD5SUMS line {n}" for n in (2, 3, 4, 5)]
    assert "not UTF-8" in problems[-1]


def test_a_name_listed_twice_with_different_digests_is_not_used() -> None:
    entries, problems = parse_md5sums(f"{A}  x\n{A}  x\n{B}  x\n{A}  x\n{A}  y\n".encode())
    assert entries == {"y": A}
    assert problems == ["MD5SUMS line 3: x is listed again with another md5: neither is used"]


def test_an_oversized_md5sums_is_not_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "MD5SUMS").write_bytes(f"{A}  x\n".encode() * (MAX_MD5SUMS // 35 + 1))
    entries, problems = read_md5sums(*open_fs(str(tmp_path)))
    assert entries == {} and problems == [f"MD5SUMS is larger than {MAX_MD5SUMS:,} bytes: not read"]
    assert read_md5sums(*open_fs(str(tmp_path / "none"))) == ({}, [])


@settings(max_examples=200, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.tuples(
                st.text("0123456789abcdefABCDEF", min_size=30, max_size=34), st.sampled_from(" *-"), st.text()
            ).map(lambda t: f"{t[0]} {t[1]}{t[2]}".encode("utf-8", "surrogatepass")),
        ),
        max_size=20,
    )
)
def test_fuzz_md5sums(lines: list[bytes]) -> None:
    entries, problems = parse_md5sums(b"\n".join(lines))
    assert all(len(v) == 32 and set(v) <= set("0123456789abcdef") for v in entries.values())
    assert all(isinstance(k, str) and k for k in entries)
    assert all(p.startswith("MD5SUMS line ") for p in problems)


def _record(md5: str, name: str = S2.name) -> dict:  # type: ignore[type-arg]
    return {"download": name, "md5": md5, "published_md5": S2.md5}


def test_a_mismatch_stops_naming_the_file_and_both_digests() -> None:
    with pytest.raises(ChecksumMismatch) as e:
        check_md5([_record(A)], V2_DOWNLOADS, {}, "s3://mirror/zenodo", accept=False)
    assert f"s3://mirror/zenodo/{S2.name}: md5 {A}, the published md5 is {S2.md5}" in str(e.value)
    assert "--accept-checksum-mismatch" in str(e.value) and "Nothing was written" in str(e.value)
    with pytest.raises(ChecksumMismatch, match=f"md5 {A}, the md5 MD5SUMS states is {B}"):
        check_md5([_record(A)], V2_DOWNLOADS, {S2.name: B}, "/a", accept=False, trust_md5sums=True)


def test_a_mirror_md5sums_never_overrides_the_published_md5_unless_trusted() -> None:
    """A bad mirror ships its own MD5SUMS matching its bad files: that stops the ingest before anything is read,
    and the published md5 stays the expected one; only --trust-md5sums lets MD5SUMS replace it."""
    bad_mirror = {S2.name: A}  # agrees with the mirror's file, not with the published digest
    with pytest.raises(ChecksumMismatch) as e:
        check_md5sums(V2_DOWNLOADS, bad_mirror, "https://mirror", trust_md5sums=False)
    assert f"https://mirror/{S2.name}: MD5SUMS states md5 {A}, the published md5 is {S2.md5}" in str(e.value)
    assert "--trust-md5sums" in str(e.value)
    check_md5sums(V2_DOWNLOADS, {S2.name: S2.md5}, "/a", trust_md5sums=False)  # agreeing: fine
    check_md5sums(V2_DOWNLOADS, bad_mirror, "/a", trust_md5sums=True)
    assert expected_md5(S2, bad_mirror) == (S2.md5, "published")
    assert expected_md5(S2, bad_mirror, trust_md5sums=True) == (A, "MD5SUMS")
    with pytest.raises(ChecksumMismatch, match=f"md5 {A}, the published md5 is {S2.md5}"):
        check_md5([_record(A)], V2_DOWNLOADS, bad_mirror, "/a", accept=False)


def test_md5sums_states_the_digest_and_accept_lets_a_mismatch_through() -> None:
    records = [_record(A)]
    # a re-packed archive with its MD5SUMS, trusted
    check_md5(records, V2_DOWNLOADS, {S2.name: A}, "/a", accept=False, trust_md5sums=True)
    assert records[0] | {} == _record(A) | {"expected_md5": A, "md5_source": "MD5SUMS", "md5_matches": True}
    records = [_record(A)]
    check_md5(records, V2_DOWNLOADS, {}, "/a", accept=True)
    assert records[0]["md5_matches"] is False and records[0]["expected_md5"] == S2.md5


def test_a_download_without_any_known_digest_is_not_an_error() -> None:
    unknown = Download("Other.tar.zst", "Other", "s2", "zstd", "")
    records = [_record(A, unknown.name)]
    check_md5(records, [unknown], {}, "/a", accept=False)
    assert records[0]["md5_matches"] is None and records[0]["md5_source"] is None
    records = [_record(A, unknown.name)]  # a name without a published digest: its MD5SUMS entry, untrusted or not
    check_md5sums([unknown], {unknown.name: A}, "/a", trust_md5sums=False)
    check_md5(records, [unknown], {unknown.name: A}, "/a", accept=False)
    assert records[0]["md5_matches"] is True and records[0]["md5_source"] == "MD5SUMS"
