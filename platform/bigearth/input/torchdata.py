"""A plain PyTorch `IterableDataset` over a split of a shard set, for training without Ray (docs/pytorch.md).

    ds = ShardDataset("s3://bucket/shards", "train", shuffle=True, seed=0)   # rank / world from torch.distributed
    loader = DataLoader(ds, batch_size=64, num_workers=4)
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader: ...   # batch["image"]: float32 [64, 14, 120, 120], batch["label"]: float32 [64, 19]

Samples use torchgeo's keys: `image` (float32 `C x 120 x 120`, channels in the order of `bands`, 20 m and 60 m bands
resampled to 120 px by `bigearth.models.stem.InputStem`, the platform's models' own stem: bilinear by default),
`label` (float32 multi-hot of the 19 classes in official order, or 43 on v1 shards), `patch_id` (str); with
`native=True` also the native-size groups of `bigearth.shards.decode` (`s1`, `s2_10m`, `s2_20m`, `s2_60m`), as the
platform's models take them. Values are raw (S2 reflectance DN as float, S1 backscatter in dB) unless
`normalize=True`, which applies the published statistics `bigearth.core.bands.STATS[stats]` exactly as `InputStem` does.

Sharding is by file: the split's Parquet files (from `manifest.json`) are dealt to ranks (`files[rank::world]`),
then each rank's to its DataLoader workers (`[worker::num_workers]`), so every file is read by exactly one
(rank, worker) and every pair comes once per epoch. With `shuffle`, the file order is permuted with `(seed, epoch)`
(the same permutation on every rank: `set_epoch` as with `DistributedSampler`), and so are the row groups of each
file and the rows of each row group; `shuffle_buffer` mixes rows across row groups as well. Reading and decoding
are the platform's
(`bigearth.shards.format.open_shard` / `read_row_group`, checksums verified; `bigearth.shards.decode.decode_batch`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from bigearth.core.bands import STATS
from bigearth.core.storage import StorageOptions, arrow_filesystem, join
from bigearth.models.stem import InputStem, resolve_bands
from bigearth.shards.decode import decode_batch, groups_for
from bigearth.shards.format import ShardFormatError, open_shard, read_row_group
from bigearth.shards.shardset import ShardSet, label_column

Sample = dict[str, Any]
#: A row before it becomes a sample: its native-size band groups, its multi-hot labels, its patch id.
_Row = tuple[dict[str, np.ndarray], np.ndarray, str]


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """`(rank, world_size)`: the values given, else torch.distributed's when a process group is initialised, else
    the `RANK` / `WORLD_SIZE` environment variables (torchrun sets them), else `(0, 1)`."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            found = dist.get_rank(), dist.get_world_size()
        else:
            found = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return rank, world_size


