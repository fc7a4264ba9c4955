"""Write a synthetic archive in the real v1 or v2 layout (names, nesting, GeoTIFF bytes, JSON / parquet metadata).

With `metadata` (the real v2 `metadata.parquet`) pairs take real ids, S1 names, labels, splits, countries and
flags; without it, labels follow the real class frequencies on a few real tile products. Deterministic for a seed:
pair i draws from `default_rng([seed, i])`, whatever the number of worker processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from bigearth.archive import geotiff
from bigearth.archive.layouts import ArchiveLayout, layout_for
from bigearth.archive.layouts.v1 import V1_S2_DIR
from bigearth.archive.metadata import V1_LISTS, V2_METADATA, V2_SNOW_CLOUD_METADATA
from bigearth.archive.names import parse_s1, parse_s2
from bigearth.core import labels as lab
from bigearth.core.bands import S1_BANDS, S2_BANDS
from bigearth.core.storage import StorageOptions, join, open_fs
from bigearth.synth.grid import PATCH_M, patch_corner, projection_wkt
from bigearth.synth.render import render_pair
from bigearth.synth.signatures import sample_labels

# Real v2 tile products, one per country, with the S1 scene most of their patches pair with.
PRODUCTS = (
    ("S2B_MSIL2A_20180515T094029_N9999_R036_T35VNJ", "S1B_IW_GRDH_1SDV_20180517T154802", "Finland"),
    ("S2B_MSIL2A_20170914T093029_N9999_R136_T34TEP", "S1A_IW_GRDH_1SDV_20170914T162451", "Serbia"),
    ("S2A_MSIL2A_20170813T112121_N9999_R037_T29SNC", "S1A_IW_GRDH_1SDV_20170812T182647", "Portugal"),
    ("S2B_MSIL2A_20170927T094019_N9999_R036_T35ULB", "S1A_IW_GRDH_1SDV_20170928T161150", "Lithuania"),
    ("S2A_MSIL2A_20180506T100031_N9999_R122_T33UWP", "S1A_IW_GRDH_1SDV_20180507T050948", "Austria"),
    ("S2B_MSIL2A_20180421T114349_N9999_R123_T29UPU", "S1A_IW_GRDH_1SDV_20180420T063917", "Ireland"),
    ("S2A_MSIL2A_20170818T103021_N9999_R108_T32TMT", "S1B_IW_GRDH_1SDV_20170818T054218", "Switzerland"),
    ("S2A_MSIL2A_20180508T104031_N9999_R008_T31UGR", "S1A_IW_GRDH_1SDV_20180508T055029", "Luxembourg"),
    ("S2B_MSIL2A_20170829T105019_N9999_R051_T31UER", "S1A_IW_GRDH_1SDV_20170829T055029", "Belgium"),
)
SPLIT_P = {"train": 0.5, "validation": 0.25, "test": 0.25}
SNOW_P, CLOUD_P, NO19_P = 0.08, 0.02, 0.005


@dataclass(frozen=True)
class PairSpec:
    index: int
    v2_id: str
    v1_name: str
    s1_name: str
    labels: list[str]  # 19-class names, sorted alphabetically as in metadata.parquet
    labels43: list[str]
    split: str
    country: str
    snow: bool
    cloud: bool


@dataclass(frozen=True)
class SynthResult:
    out: str
    layout: str
    pairs: int
    lists: str | None  # v1: folder with the official-format lists


def _v1_time(product: str) -> str:
    return product.split("_")[2]  # YYYYMMDDThhmmss


def _shifted(product: str, scene: str, k: int) -> tuple[str, str]:
    """Product/scene k days later: more distinct patch ids on the same real tile geometry."""
    if k == 0:
        return product, scene
    p = product.split("_")
    t = datetime.strptime(p[2], "%Y%m%dT%H%M%S") + timedelta(days=k)
    s = scene.split("_")
    ts = datetime.strptime(s[4], "%Y%m%dT%H%M%S") + timedelta(days=k)
    return ("_".join([*p[:2], t.strftime("%Y%m%dT%H%M%S"), *p[3:]]), "_".join([*s[:4], ts.strftime("%Y%m%dT%H%M%S")]))


def _labels43(rng: np.random.Generator, labels19: Sequence[str]) -> list[str]:
    out = {lab.BEN43[int(rng.choice(lab.LABEL_CONVERSION[lab.label_index(n)]))] for n in labels19}
    if rng.random() < 0.1:  # a class the 19-class nomenclature drops, as real patches often have
        out.add(lab.BEN43[int(rng.choice(lab.DROPPED_43))])
    return [lab.BEN43[i] for i in sorted(lab.label_index(n, 43) for n in out)]


def make_specs(pairs: int, seed: int, metadata: str | None = None, version: str = "v2") -> list[PairSpec]:
    """The pairs to synthesise: sampled from real metadata, or drawn from the real class statistics."""
    rng = np.random.default_rng([seed, 2**31])
    specs = []
    if metadata:
        table = pq.read_table(metadata)
        extra = os.path.join(os.path.dirname(metadata), V2_SNOW_CLOUD_METADATA)
        if os.path.exists(extra):
            table = pa.concat_tables([table, pq.read_table(extra).cast(table.schema)])
        if pairs > table.num_rows:
            raise ValueError(f"{metadata}: asked for {pairs} pairs, the metadata has {table.num_rows}")
        rows = table.take(np.sort(rng.choice(table.num_rows, size=pairs, replace=False))).to_pylist()
        for i, r in enumerate(rows):
            prng = np.random.default_rng([seed, i, 1])
            specs.append(
                PairSpec(
                    i,
                    r["patch_id"],
                    r["s2v1_name"],
                    r["s1_name"],
                    sorted(r["labels"]),
                    _labels43(prng, r["labels"]),
                    r["split"],
                    r["country"],
                    bool(r["contains_seasonal_snow"]),
                    bool(r["contains_cloud_or_shadow"]),
                )
            )
        return specs
    capacity = 90 * 90
    for i in range(pairs):
        prng = np.random.default_rng([seed, i, 1])
        base, scene, country = PRODUCTS[i % len(PRODUCTS)]
        product, scene = _shifted(base, scene, (i // len(PRODUCTS)) // capacity)
        slot = (i // len(PRODUCTS)) % capacity
        h, v = _slot_position(seed, slot)
        tile = product[-5:]
        no19 = version == "v1" and prng.random() < NO19_P
        names19 = [] if no19 else [lab.BEN19[c] for c in sample_labels(prng)]
        labels43 = [lab.BEN43[int(prng.choice(lab.DROPPED_43))]] if no19 else _labels43(prng, names19)
        split = str(prng.choice(list(SPLIT_P), p=list(SPLIT_P.values())))
        flag = prng.random()
        specs.append(
            PairSpec(
                i,
                f"{product}_{h:02d}_{v:02d}",
                f"{product.split('_N9999')[0]}_{h}_{v}",
                f"{scene}_{tile}_{h}_{v}",
                sorted(names19),
                labels43,
                split,
                country,
                flag < SNOW_P,
                SNOW_P <= flag < SNOW_P + CLOUD_P,
            )
        )
    return specs


def _slot_position(seed: int, slot: int) -> tuple[int, int]:
    perm = np.random.default_rng([seed, 7]).permutation(90 * 90)
    return divmod(int(perm[slot]), 90)


def _write_chunk(args: tuple[str, str, dict[str, Any], int, list[dict[str, Any]], bool]) -> int:
    out, version, storage, seed, specs, reference_maps = args
    fs, root = open_fs(out, StorageOptions(**storage))
    layout = layout_for(version, root)
    files: dict[str, bytes] = {}
    for d in specs:
        spec = PairSpec(**d)
        files.update(pair_files(layout, spec, seed, reference_maps))
    if fs.protocol in ("file", "local") or "file" in fs.protocol:
        for p in {p.rsplit("/", 1)[0] for p in files}:
            fs.makedirs(p, exist_ok=True)
    fs.pipe(files)
    return len(specs)


def pair_files(layout: ArchiveLayout, spec: PairSpec, seed: int, reference_maps: bool = False) -> dict[str, bytes]:
    """Every file of one pair, path -> bytes (with `reference_maps`, v2: also its reference map)."""
    rng = np.random.default_rng([seed, spec.index])
    classes = [lab.label_index(n) for n in spec.labels] or [0]
    arrays = render_pair(rng, classes, spec.snow, spec.cloud)
    v2 = layout.version == "v2"
    name2 = parse_s2(spec.v2_id)
    assert name2.tile is not None
    epsg, ulx, uly = patch_corner(name2.tile, name2.h, name2.v)
    pid = spec.v2_id if v2 else spec.v1_name
    files = {}
    for b in S2_BANDS:
        files[layout.s2_band(pid, b.name)] = geotiff.encode(
            arrays[b.name], epsg, ulx, uly, b.gsd, nodata=0 if v2 else None, short_strip_counts=v2
        )
    for b in S1_BANDS:
        files[layout.s1_band(spec.s1_name, b.name)] = geotiff.encode(arrays[b.name], epsg, ulx, uly, b.gsd)
    if not v2:
        files.update(_v1_json(layout, spec, epsg, ulx, uly))
    rm = layout.reference_map(pid) if reference_maps else None
    if rm:
        files[rm] = geotiff.encode_reference_map(arrays["reference_map"], epsg, ulx, uly)
    return files


def _v1_json(layout: ArchiveLayout, spec: PairSpec, epsg: int, ulx: float, uly: float) -> dict[str, bytes]:
    coords = {"ulx": int(ulx), "uly": int(uly), "lrx": int(ulx) + PATCH_M, "lry": int(uly) - PATCH_M}
    s2 = parse_s2(spec.v2_id)
    t2 = s2.timestamp
    s1 = parse_s1(spec.s1_name)
    assert t2 is not None
    l1c = f"{s2.satellite}_MSIL1C_{_v1_time(spec.v2_id)}_N0205_R{s2.orbit:03d}_T{s2.tile}_{_v1_time(spec.v2_id)}.SAFE"
    s2doc = {
        "labels": spec.labels43,
        "coordinates": coords,
        "projection": projection_wkt(epsg),
        "tile_source": l1c,
        "acquisition_date": t2.strftime("%Y-%m-%d %H:%M:%S"),
    }
    s1coords = {"ulx": coords["ulx"], "uly": coords["uly"], "lrx": coords["lrx"], "lly": coords["lry"]}  # the quirk
    stamp = s1.timestamp.strftime("%Y%m%dT%H%M%S")
    scene = f"{s1.satellite}_IW_GRDH_1SDV_{stamp}_{stamp}_017018_01C579_7EEC"
    s1doc = {
        "labels": spec.labels43,
        "coordinates": s1coords,
        "projection": projection_wkt(epsg),
        "corresponding_s2_patch": spec.v1_name,
        "scene_source": scene,
        "acquisition_time": s1.timestamp.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return {
        layout.s2_json(spec.v1_name) or "": json.dumps(s2doc).encode(),
        layout.s1_json(spec.s1_name) or "": json.dumps(s1doc).encode(),
    }


def _write_v2_metadata(fs: Any, root: str, specs: list[PairSpec]) -> None:
    schema = pa.schema(
        [
            ("patch_id", pa.string()),
            ("labels", pa.list_(pa.field("element", pa.string()))),
            ("split", pa.string()),
            ("country", pa.string()),
            ("s1_name", pa.string()),
            ("s2v1_name", pa.string()),
            ("contains_seasonal_snow", pa.bool_()),
            ("contains_cloud_or_shadow", pa.bool_()),
        ]
    )
    for name, keep in ((V2_METADATA, False), (V2_SNOW_CLOUD_METADATA, True)):
        rows = sorted((s for s in specs if (s.snow or s.cloud) == keep), key=lambda s: s.v2_id)
        table = pa.Table.from_pylist(
            [
                {
                    "patch_id": s.v2_id,
                    "labels": s.labels,
                    "split": s.split,
                    "country": s.country,
                    "s1_name": s.s1_name,
                    "s2v1_name": s.v1_name,
                    "contains_seasonal_snow": s.snow,
                    "contains_cloud_or_shadow": s.cloud,
                }
                for s in rows
            ],
            schema=schema,
        )
        pq.write_table(table, join(root, name), filesystem=fs, compression="zstd")


def _write_v1_lists(fs: Any, root: str, specs: list[PairSpec]) -> str:
    folder = join(root, "lists")
    fs.makedirs(folder, exist_ok=True)
    crlf = "\r\n"
    no19 = [s for s in specs if not s.labels]
    listed = {s.index for s in specs if s.snow or s.cloud or not s.labels}
    texts = {
        V1_LISTS["mapping"]: "s1_name,s2_name\n" + "".join(f"{s.s1_name},{s.v1_name}\n" for s in specs),
        V1_LISTS["seasonal_snow"]: "".join(s.v1_name + crlf for s in specs if s.snow),
        V1_LISTS["cloud_or_shadow"]: "".join(s.v1_name + crlf for s in specs if s.cloud and not s.snow),
        V1_LISTS["no_19_class_label"]: "".join(s.v1_name + "\n" for s in no19),
    }
    for split in ("train", "validation", "test"):
        texts[V1_LISTS[split]] = "".join(
            f"{s.v1_name},{s.s1_name}{crlf}" for s in specs if s.split == split and s.index not in listed
        )
    for name, text in texts.items():
        fs.pipe_file(join(folder, name), text.encode())
    return folder


def synthesize(
    out: str,
    *,
    layout: Literal["v1", "v2"] = "v2",
    pairs: int = 100,
    seed: int = 0,
    metadata: str | None = None,
    storage: StorageOptions | None = None,
    workers: int | None = None,
    progress: bool = True,
    packed: bool = False,
    reference_maps: bool = False,
) -> SynthResult:
    """Write `pairs` synthetic pairs to `out` in the `layout` of BigEarthNet v1.0 or v2.0.

    `packed`: write them as the published downloads instead (bigearth.synth.packed: the tar members, order and
    compression of the real files), from an extracted copy in a temporary folder. `reference_maps` (v2): also
    write each patch's reference map (the CLC codes of the rendered classes, as the archive's GeoTIFFs).
    """
    if layout not in ("v1", "v2"):
        raise ValueError(f"layout must be v1 or v2, got {layout!r}")
    if packed:
        import tempfile

        from bigearth.synth.packed import pack_archive

        with tempfile.TemporaryDirectory(prefix="bigearth-synth-") as tmp:
            synthesize(
                tmp,
                layout=layout,
                pairs=pairs,
                seed=seed,
                metadata=metadata,
                workers=workers,
                progress=progress,
                reference_maps=reference_maps,
            )
            pack_archive(tmp, out, layout, storage)
        return SynthResult(out, layout, pairs, join(out, "lists") if layout == "v1" else None)
    storage = storage or StorageOptions.from_env()
    fs, root = open_fs(out, storage)
    specs = make_specs(pairs, seed, metadata, layout)
    fs.makedirs(root, exist_ok=True)
    chunk = 64
    jobs = [
        (out, layout, storage.as_dict(), seed, [asdict(s) for s in specs[i : i + chunk]], reference_maps)
        for i in range(0, len(specs), chunk)
    ]
    workers = workers or (1 if pairs < 256 else min(os.cpu_count() or 1, 8))
    bar = tqdm(total=pairs, desc=f"synth {layout}", unit="pair", disable=not progress)
    if workers == 1:
        for j in jobs:
            bar.update(_write_chunk(j))
    else:
        with ProcessPoolExecutor(workers) as pool:
            for n in pool.map(_write_chunk, jobs):
                bar.update(n)
    bar.close()
    lists = None
    if layout == "v2":
        _write_v2_metadata(fs, root, specs)
    else:
        fs.makedirs(join(root, V1_S2_DIR), exist_ok=True)
        lists = _write_v1_lists(fs, root, specs)
    return SynthResult(out, layout, pairs, lists)
