"""ReBENDataset over a real sharded archive and a plain reBEN-style LMDB.

Expected values are computed here independently of the code under test: nearest
upsampling with ``np.repeat``, normalisation with the SPEC section 9 table typed in
below, labels and masks from literal class lists and CLC code tables.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import geopandas as gpd
import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import save as st_save
from shapely.geometry import box
from torch.utils.data import DataLoader, default_collate

from reben_tools.format import codec
from reben_tools.format.codec import ValueDecodeError
from reben_tools.format.layout import ArchiveError
from reben_tools.format.manifest import build_manifest, write_manifest
from reben_tools.format.metadata import write_metadata
from reben_tools.format.shards import write_shard
from reben_tools.learn.data.batches import SampleBatch, collate
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.learn.data.transforms import NativeLayout, NativeToImage, upsample_and_normalise

# ---- independent facts ------------------------------------------------------------------

SPEC_STATS = {  # SPEC section 9 / ConfigILM BENv2_utils "120_nearest", in full (issue 11)
    "B01": (361.0767822265625, 575.0687255859375),
    "B02": (438.3720703125, 607.02685546875),
    "B03": (614.0556640625, 603.2968139648438),
    "B04": (588.4096069335938, 684.56884765625),
    "B05": (942.8433227539062, 738.4326782226562),
    "B06": (1769.931640625, 1100.4560546875),
    "B07": (2049.551513671875, 1275.805419921875),
    "B08": (2193.2919921875, 1369.3717041015625),
    "B8A": (2235.556640625, 1356.5440673828125),
    "B09": (2241.455322265625, 1316.393310546875),
    "B11": (1568.226806640625, 1070.1612548828125),
    "B12": (997.7324829101562, 813.5276489257812),
    "VV": (-12.643863677978516, 5.133493900299072),
    "VH": (-19.352558135986328, 5.590505599975586),
}
ALL = ["VV", "VH", "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
NATIVE_SIZE = {
    "B01": 20,
    "B09": 20,
    "B02": 120,
    "B03": 120,
    "B04": 120,
    "B08": 120,
    "B05": 60,
    "B06": 60,
    "B07": 60,
    "B8A": 60,
    "B11": 60,
    "B12": 60,
    "VV": 120,
    "VH": 120,
}
ORIGINAL = [
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
]
ALPHABETICAL = sorted(ORIGINAL)
CODE_CLASS = {  # CLC code -> 19-class name (None = UNLABELED)
    111: "Urban fabric",
    211: "Arable land",
    312: "Coniferous forest",
    523: "Marine waters",
    231: "Pastures",
    243: "Land principally occupied by agriculture, with significant areas of natural vegetation",
    124: None,
    999: None,
}
SPLIT_CYCLE = ["train", "train", "validation", "test"]
N_PATCHES = 12
SNOWY, CLOUDY = 5, 9  # indices of flagged patches


def patch_id(i: int) -> str:
    return f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i:02d}_{i + 3:02d}"


def s1_name(i: int) -> str:
    return f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{i}_{i + 3}"


def upsample(a: np.ndarray) -> np.ndarray:
    f = 120 // a.shape[0]
    return np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def expected_image(p: dict, bands: list[str], stats: dict | None = SPEC_STATS) -> np.ndarray:
    planes = []
    for b in bands:
        x = upsample(p["bands"][b]).astype(np.float64)
        if stats is not None:
            x = (x - stats[b][0]) / stats[b][1]
        planes.append(x)
    return np.stack(planes).astype(np.float32)


def expected_mask(reference_map: np.ndarray, names: list[str]) -> np.ndarray:
    out = np.full(reference_map.shape, 255, dtype=np.uint8)
    for code, name in CODE_CLASS.items():
        if name is not None:
            out[reference_map == code] = names.index(name)
    return out


def close(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-5, atol=1e-5)


# ---- fixtures: a sharded archive and a plain LMDB -----------------------------------------
# (named apart from their functions so test_interop can import them without shadowing a name)


@pytest.fixture(scope="module", name="patches")
def patches_fixture() -> list[dict]:
    rng = np.random.default_rng(7)
    codes = np.array(list(CODE_CLASS), dtype=np.uint16)
    out = []
    for i in range(N_PATCHES):
        bands = {b: rng.integers(1, 10000, (NATIVE_SIZE[b],) * 2, dtype=np.uint16) for b in ALL if b[0] == "B"}
        bands["VV"] = rng.normal(-12, 5, (120, 120)).astype(np.float32)
        bands["VH"] = rng.normal(-19, 5, (120, 120)).astype(np.float32)
        quadrant_codes = rng.choice(codes, (2, 2))
        quadrant_codes[0, 0] = 111 if i % 2 else 211  # at most 3 quadrants unlabelled
        reference_map = np.repeat(np.repeat(quadrant_codes, 60, 0), 60, 1).astype(np.uint16)
        names = sorted({CODE_CLASS[int(c)] for c in quadrant_codes.ravel()} - {None})
        out.append(
            {
                "id": patch_id(i),
                "s1": s1_name(i),
                "bands": bands,
                "reference_map": reference_map,
                "labels": names,
                "split": SPLIT_CYCLE[i % 4],
                "snow": i == SNOWY,
                "cloud": i == CLOUDY,
            }
        )
    return out


def metadata_rows(patches: list[dict]) -> list[dict]:
    return [
        {
            "patch_id": p["id"],
            "labels": p["labels"],
            "split": p["split"],
            "country": "Austria",
            "s1_name": p["s1"],
            "s2v1_name": None,
            "contains_seasonal_snow": p["snow"],
            "contains_cloud_or_shadow": p["cloud"],
        }
        for p in patches
    ]


def values_of(p: dict) -> list[tuple[str, bytes]]:
    s2 = {b: a for b, a in p["bands"].items() if b[0] == "B"}
    s1 = {b: p["bands"][b] for b in ("VV", "VH")}
    return [
        (p["id"], codec.encode_s2(s2)),
        (p["s1"], codec.encode_s1(s1)),
        (p["id"] + "_reference_map", codec.encode_reference_map(p["reference_map"])),
    ]


MANIFEST_STATS = {b: (1000.0 + 10 * k, 400.0 + k) for k, b in enumerate(ALL)}


@pytest.fixture(scope="module", name="archive_dir")
def archive_dir_fixture(tmp_path_factory, patches) -> Path:
    root = tmp_path_factory.mktemp("archive")
    shard_of = {p["id"]: f"part-{i % 3}" for i, p in enumerate(patches)}
    infos = []
    for name in sorted(set(shard_of.values())):
        items = [kv for p in patches if shard_of[p["id"]] == name for kv in values_of(p)]
        infos.append(write_shard(root / "shards", name, items))
    write_metadata(root, metadata_rows(patches))
    gpd.GeoDataFrame(
        {
            "patch_id": [p["id"] for p in patches],
            "s1_name": [p["s1"] for p in patches],
            "shard": [shard_of[p["id"]] for p in patches],
        },
        geometry=[box(14.0 + i * 0.01, 48.0, 14.01 + i * 0.01, 48.01) for i in range(len(patches))],
        crs="EPSG:4326",
    ).to_parquet(root / "patches.parquet")
    manifest = build_manifest(infos, {"patches": len(patches)}, MANIFEST_STATS, [], {}, "test")
    write_manifest(root, manifest)
    return root


REBEN_SCHEMA = pa.schema(
    [
        ("patch_id", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("split", pa.string()),
        ("country", pa.string()),
        ("s1_name", pa.string()),
        ("s2v1_name", pa.string()),
        ("contains_seasonal_snow", pa.bool_()),
        ("contains_cloud_or_shadow", pa.bool_()),
    ]
)


def write_plain(directory: Path, items: list[tuple[str, bytes]]) -> None:
    """One LMDB environment written directly with py-lmdb, as reBEN users hold it."""
    env = lmdb.open(str(directory), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for key, value in sorted(items):
            txn.put(key.encode(), value)
    env.close()


@pytest.fixture(scope="module", name="plain")
def plain_fixture(tmp_path_factory, patches) -> tuple[Path, list[Path]]:
    base = tmp_path_factory.mktemp("plain")
    write_plain(base / "BigEarthNet-V2-LMDB", [kv for p in patches for kv in values_of(p)])
    rows = metadata_rows(patches)
    clean = [r for r in rows if not (r["contains_seasonal_snow"] or r["contains_cloud_or_shadow"])]
    flagged = [r for r in rows if r["contains_seasonal_snow"] or r["contains_cloud_or_shadow"]]
    pq.write_table(pa.Table.from_pylist(clean, REBEN_SCHEMA), base / "metadata.parquet")
    pq.write_table(pa.Table.from_pylist(flagged, REBEN_SCHEMA), base / "metadata_snow.parquet")
    return base / "BigEarthNet-V2-LMDB", [base / "metadata.parquet", base / "metadata_snow.parquet"]


def by_id(patches: list[dict]) -> dict[str, dict]:
    return {p["id"]: p for p in patches}


# ---- tensors ------------------------------------------------------------------------------


def test_sample_matches_numpy_upsampling_and_spec_statistics(archive_dir, patches):
    ds = ReBENDataset(archive_dir)
    clean = [p for p in patches if not (p["snow"] or p["cloud"])]
    assert len(ds) == len(clean) == 10
    assert ds.patch_ids == sorted(p["id"] for p in clean)
    for i in range(len(ds)):
        sample = ds[i]
        p = by_id(patches)[sample["patch_id"]]
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (14, 120, 120)
        close(sample["image"], expected_image(p, ALL))
        assert set(sample) == {"image", "label", "patch_id"}


def test_plain_lmdb_with_metadata_gives_the_same_samples(archive_dir, plain, patches):
    lmdb_dir, metadata = plain
    a = ReBENDataset(archive_dir, include_snow_cloud=True, return_mask=True)
    b = ReBENDataset(lmdb_dir, metadata=metadata, include_snow_cloud=True, return_mask=True)
    assert len(a) == len(b) == N_PATCHES and a.patch_ids == b.patch_ids
    for i in range(N_PATCHES):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["image"], sb["image"]) and torch.equal(sa["label"], sb["label"])
        assert torch.equal(sa["mask"], sb["mask"])
        close(sb["image"], expected_image(by_id(patches)[sb["patch_id"]], ALL))
    only_clean = ReBENDataset(lmdb_dir, metadata=metadata)
    assert len(only_clean) == 10


def test_plain_lmdb_finds_rebens_metadata_beside_it_and_refuses_without(plain, tmp_path):
    lmdb_dir, metadata = plain
    found = ReBENDataset(lmdb_dir)  # metadata.parquet sits beside it under reBEN's name
    assert found.source.origin == "beside" and found.source.metadata[0] == lmdb_dir.parent / "metadata.parquet"
    assert len(found) == len(ReBENDataset(lmdb_dir, metadata=metadata[:1]))
    found.close()
    alone = tmp_path / "alone"
    shutil.copytree(lmdb_dir, alone)
    with pytest.raises(ValueError, match=r"needs its metadata: give --metadata metadata.parquet"):
        ReBENDataset(alone)


@pytest.mark.parametrize("order,names", [("alphabetical", ALPHABETICAL), ("original", ORIGINAL)])
def test_label_vectors_and_masks_in_both_class_orders(archive_dir, patches, order, names):
    ds = ReBENDataset(archive_dir, class_order=order, return_mask=True, bands="RGB")
    assert list(ds.class_names) == names
    for i in range(len(ds)):
        sample = ds[i]
        p = by_id(patches)[sample["patch_id"]]
        expected = np.zeros(19, np.float32)
        for name in p["labels"]:
            expected[names.index(name)] = 1
        assert sample["label"].dtype == torch.float32
        np.testing.assert_array_equal(sample["label"].numpy(), expected)
        assert sample["mask"].dtype == torch.uint8 and sample["mask"].shape == (120, 120)
        np.testing.assert_array_equal(sample["mask"].numpy(), expected_mask(p["reference_map"], names))
    # alphabetical index 0 is Agro-forestry areas, original index 0 is Urban fabric
    assert names[0] == {"alphabetical": "Agro-forestry areas", "original": "Urban fabric"}[order]


def test_mask_int64_keeps_255_for_unlabelled(archive_dir, patches):
    ds = ReBENDataset(archive_dir, return_mask=True, mask_dtype=torch.int64, bands="S1")
    masks = collate(ds.__getitems__(list(range(len(ds)))))["mask"]
    assert masks.dtype == torch.int64 and masks.shape == (len(ds), 120, 120)
    refs = np.stack([by_id(patches)[pid]["reference_map"] for pid in ds.patch_ids])
    unlabelled = np.isin(refs, [124, 999])
    assert unlabelled.any()
    np.testing.assert_array_equal(masks.numpy() == 255, unlabelled)


def test_split_filtering(archive_dir, patches):
    for split in ("train", "validation", "test"):
        ds = ReBENDataset(archive_dir, split=split, include_snow_cloud=True)
        assert ds.patch_ids == sorted(p["id"] for p in patches if p["split"] == split)
        assert all(m == split for m in ds.metadata.column("split").to_pylist())
    assert [len(ReBENDataset(archive_dir, split=s)) for s in ("train", "validation", "test")] == [4, 3, 3]
    with pytest.raises(ValueError, match="split"):
        ReBENDataset(archive_dir, split="val")


def test_snow_cloud_patches_only_when_asked(archive_dir, patches):
    flagged = {patches[SNOWY]["id"], patches[CLOUDY]["id"]}
    assert not flagged & set(ReBENDataset(archive_dir).patch_ids)
    assert flagged <= set(ReBENDataset(archive_dir, include_snow_cloud=True).patch_ids)


@pytest.mark.parametrize(
    "bands,names",
    [
        ("RGB", ["B04", "B03", "B02"]),
        ("S1", ["VV", "VH"]),
        ("60m", ["B01", "B09"]),
        ("S1_10m_20m", ["VV", "VH", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]),
        (["B12", "VH", "B01", "B02"], ["B12", "VH", "B01", "B02"]),
    ],
)
def test_band_groups_and_lists(archive_dir, patches, bands, names):
    ds = ReBENDataset(archive_dir, bands=bands)
    assert list(ds.bands) == names and ds.num_channels == len(names)
    batch = collate(ds.__getitems__([0, 3]))
    for row, pid in enumerate(batch["patch_id"]):
        close(batch["image"][row], expected_image(by_id(patches)[pid], names))


def test_manifest_and_no_normalisation(archive_dir, plain, patches):
    manifest = ReBENDataset(archive_dir, normalisation="manifest", bands="ALL")
    raw = ReBENDataset(archive_dir, normalisation=None, bands="ALL")
    p = by_id(patches)[manifest[1]["patch_id"]]
    close(manifest[1]["image"], expected_image(p, ALL, MANIFEST_STATS))
    np.testing.assert_array_equal(raw[1]["image"].numpy(), expected_image(p, ALL, None))
    with pytest.raises(ValueError, match="manifest"):
        ReBENDataset(plain[0], metadata=plain[1], normalisation="manifest")
    with pytest.raises(ValueError, match="normalisation"):
        ReBENDataset(archive_dir, normalisation="nonsense")


def test_bilinear_upsampling_is_align_corners_false(archive_dir, patches):
    ds = ReBENDataset(archive_dir, bands=["B05", "B01", "B02"], upsampling="bilinear")
    sample = ds[2]
    p = by_id(patches)[sample["patch_id"]]
    for c, band in enumerate(["B05", "B01", "B02"]):
        x = torch.from_numpy(p["bands"][band].astype(np.float32))[None, None]
        if band != "B02":
            x = F.interpolate(x, size=(120, 120), mode="bilinear", align_corners=False)
        expected = (x[0, 0].numpy().astype(np.float64) - SPEC_STATS[band][0]) / SPEC_STATS[band][1]
        np.testing.assert_allclose(sample["image"][c].numpy(), expected, rtol=1e-5, atol=1e-5)


# ---- native mode and the batched device function --------------------------------------


@pytest.mark.parametrize("upsampling", ["nearest", "bilinear"])
@pytest.mark.parametrize("bands", ["ALL", "S1_10m_20m", ["B09", "B8A", "VH", "B03"]])
def test_native_batches_turn_into_the_per_sample_images(archive_dir, patches, upsampling, bands):
    image_ds = ReBENDataset(archive_dir, bands=bands, upsampling=upsampling)
    native_ds = ReBENDataset(archive_dir, bands=bands, upsampling=upsampling, native=True)
    indices = [4, 0, 7, 2]
    batch = collate(native_ds.__getitems__(indices))
    layout = native_ds.layout
    for group in layout.groups:
        t = batch[group.name]
        assert t.dtype == (torch.float32 if group.name == "s1" else torch.uint16)
        assert t.shape == (4, len(group.bands), group.size, group.size)
        for row, pid in enumerate(batch["patch_id"]):
            for k, band in enumerate(group.bands):
                np.testing.assert_array_equal(t[row, k].numpy(), by_id(patches)[pid]["bands"][band])
    per_sample = torch.stack([image_ds[i]["image"] for i in indices])
    transform = native_ds.native_transform()
    assert torch.equal(transform(batch), per_sample)
    assert torch.equal(NativeToImage(layout, SPEC_STATS, upsampling)(batch), per_sample)
    mean, inv = transform.mean, transform.inv_std
    assert torch.equal(upsample_and_normalise(batch, layout, mean, inv, upsampling), per_sample)
    assert torch.equal(collate(image_ds.__getitems__(indices))["image"], per_sample)


@pytest.mark.parametrize("upsampling", ["nearest", "bilinear"])
def test_native_transform_without_normalisation(archive_dir, patches, upsampling):
    native = ReBENDataset(archive_dir, bands=["B8A", "B02"], normalisation=None, native=True, upsampling=upsampling)
    images = native.native_transform()(collate(native.__getitems__([0, 1])))
    raw = ReBENDataset(archive_dir, bands=["B8A", "B02"], normalisation=None, upsampling=upsampling)
    assert torch.equal(images, collate(raw.__getitems__([0, 1]))["image"])
    if upsampling == "nearest":
        p = by_id(patches)[native.patch_ids[1]]
        np.testing.assert_array_equal(images[1].numpy(), expected_image(p, ["B8A", "B02"], None))


def test_native_sample_keys(archive_dir):
    ds = ReBENDataset(archive_dir, bands="10m_20m", native=True, return_mask=True)
    sample = ds[0]
    assert set(sample) == {"s2_10m", "s2_20m", "label", "patch_id", "mask"}
    assert sample["s2_10m"].shape == (4, 120, 120) and sample["s2_20m"].shape == (6, 60, 60)
    assert NativeLayout.for_bands("10m_20m") == ds.layout


def test_getitems_is_a_list_of_samples_backed_by_one_batch(archive_dir):
    ds = ReBENDataset(archive_dir, return_mask=True)
    items = ds.__getitems__([1, 2, 3])
    assert isinstance(items, SampleBatch) and len(items) == 3
    batch = collate(items)
    assert batch["image"].shape == (3, 14, 120, 120) and batch["label"].shape == (3, 19)
    assert batch["mask"].shape == (3, 120, 120) and batch["patch_id"] == ds.patch_ids[1:4]
    stacked = default_collate(list(items))  # plain PyTorch collation still works
    assert torch.equal(stacked["image"], batch["image"]) and stacked["patch_id"] == batch["patch_id"]
    assert collate([ds[1], ds[2]])["image"].shape == (2, 14, 120, 120)
    with pytest.raises(IndexError):
        ds.__getitems__([len(ds)])


def test_dataloader_with_two_forked_workers(archive_dir, patches):
    ds = ReBENDataset(archive_dir, include_snow_cloud=True, return_mask=True)
    first = ds[0]["image"]  # environments opened in the parent before the fork
    loader = DataLoader(
        ds,
        batch_size=5,
        shuffle=True,
        num_workers=2,
        collate_fn=collate,
        multiprocessing_context="fork",
        generator=torch.Generator().manual_seed(0),
    )
    seen = []
    for batch in loader:
        assert batch["image"].shape[1:] == (14, 120, 120)
        for row, pid in enumerate(batch["patch_id"]):
            close(batch["image"][row], expected_image(by_id(patches)[pid], ALL))
        seen += batch["patch_id"]
    assert sorted(seen) == sorted(p["id"] for p in patches)
    assert torch.equal(ds[0]["image"], first)
    native = ReBENDataset(archive_dir, native=True)
    loader = DataLoader(native, batch_size=4, num_workers=2, collate_fn=collate, multiprocessing_context="fork")
    images = torch.cat([native.native_transform()(b) for b in loader])
    assert torch.equal(images, collate(ReBENDataset(archive_dir).__getitems__(list(range(len(native)))))["image"])


def test_pickles_and_shares_environments_between_datasets(archive_dir):
    train = ReBENDataset(archive_dir, split="train")
    validation = ReBENDataset(archive_dir, split="validation")
    assert train[0]["patch_id"] != validation[0]["patch_id"]  # both open the same shards in one process
    clone = pickle.loads(pickle.dumps(train))
    assert torch.equal(clone[1]["image"], train[1]["image"])


def test_native_transform_checks_shapes(archive_dir):
    ds = ReBENDataset(archive_dir, bands="RGB", native=True)
    batch = collate(ds.__getitems__([0, 1]))
    batch["s2_10m"] = batch["s2_10m"][:, :2]
    with pytest.raises(ValueError, match="s2_10m"):
        upsample_and_normalise(batch, ds.layout)


# ---- bad values -----------------------------------------------------------------------------


@pytest.fixture
def broken(tmp_path, patches):
    """A plain LMDB where patch 0's S2 value is truncated, patch 1's S2 value holds float32
    tensors, patch 2's S1 value is not safetensors, patch 3's S1 partner is missing and
    patch 4's reference map holds code 4000."""
    items = dict(kv for p in patches[:6] for kv in values_of(p))
    items[patches[0]["id"]] = items[patches[0]["id"]][:-100]
    items[patches[1]["id"]] = st_save({b: a.astype(np.float32) for b, a in patches[1]["bands"].items() if b[0] == "B"})
    items[patches[2]["s1"]] = b'{"not": "safetensors"}'
    del items[patches[3]["s1"]]
    bad_map = patches[4]["reference_map"].copy()
    bad_map[0, 0] = 4000
    items[patches[4]["id"] + "_reference_map"] = codec.encode_reference_map(bad_map)
    write_plain(tmp_path / "lmdb", list(items.items()))
    table = pa.Table.from_pylist(metadata_rows(patches[:6]), REBEN_SCHEMA)
    pq.write_table(table, tmp_path / "metadata.parquet")
    return tmp_path / "lmdb", [tmp_path / "metadata.parquet"]


