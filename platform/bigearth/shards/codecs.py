"""The shard codec by storage: what `bigearth ingest --compression auto` (the default) writes where (measured in
docs/benchmarks.md, "The shard codec by storage"; the rule in docs/data-format.md)."""

from __future__ import annotations

import os
import re

from bigearth.shards.format import AUTO_COMPRESSION, COMPRESSIONS

#: File systems whose bytes cross a network although they are mounted as folders (FUSE ones by their subtype; local
#: FUSE file systems, e.g. fuseblk disks or fuse-overlayfs roots, are not in it).
_NETWORK_FUSE = (
    "sshfs s3fs gcsfuse glusterfs ceph-fuse rclone juicefs goofys mountpoint-s3 blobfuse blobfuse2 cvmfs2 davfs "
    "alluxio-fuse geesefs lustre weka"
)
NETWORK_MOUNTS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "beegfs", "gpfs", "afs", "wekafs", "panfs"}
    | {f"fuse.{name}" for name in _NETWORK_FUSE.split()}
)


def _mount_point(field: str) -> str:
    """A mount point as /proc/mounts escapes it (space, tab, newline, backslash as octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def compression_for(url: str, mounts: str | None = None) -> str:
    """The codec for shards written to `url`, by measurement (docs/benchmarks.md, "The shard codec by storage"):
    on a local disk reading is CPU-bound and uncompressed pages read fastest (`none`, for 14 % more bytes than lz4
    on real pixels); where the bytes cross a network (object stores, network file systems, network FUSE mounts)
    they are what bounds a node's input and what is billed, and zstd needs about half of them (`zstd`). `mounts`:
    the text of /proc/mounts (read when None), to tell a network file system mounted as a folder; symbolic links
    are followed to the mount that holds the data. The ingest decides once, on its driver: a folder that is a local
    disk there (an NFS server's own export) is `none` even where the workers mount it over NFS."""
    scheme, _, rest = url.partition("://") if "://" in url else ("file", "", url)
    if scheme not in ("file", "local"):
        return "zstd"
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    path = os.path.realpath(rest)
    if mounts is None:
        try:
            with open("/proc/mounts") as f:
                mounts = f.read()
        except OSError:
            mounts = ""
    best, fstype = "", ""
    for line in mounts.splitlines():  # the mount holding `path`: the longest mount point that is a prefix of it
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _mount_point(fields[1])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, fields[2]
    return "zstd" if fstype in NETWORK_MOUNTS else "none"


def resolve_compression(compression: str, url: str) -> str:
    """`compression` itself, or the codec for `url` when it is `auto`; anything else names the choices."""
    if compression == AUTO_COMPRESSION:
        return compression_for(url)
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r}: expected {AUTO_COMPRESSION!r} or one of {sorted(COMPRESSIONS)}")
    return compression
