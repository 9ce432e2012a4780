"""Adversarial input: untrusted names, hostile values, broken metadata and manifests.

- Patch ids and S1 names taken from metadata files (``/``, ``..``, NUL, backslashes,
  absurd length) never make ``export-tiff`` or ``encode`` write outside their output
  directory, and each is reported by name instead of crashing.
- Hostile safetensors values (header longer than the value, malformed JSON, offsets out
  of range, unknown dtype strings, huge declared shapes, truncation) are rejected naming
  the key by ``verify``, the dataset (also inside DataLoader workers) and ``export-tiff``,
  without large allocations.
- Fuzzing (hypothesis, fixed budget, derandomised) of the patch-id and S1-name parsers,
  the release-folder builder and the value decoder.
- Metadata parquet files with wrong types, duplicated or null ids, missing columns, and
  manifests that disagree with their shards: ``verify`` and the dataset say what is wrong.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import REPO, lmdb_items

from reben_tools.format import naming
from reben_tools.format.codec import ValueDecodeError, check_value, encode_reference_map, encode_s1, encode_s2
from reben_tools.format.layout import METADATA_FILE, PATCHES_FILE, SHARD_KEYS_FILE, SHARDS_DIR, ArchiveError
from reben_tools.format.manifest import build_manifest, write_manifest
from reben_tools.format.metadata import METADATA_COLUMNS, METADATA_SCHEMA, write_metadata
from reben_tools.format.shards import write_shard
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.release.archive_tools import export_geotiffs, verify_archive
from reben_tools.release.encode import encode_release, write_patches_parquet
from reben_tools.release.encode_plan import PATCH_ROWS_SCHEMA
from reben_tools.release.geotiff_write import patch_folder
from reben_tools.release.synthetic_release import synthetic_patch, write_synthetic_release

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

PRODUCT = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
S1_PRODUCT = "S1B_IW_GRDH_1SDV_20170612T165809"
GOOD_ID = f"{PRODUCT}_26_57"
GOOD_S1 = f"{S1_PRODUCT}_33UUP_26_57"

BAD_NAMES = {
    "parent traversal": "../../escape_01_02",
    "slash inside": "sub/dir_01_02",
    "absolute path": "/tmp/reben-absolute-escape_01_02",
    "NUL byte": "nul\x00byte_01_02",
    "backslashes": "..\\..\\win-escape_01_02",
    "dot-dot product": ".._01_02",
    "hidden": ".hidden_01_02",
    "absurd length": "A" * 450 + "_01_02",
}


def real_values(seed: int = 0) -> tuple[bytes, bytes, bytes]:
    s2, s1, reference_map = synthetic_patch(np.random.default_rng(seed), (211, 231, 311))
    return encode_s2(s2), encode_s1(s1), encode_reference_map(reference_map)


def craft_archive(root: Path, patches: list[dict]) -> Path:
    """An archive whose single shard holds exactly the given keys and values.

    Each patch: ``patch_id``, ``s1_name`` (or None), ``values`` {key: bytes}; placed on the
    grid of tile 33UUP (EPSG:32633) at x = 26 + its index.
    """
    items, rows, meta = {}, [], []
    for i, patch in enumerate(patches):
        items.update(patch["values"])
        pid, s1 = patch["patch_id"], patch.get("s1_name")
        ulx, uly = 300000 + 1200 * (26 + i), 5400000 - 1200 * 57
        rows.append(
            {
                "patch_id": pid,
                "s1_name": s1,
                "shard": "shard-00000",
                "tile": "33UUP",
                "x": 26 + i,
                "y": 57,
                "crs": "EPSG:32633",
                "ulx": float(ulx),
                "uly": float(uly),
                "lrx": float(ulx + 1200),
                "lry": float(uly - 1200),
                "split": "train",
                "country": "Austria",
                "labels": ["Pastures"],
                "s2v1_name": None,
                "contains_seasonal_snow": False,
                "contains_cloud_or_shadow": False,
                "has_s1": s1 is not None and s1 in patch["values"],
                "has_reference_map": naming.reference_map_key(pid) in patch["values"],
            }
        )
        meta.append({k: rows[-1][k] for k in METADATA_COLUMNS})
    table = pa.Table.from_pylist(rows, schema=PATCH_ROWS_SCHEMA)
    root.mkdir(parents=True)
    info = write_shard(root / SHARDS_DIR, "shard-00000", items.items(), rows=table)
    write_patches_parquet(root / PATCHES_FILE, table)
    write_metadata(root, meta)
    write_manifest(root, build_manifest([info], {}, {}, [], {}, "test"))
    return root


def shown(key: str) -> str:
    """How export errors show a key: repr, or over 120 characters the first 60 and last 40."""
    return repr(key) if len(key) <= 120 else f"{key[:60]!r}...{key[-40:]!r}"


def files_under(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


# ---------------------------------------------------------------------------- untrusted names


@pytest.mark.parametrize("nested", [True, False], ids=["nested", "flat"])
def test_export_tiff_never_writes_outside_its_output(tmp_path, nested):
    s2, s1, reference_map = real_values()
    patches = [
        {
            "patch_id": GOOD_ID,
            "s1_name": GOOD_S1,
            "values": {GOOD_ID: s2, GOOD_S1: s1, naming.reference_map_key(GOOD_ID): reference_map},
        }
    ]
    # a well-formed patch whose S1 name (from metadata) climbs out of the output
    second = f"{PRODUCT}_27_57"
    evil_s1 = "../../../S1A_IW_GRDH_1SDV_20170612T165809_evil_1_2"
    patches.append(
        {
            "patch_id": second,
            "s1_name": evil_s1,
            "values": {second: s2, evil_s1: s1, naming.reference_map_key(second): reference_map},
        }
    )
    patches.extend(
        {"patch_id": name, "s1_name": None, "values": {name: s2, naming.reference_map_key(name): reference_map}}
        for name in BAD_NAMES.values()
    )
    source = craft_archive(tmp_path / "archive", patches)
    out = tmp_path / "deep" / "er" / "still" / "export"
    before = files_under(tmp_path)

    proc = subprocess.run(
        [sys.executable, "-m", "reben_tools.cli", "export-tiff", str(source), str(out), "--quiet"]
        + ([] if nested else ["--flat"]),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    created = files_under(tmp_path) - before
    outside = sorted(p for p in created if not Path(p).is_relative_to(out))
    assert outside == []
    assert not Path("/tmp/reben-absolute-escape").exists()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR ")]
    # two errors per hostile patch id (its S2 value and its reference map), one for the hostile S1 name
    assert len(errors) == 2 * len(BAD_NAMES) + 1, errors
    for name in list(BAD_NAMES.values()) + [evil_s1]:
        keys = [name] if name == evil_s1 else [name, naming.reference_map_key(name)]
        for key in keys:
            assert (
                sum(
                    line.startswith(f"ERROR key {shown(key)}: ") and "cannot be a folder name" in line
                    for line in errors
                )
                == 1
            ), key
    # the two well-formed patches were written in full: 12 + 2 + 1 and 12 + 1 GeoTIFFs
    s2_dir = out / "BigEarthNet-S2" / (PRODUCT if nested else "")
    assert sorted(p.name for p in (s2_dir / GOOD_ID).iterdir()) == sorted(
        f"{GOOD_ID}_{b}.tif"
        for b in ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    )
    assert len(created) == 15 + 13
    assert proc.stdout.strip().endswith("2 patch(es), 28 GeoTIFF(s)")


@given(st.text(max_size=300) | st.sampled_from(list(BAD_NAMES.values())).map(lambda s: s + "\x00../"))
@FUZZ
def test_fuzz_release_folders_stay_inside_the_release(name):
    root = Path("/nonexistent/release-root")
    for kind in ("S2", "S1", "reference_map"):
        for nested in (True, False):
            try:
                folder = patch_folder(root, kind, name, nested)
            except ValueError:
                continue
            assert folder.resolve().is_relative_to(root) and folder.name == name
            assert "\x00" not in str(folder) and ".." not in folder.relative_to(root).parts


def test_encode_with_hostile_metadata_names_reports_them_and_stays_inside(tmp_path):
    release = write_synthetic_release(tmp_path / "release", 2, seed=5)
    table = pq.read_table(release.metadata_files[0]).to_pylist() + pq.read_table(release.metadata_files[1]).to_pylist()
    assert len(table) == 2
    first, second = sorted(table, key=lambda r: r["patch_id"])
    second["s1_name"] = "../../../../etc/passwd"  # an S1 partner name from the metadata that climbs out
    huge = "B" * 5000 + "_01_02"
    rows = [first, second] + [dict(first, patch_id=name, s1_name=name) for name in [*BAD_NAMES.values(), huge]]
    metadata = tmp_path / "hostile.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=METADATA_SCHEMA), metadata)
    out = tmp_path / "a" / "b" / "archive"
    before = files_under(tmp_path)

    summary = encode_release(
        release.s2_dir,
        out,
        release.s1_dir,
        release.reference_maps_dir,
        [metadata],
        workers=1,
        patches_per_shard=4,
        progress=False,
        require_pairs=True,
    )
    created = files_under(tmp_path) - before
    assert sorted(p for p in created if not Path(p).is_relative_to(out)) == []
    assert summary.patches == 1
    stored = {key for shard in (out / "shards").iterdir() for key in lmdb_items(shard)}
    assert stored == {first["patch_id"], first["s1_name"], first["patch_id"] + "_reference_map"}
    report = json.loads((out / "report.json").read_text())
    reasons = {s["item"]: s["reason"] for s in report["skipped"]}
    assert reasons[second["patch_id"]] == f"S1 partner ../../../../etc/passwd of {second['patch_id']} not found"
    for name in BAD_NAMES.values():
        if len(name.encode()) <= 490:
            assert reasons[name] == f"S2 patch folder of {name} not found in the release"
    assert "cannot be an LMDB key" in reasons[huge]
    assert len(reasons) == len(BAD_NAMES) + 2


# ---------------------------------------------------------------------------- hostile values


def _header_and_data(value: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<Q", value, 0)
    return json.loads(value[8 : 8 + n]), value[8 + n :]


def _value(header: dict | bytes, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def hostile_values(valid: bytes) -> dict[str, tuple[bytes, str]]:
    """case -> (value, the phrase its rejection must contain)."""
    header, data = _header_and_data(valid)
    (n,) = struct.unpack_from("<Q", valid, 0)

    def edit(band: str, **fields) -> dict:
        out = json.loads(json.dumps(header))
        out[band].update(fields)
        return out

    return {
        "header longer than value": (
            struct.pack("<Q", 5000) + valid[8:2000],
            "header length 5000 exceeds the value's 2000",
        ),
        "header longer than the limit": (
            struct.pack("<Q", len(valid) + 1) + valid[8:],
            "exceeds the 100000-byte limit",
        ),
        "header length 2**63": (struct.pack("<Q", 2**63) + valid[8:], "exceeds the 100000-byte limit"),
        "malformed JSON": (_value(b'{"B01": {"dtype": "U16", "shape": [20, 2' + b" " * 40, data), "not valid JSON"),
        "header not an object": (_value(b"[1, 2, 3]", data), "not a JSON object"),
        "offsets past the data": (_value(edit("B01", data_offsets=[0, 10**12]), data), "outside the"),
        "negative offsets": (_value(edit("B01", data_offsets=[-800, 0]), data), "outside the"),
        "wrong dtype string": (_value(edit("B01", dtype="U17"), data), "unsupported dtype 'U17'"),
        "dtype not a string": (_value(edit("B01", dtype=["U16"]), data), "unsupported dtype"),
        "huge declared shape": (_value(edit("B01", shape=[2**31 - 1, 2**31 - 1]), data), "needs 9223372028264841218"),
        "shape beyond 2**31": (_value(edit("B01", shape=[2**40, 2**40]), data), "malformed shape"),
        "float shape": (_value(edit("B01", shape=[20.0, 20]), data), "malformed shape"),
        "truncated data": (valid[: 8 + n + 1000], "outside the"),
        "truncated header": (valid[:100], "exceeds the value's"),
        "empty value": (b"", "too short"),
        "float32 posing as uint16": (_value(edit("B01", dtype="F32", shape=[20, 10]), data), "expected uint16"),
    }


@pytest.fixture(scope="module")
def hostile_archive(tmp_path_factory):
    s2, _, _ = real_values(1)
    cases = hostile_values(s2)
    patches = [{"patch_id": GOOD_ID, "s1_name": None, "values": {GOOD_ID: s2}}]
    expected = {}
    for i, (case, (value, phrase)) in enumerate(sorted(cases.items())):
        pid = f"{PRODUCT}_{30 + i:02d}_57"
        patches.append({"patch_id": pid, "s1_name": None, "values": {pid: value}})
        expected[pid] = (case, phrase)
    root = craft_archive(tmp_path_factory.mktemp("hostile") / "archive", patches)
    return root, expected


def test_verify_names_every_hostile_value_and_nothing_else(hostile_archive):
    root, expected = hostile_archive
    report = verify_archive(root)
    assert report.values == len(expected) + 1
    by_key = {f.key: f.reason for f in report.faults}
    assert set(by_key) == set(expected), report.faults
    for pid, (case, phrase) in expected.items():
        assert by_key[pid].startswith(f"archive value {pid!r}: ") and phrase in by_key[pid], (case, by_key[pid])


def test_dataset_rejects_hostile_values_naming_the_key_without_large_allocations(hostile_archive):
    root, expected = hostile_archive
    dataset = ReBENDataset(root, bands="S2", normalisation=None)
    index = {pid: i for i, pid in enumerate(dataset.patch_ids)}
    good = dataset[index[GOOD_ID]]
    assert good["image"].shape == (12, 120, 120) and good["patch_id"] == GOOD_ID
    tracemalloc.start()
    try:
        for pid, (case, phrase) in expected.items():
            tracemalloc.reset_peak()
            with pytest.raises(ValueDecodeError) as caught:
                dataset[index[pid]]
            assert caught.value.key == pid and phrase in str(caught.value), case
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < 4 << 20, f"{case}: {peak} bytes allocated while rejecting the value"
    finally:
        tracemalloc.stop()


def test_a_hostile_value_inside_dataloader_workers_is_an_error_naming_the_key(hostile_archive):
    root, expected = hostile_archive
    dataset = ReBENDataset(root, bands="S2", normalisation=None)
    bad = next(iter(sorted(expected)))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, num_workers=2, collate_fn=lambda b: b, multiprocessing_context="fork"
    )
    # torch re-raises a worker's exception by its message (as RuntimeError when the type needs
    # more than one argument): either way the key and the reason reach the training loop
    with pytest.raises((ValueDecodeError, RuntimeError), match=f"ValueDecodeError: archive value {bad!r}: "):
        for _ in loader:
            pass


def test_decode_errors_survive_pickling_between_processes():
    import pickle

    from reben_tools.format.locking import OutputLockedError
    from reben_tools.release.geotiff_release import ReleaseError

    error = pickle.loads(pickle.dumps(ValueDecodeError("some-key", "truncated")))
    assert (error.key, error.reason, str(error)) == ("some-key", "truncated", "archive value 'some-key': truncated")
    error = pickle.loads(pickle.dumps(ReleaseError("/x/B02.tif", "unreadable")))
    assert (error.path, str(error)) == ("/x/B02.tif", "/x/B02.tif: unreadable")
    error = pickle.loads(pickle.dumps(OutputLockedError(Path("/out/.reben.lock"), {"pid": 7})))
    assert "pid 7 holds /out/.reben.lock" in str(error)


def test_export_reports_hostile_values_and_writes_the_good_patch(hostile_archive, tmp_path):
    root, expected = hostile_archive
    summary = export_geotiffs(root, tmp_path / "export")
    assert summary.patches == 1 and summary.files == 12
    assert len(summary.errors) == len(expected)
    for pid in expected:
        assert sum(error.startswith(f"archive value {pid!r}") for error in summary.errors) == 1


@given(
    dtype=st.sampled_from(["U16", "F32", "U8", "BF16", "u16", "", "U16\x00", "I64"]) | st.text(max_size=5),
    shape=st.lists(st.integers(-2, 2**62) | st.sampled_from([0, 1, 20, 60, 120]), max_size=4),
    begin=st.integers(-(2**64), 2**64),
    length=st.integers(-10, 2**64),
    band=st.sampled_from(["B01", "B02", "B8A", "__metadata__", "X"]),
)
@FUZZ
def test_fuzz_structured_headers_are_valid_or_rejected_naming_the_key(dtype, shape, begin, length, band):
    valid = FUZZ_VALID
    header, data = _header_and_data(valid)
    header[band] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, begin + length]}
    value = _value(header, data)
    try:
        arrays = check_value("fuzzed-key", value, "S2")
    except ValueDecodeError as exc:
        assert exc.key == "fuzzed-key" and str(exc).startswith("archive value 'fuzzed-key': ")  # noqa: PT017 -- fuzzing: rejection is a valid outcome, so pytest.raises does not apply
    else:
        assert sorted(arrays) == sorted(_header_and_data(valid)[0])


FUZZ_VALID = real_values(2)[0]


# ---------------------------------------------------------------------------- name parsers

MISSIONS = st.sampled_from(["S2A", "S2B", "S2C", "S2D"])
TILES = st.builds(
    lambda zone, band, a, b: f"{zone:02d}{band}{a}{b}",
    st.integers(1, 60),
    st.sampled_from("CDEFGHJKLMNPQRSTUVWX"),
    st.sampled_from("ABCDEFGHJKLMNPQRSTUVWXYZ"),
    st.sampled_from("ABCDEFGHJKLMNPQRSTUV"),
)
TIMES = st.datetimes(min_value=datetime(2015, 1, 1), max_value=datetime(2035, 1, 1)).map(
    lambda t: t.replace(microsecond=0)
)


@given(MISSIONS, TIMES, st.integers(0, 9999), st.integers(0, 999), TILES, st.integers(0, 9999), st.integers(0, 9999))
@FUZZ
def test_patch_ids_round_trip(mission, sensing, baseline, orbit, tile, x, y):
    prefix = f"{mission}_MSIL2A_{sensing:%Y%m%dT%H%M%S}_N{baseline:04d}_R{orbit:03d}_T{tile}"
    pid = naming.patch_id(prefix, x, y)
    parsed = naming.parse_patch_id(pid)
    assert (parsed.product, parsed.x, parsed.y, parsed.tile, parsed.mission) == (prefix, x, y, tile, mission)
    assert str(parsed) == pid and pid.endswith(f"_{x:02d}_{y:02d}")
    assert naming.parse_s2_product_name(prefix + f"_{sensing + timedelta(days=1):%Y%m%dT%H%M%S}.SAFE").tile == tile


@given(
    st.sampled_from(["S1A", "S1B"]),
    st.sampled_from(["IW", "EW"]),
    st.sampled_from(["GRDH", "GRDM"]),
    st.sampled_from(["1SDV", "1SSH"]),
    TIMES,
    TILES,
    st.integers(0, 9999),
    st.integers(0, 9999),
)
@FUZZ
def test_s1_names_round_trip(mission, mode, ptype, pol, start, tile, x, y):
    product = f"{mission}_{mode}_{ptype}_{pol}_{start:%Y%m%dT%H%M%S}"
    name = naming.s1_patch_name(product + "_20170612T165834_005073_008DEB_1F0B", "T" + tile, x, y)
    assert name == f"{product}_{tile}_{x}_{y}"  # no zero padding
    assert naming.parse_s1_patch_name(name) == (product, tile, x, y)
    assert naming.s1_acquisition_time(name) == start


def _mutations(valid: str) -> st.SearchStrategy[str]:
    return st.builds(
        lambda i, j, insert: valid[:i] + insert + valid[j:],
        st.integers(0, len(valid)),
        st.integers(0, len(valid)),
        st.text(max_size=8) | st.sampled_from(["/", "..", "\x00", "../", "\\", "_1", "_007", "A" * 300]),
    )


def _is_safe_component(text: str) -> bool:
    return not any(c in text for c in ("/", "\\", "\x00")) and ".." not in text and 0 < len(text) <= 200


@given(st.text(max_size=250) | _mutations(GOOD_ID))
@FUZZ
def test_fuzz_patch_id_parser_accepts_only_safe_ids(text):
    try:
        parsed = naming.parse_patch_id(text)
    except ValueError as exc:
        assert "patch id" in str(exc)  # noqa: PT017 -- fuzzing: rejection is a valid outcome, so pytest.raises does not apply
        return
    assert _is_safe_component(text) and text.isascii()
    assert naming.parse_patch_id(str(parsed)) == parsed  # canonical form parses to the same patch


@given(st.text(max_size=250) | _mutations(GOOD_S1))
@FUZZ
def test_fuzz_s1_name_parser_accepts_only_safe_names(text):
    try:
        prefix, tile, x, y = naming.parse_s1_patch_name(text)
    except ValueError as exc:
        assert "S1 patch name" in str(exc)  # noqa: PT017 -- fuzzing: rejection is a valid outcome, so pytest.raises does not apply
        return
    assert _is_safe_component(text) and text.isascii()
    assert naming.parse_s1_patch_name(f"{prefix}_{tile}_{x}_{y}") == (prefix, tile, x, y)


@pytest.mark.parametrize("value", [None, 42, b"S2A", ["x"]])
def test_parsers_reject_non_strings_with_a_message(value):
    for parse in (naming.parse_patch_id, naming.parse_s1_patch_name):
        with pytest.raises(ValueError, match="must be a string"):
            parse(value)


# ---------------------------------------------------------------------------- metadata and manifests


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    release = write_synthetic_release(tmp_path_factory.mktemp("release"), 6, seed=9, flagged_fraction=0.0)
    out = tmp_path_factory.mktemp("small") / "archive"
    encode_release(
        release.s2_dir,
        out,
        release.s1_dir,
        release.reference_maps_dir,
        release.metadata_files,
        workers=1,
        patches_per_shard=3,
        progress=False,
    )
    return out


@pytest.fixture
def small_copy(small_archive, tmp_path):
    out = tmp_path / "archive"
    shutil.copytree(small_archive, out)
    return out


def _rewrite_metadata(path: Path, change) -> Path:
    table = pq.read_table(path)
    pq.write_table(change(table), path)
    return path


METADATA_PROBLEMS = {
    "missing column": (lambda t: t.drop_columns(["country"]), "missing column(s) ['country']"),
    # integers cast to strings cleanly, then fail as split names
    "split stored as integers": (
        lambda t: t.set_column(t.schema.get_field_index("split"), "split", pa.array(range(t.num_rows))),
        "metadata has unknown split value(s) ['0', '1', '2', '3', '4', '5']",
    ),
    "snow flag stored as yes/no": (
        lambda t: t.set_column(
            t.schema.get_field_index("contains_seasonal_snow"), "contains_seasonal_snow", pa.array(["no"] * t.num_rows)
        ),
        "column types do not match the reBEN schema",
    ),
    "labels stored as one string": (
        lambda t: t.set_column(t.schema.get_field_index("labels"), "labels", pa.array(["Pastures"] * t.num_rows)),
        "column types do not match the reBEN schema",
    ),
    "duplicated id": (lambda t: pa.concat_tables([t, t.slice(0, 1)]), "metadata repeats patch id(s) ['S2"),
    "null id": (
        lambda t: t.set_column(0, "patch_id", pa.array([None] + t.column("patch_id").to_pylist()[1:], pa.string())),
        "metadata has 1 row(s) with a null or empty patch_id",
    ),
    "unknown split": (
        lambda t: t.set_column(t.schema.get_field_index("split"), "split", pa.array(["training"] * t.num_rows)),
        "metadata has unknown split value(s) ['training']",
    ),
}


@pytest.mark.parametrize("problem", list(METADATA_PROBLEMS))
def test_verify_and_dataset_name_the_metadata_file_and_what_is_wrong(small_copy, problem):
    change, phrase = METADATA_PROBLEMS[problem]
    path = _rewrite_metadata(small_copy / METADATA_FILE, change)
    with pytest.raises(ArchiveError) as caught:
        ReBENDataset(small_copy)
    assert str(path) in str(caught.value) and phrase in str(caught.value)
    faults = _faults(small_copy)
    assert len(faults) == 1 and faults[0].startswith(f"shard -: {path}") and phrase in faults[0], faults


def test_metadata_patch_without_a_shard_row_is_named(small_copy):
    def add_row(t):
        row = t.slice(0, 1).to_pylist()[0]
        row["patch_id"] = f"{PRODUCT}_90_90"
        return pa.concat_tables([t, pa.Table.from_pylist([row], schema=t.schema)])

    _rewrite_metadata(small_copy / METADATA_FILE, add_row)
    with pytest.raises(ArchiveError, match=f"patch '{PRODUCT}_90_90' of the metadata has no row"):
        ReBENDataset(small_copy)
    assert _faults(small_copy) == [
        f"shard - key {PRODUCT}_90_90: the metadata lists this patch, but patches.parquet has no row for it"
    ]


def test_verify_names_a_patch_listed_twice_in_patches_parquet(small_copy):
    table = pq.read_table(small_copy / PATCHES_FILE)
    pq.write_table(pa.concat_tables([table, table.slice(2, 1)]), small_copy / PATCHES_FILE)
    pid = table.column("patch_id")[2].as_py()
    assert _faults(small_copy) == [f"shard - key {pid}: patches.parquet lists this patch 2 times"]


def _faults(path: Path) -> list[str]:
    return sorted(str(f) for f in verify_archive(path).faults)


def test_verify_says_exactly_how_the_manifest_disagrees_with_its_shards(small_copy):
    manifest = json.loads((small_copy / "manifest.json").read_text())
    first, second = manifest["shards"]
    n0, n1 = first["entries"], second["entries"]
    sha1 = second["sha256"]
    first["entries"] += 2
    second["sha256"] = "0" * 64
    (small_copy / "manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(small_copy / "shards" / "shard-00001", small_copy / "shards" / "shard-00007")
    assert _faults(small_copy) == sorted(
        [
            f"shard shard-00000: {n0} entries, manifest says {n0 + 2} (no single key could be blamed)",
            f"shard shard-00001: content sha256 {sha1}, manifest says {'0' * 64} (no single key could be blamed)",
            "shard shard-00007: shard directory is not listed in the manifest",
        ]
    )
    assert n1 == 9  # 3 patches x (S2, S1, reference map)


def test_verify_names_a_key_patches_parquet_promises_but_the_shard_lacks(small_copy):
    table = pq.read_table(small_copy / PATCHES_FILE)
    pid = table.column("patch_id")[0].as_py()
    s1 = table.column("s1_name")[0].as_py()
    s1_index = table.schema.get_field_index("s1_name")
    renamed = table.set_column(
        s1_index,
        table.schema.field(s1_index),
        pa.array(
            ["S1A_IW_GRDH_1SDV_20170101T000000_33UUP_0_0"] + table.column("s1_name").to_pylist()[1:],
            table.schema.field(s1_index).type,
        ),
    )
    pq.write_table(renamed, small_copy / PATCHES_FILE)
    assert s1 != "S1A_IW_GRDH_1SDV_20170101T000000_33UUP_0_0"
    assert _faults(small_copy) == [
        f"shard shard-00000 key S1A_IW_GRDH_1SDV_20170101T000000_33UUP_0_0: patches.parquet lists this key "
        f"for patch {pid}, but the shard does not hold it"
    ]


@pytest.mark.parametrize(
    "content, phrase",
    [
        ("{not json", "cannot read manifest"),
        ("[]", "not a reben-tools-archive manifest"),
        (json.dumps({"format": "reben-tools-archive", "format_version": 99}), "format version 99 is not supported"),
    ],
)
def test_verify_and_dataset_reject_a_broken_manifest_naming_it(small_copy, content, phrase):
    (small_copy / "manifest.json").write_text(content)
    faults = verify_archive(small_copy).faults
    assert len(faults) == 1 and str(small_copy / "manifest.json") in faults[0].reason and phrase in faults[0].reason
    with pytest.raises(ArchiveError, match=phrase):
        ReBENDataset(small_copy)


def test_verify_names_a_key_missing_from_keys_parquet(small_copy):
    keys_path = small_copy / "shards" / "shard-00001" / SHARD_KEYS_FILE
    table = pq.read_table(keys_path)
    dropped = table.column("key")[4].as_py()
    pq.write_table(table.filter(pa.array([i != 4 for i in range(table.num_rows)])), keys_path)
    assert _faults(small_copy) == [f"shard shard-00001 key {dropped}: key is not listed in the shard's keys.parquet"]