def test_bad_values_raise_errors_naming_the_key(broken, patches):
    lmdb_dir, metadata = broken
    ds = ReBENDataset(lmdb_dir, metadata=metadata, include_snow_cloud=True, return_mask=True)
    position = {pid: i for i, pid in enumerate(ds.patch_ids)}
    with pytest.raises(ValueDecodeError, match=patches[0]["id"] + ".*outside the 159900 data bytes"):
        ds[position[patches[0]["id"]]]
    with pytest.raises(ValueDecodeError, match=patches[1]["id"] + ".*float32 .*expected uint16"):
        ds[position[patches[1]["id"]]]
    with pytest.raises(ValueDecodeError, match=patches[2]["s1"] + ".*header length"):
        ds[position[patches[2]["id"]]]
    with pytest.raises(KeyError, match=patches[3]["s1"]):
        ds[position[patches[3]["id"]]]
    with pytest.raises(ValueDecodeError, match=patches[4]["id"] + "_reference_map.*4000"):
        ds[position[patches[4]["id"]]]
    with pytest.raises(ValueDecodeError, match=patches[0]["id"]):
        ds.__getitems__([position[patches[5]["id"]], position[patches[0]["id"]]])
    ok = ds[position[patches[5]["id"]]]  # a good patch still reads after the failures
    close(ok["image"], expected_image(patches[5], ALL))
    native = ReBENDataset(lmdb_dir, metadata=metadata, include_snow_cloud=True, native=True)
    with pytest.raises(ValueDecodeError, match=patches[0]["id"]):
        native[position[patches[0]["id"]]]


def test_bad_arguments(archive_dir, tmp_path):
    with pytest.raises(ValueError, match="band"):
        ReBENDataset(archive_dir, bands="B10")
    with pytest.raises(ValueError, match="upsampling"):
        ReBENDataset(archive_dir, upsampling="bicubic")
    with pytest.raises(ValueError, match="class order"):
        ReBENDataset(archive_dir, class_order="random")
    with pytest.raises(ValueError, match="VV"):
        ReBENDataset(archive_dir, normalisation={"B02": (0.0, 1.0)}, bands=["B02", "VV"])
    with pytest.raises(ArchiveError, match=str(tmp_path)):
        ReBENDataset(tmp_path)