class ShardDataset(IterableDataset[Sample]):
    """The pairs of a split (several: a list) of the shard set at `root` (a local path or any fsspec URL, opened
    with `storage`), as torchgeo-style sample dicts; see the module docstring.

    `bands`: a band set of `bigearth.core.bands.BAND_SETS` (`s1`, `s2-10`, `s2-12`, `s1s2-10`, `s1s2-12`, the default:
    VV, VH, B01 ... B12) or a list of band names, in the channel order wanted. `resample`: how `InputStem` brings
    the 20 m / 60 m bands to 120 px (`bilinear`, `nearest`, `bicubic`). `nomenclature`: 19, or 43 on shards
    ingested from a v1 archive (v2 shards hold the 19 classes only). `transforms`: called on every sample dict,
    returns the one yielded (it must pickle for DataLoader workers). `rank` / `world_size`: see `rank_and_world`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | Sequence[str] = "train",
        *,
        bands: str | Sequence[str] = "s1s2-12",
        storage: StorageOptions | None = None,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        nomenclature: int = 19,
        normalize: bool = False,
        stats: str = "v2",
        resample: str = "bilinear",
        native: bool = False,
    ) -> None:
        super().__init__()
        self.root, self.split, self.storage = str(root), split, storage
        label_column(nomenclature)  # 19 or 43, before anything is read
        if shuffle_buffer < 0 or (shuffle_buffer and not shuffle):
            raise ValueError(f"shuffle_buffer {shuffle_buffer}: expected rows >= 0, and shuffle=True to use one")
        if normalize and stats not in STATS:
            raise ValueError(f"unknown statistics {stats!r}; expected one of {sorted(STATS)}")
        self.bands = resolve_bands(bands)
        # unnormalised: the stem with mean 0 and std 1, so resampling and channel order are the models' own
        table = STATS[stats] if normalize else {b: (0.0, 1.0) for b in self.bands}
        self._stem = InputStem(self.bands, stats=table, size=120, mode=resample)
        self._groups = groups_for(self.bands)
        self.nomenclature, self.normalize, self.native, self.transforms = nomenclature, normalize, native, transforms
        self.shuffle, self.seed, self.shuffle_buffer, self.epoch = shuffle, seed, shuffle_buffer, 0

        shard_set = ShardSet.open(self.root, storage)
        entries = shard_set.files(split)  # an unknown split names the ones there are
        label = shard_set.label_column(nomenclature)  # 43 classes of a v2 shard set: the shard set's error
        self._columns = ["patch_id", label, *(b for names in self._groups.values() for b in names)]
        self.files: list[tuple[str, tuple[int, ...]]] = [(join(shard_set.root, e.path), e.row_groups) for e in entries]
        self.rank, self.world_size = rank_and_world(rank, world_size)
        if len(self.files) < self.world_size:
            raise ValueError(
                f"{self.root}: split {split!r} has {len(self.files)} shard file(s) for {self.world_size} ranks; "
                "sharding is by file, so some ranks would get no data (and data-parallel training would wait for "
                "them forever): use fewer ranks, or re-ingest with a smaller --shard-size"
            )

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose permutation the next iteration uses (with `shuffle`); call it on every rank before each
        epoch, as with `DistributedSampler`. DataLoader workers get the dataset when an iteration starts, so this
        needs `persistent_workers=False` (the default) to reach them."""
        self.epoch = epoch

    def shares(self, epoch: int | None = None) -> list[list[int]]:
        """File indices (into `files`) of each rank for an epoch (default: the current one): disjoint, covering
        the split, computed from the manifest alone, the same on every rank."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.files)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return [[int(i) for i in order[r :: self.world_size]] for r in range(self.world_size)]

    def _rows_of(self, files: Sequence[int]) -> int:
        return sum(sum(self.files[i][1]) for i in files)

    @property
    def num_samples(self) -> int:
        """Pairs this rank yields this epoch (all its DataLoader workers together), from the manifest."""
        return self._rows_of(self.shares()[self.rank])

    def __len__(self) -> int:
        """`num_samples`, so `len(DataLoader)` works for progress bars. It is exact for the rank; a DataLoader's
        batch count is approximate with several workers (each ends with its own short batch)."""
        return self.num_samples

    def min_steps(self, batch_size: int) -> int:
        """Batches of `batch_size` that EVERY rank's DataLoader yields at least this epoch (any number of workers,
        `drop_last=False`), the same number on every rank: stop there under DDP, since ranks' shares differ by up
        to a file and a rank that steps alone waits forever for the others."""
        return min(self._rows_of(share) for share in self.shares()) // batch_size

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.shares()[self.rank][worker::workers]
        if not mine:
            warnings.warn(
                f"{self.root}: split {self.split!r} has {len(self.files)} shard file(s) for {self.world_size} "
                f"rank(s) x {workers} DataLoader workers; rank {self.rank} worker {worker} gets none and sits idle "
                "(use fewer workers, or re-ingest with a smaller --shard-size)",
                stacklevel=2,
            )
            return
        fs, _ = arrow_filesystem(self.root, self.storage)
        rows: Iterator[_Row] = (row for i in mine for row in self._read_file(fs, i))
        if self.shuffle_buffer:
            rows = self._mix(rows, np.random.default_rng([self.seed, self.epoch, self.rank, worker]))
        for raw, label, patch_id in rows:
            yield self._sample(raw, label, patch_id)

    def _read_file(self, fs: Any, index: int) -> Iterator[_Row]:
        """Rows of one shard file, row group by row group (each read, checksum-verified and decoded once); with
        `shuffle`, row groups and rows in an order drawn from `(seed, epoch, file)`."""
        path, sizes = self.files[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.shuffle else None
        with fs.open_input_file(path) as f:
            pf = open_shard(f, path)
            have = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            if have != list(sizes):
                raise ShardFormatError(
                    f"{path}: expected {len(sizes)} row group(s) of {list(sizes)} rows as the manifest implies; "
                    f"the file has {have}: re-run the ingest of this shard set"
                )
            for group in rng.permutation(len(sizes)) if rng is not None else range(len(sizes)):
                batch = decode_batch(
                    read_row_group(pf, int(group), self._columns, path), self._groups, self.nomenclature
                )
                n = len(batch["patch_id"])
                for r in rng.permutation(n) if rng is not None else range(n):
                    yield {g: batch[g][r] for g in self._groups}, batch["labels"][r], str(batch["patch_id"][r])

    def _mix(self, rows: Iterator[_Row], rng: np.random.Generator) -> Iterator[_Row]:
        """A shuffle buffer of `shuffle_buffer` rows (copied out of their row group, so memory is the buffer's)."""
        buffer: list[_Row] = []
        for raw, label, patch_id in rows:
            row = ({g: a.copy() for g, a in raw.items()}, label.copy(), patch_id)
            if len(buffer) < self.shuffle_buffer:
                buffer.append(row)
                continue
            j = int(rng.integers(len(buffer)))
            yield buffer[j]
            buffer[j] = row
        for j in rng.permutation(len(buffer)):
            yield buffer[j]

    def _sample(self, raw: dict[str, np.ndarray], label: np.ndarray, patch_id: str) -> Sample:
        with torch.no_grad():
            image = self._stem({g: torch.from_numpy(a[None]) for g, a in raw.items()})[0]
        sample: Sample = {"image": image, "label": torch.from_numpy(label.copy()), "patch_id": patch_id}
        if self.native:
            sample.update({g: torch.from_numpy(a.copy()) for g, a in raw.items()})
        return self.transforms(sample) if self.transforms is not None else sample
