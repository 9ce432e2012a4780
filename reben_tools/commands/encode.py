"""``reben encode``: reBEN's GeoTIFF release -> reben-tools archive."""

from __future__ import annotations

from pathlib import Path

import typer


def encode(
    s2_dir: Path | None = typer.Option(None, "--s2-dir", help="BigEarthNet-S2 folder (nested or flat patch folders)."),
    out: Path = typer.Option(..., "--out", help="Archive directory to create."),
    s1_dir: Path | None = typer.Option(
        None, "--s1-dir", help="BigEarthNet-S1 folder; every valid S1 patch is written, paired or not."
    ),
    reference_maps_dir: Path | None = typer.Option(
        None, "--reference-maps-dir", help="Reference_Maps folder; every valid reference map is written."
    ),
    require_pairs: bool = typer.Option(
        False,
        "--require-pairs",
        help="Skip patches lacking their S2 patch, S1 partner or reference map (of the folders given).",
    ),
    metadata: list[Path] | None = typer.Option(
        None,
        "--metadata",
        help="reBEN metadata parquet (repeatable); keeps only its patches and writes the metadata files.",
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Processes (default: all usable CPUs); never changes the output."
    ),
    patches_per_shard: int = typer.Option(1024, "--patches-per-shard", help="Patches per LMDB shard."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Encode reBEN's GeoTIFF release into a sharded LMDB/safetensors archive.

    Like rico-hdl, every valid value of every folder given is written (S2 patches, S1
    patches, reference maps; any of the three folders alone works) and the pairing is
    reported; --require-pairs skips what is not complete instead. Bad patches (missing band file, wrong shape or dtype, unreadable TIFF, missing S1
    partner or reference map) are skipped and listed in ARCHIVE/report.json.
    Rerunning the same command after an interruption resumes: finished shards are kept.
    A second encode on the same --out while one runs is refused.
    """
    from reben_tools.format.layout import ArchiveError
    from reben_tools.format.locking import OutputLockedError
    from reben_tools.release.encode import encode_release
    from reben_tools.release.encode_plan import EncodeError
    from reben_tools.release.geotiff_release import ReleaseError

    try:
        summary = encode_release(
            s2_dir,
            out,
            s1_dir=s1_dir,
            reference_maps_dir=reference_maps_dir,
            metadata_files=metadata or (),
            workers=workers,
            patches_per_shard=patches_per_shard,
            progress=not quiet,
            require_pairs=require_pairs,
        )
    except (EncodeError, ArchiveError, ReleaseError, OutputLockedError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # e.g. the disk filled up while writing metadata or the manifest
        typer.echo(f"error: {out}: cannot write the archive ({exc}); rerun the same command to resume", err=True)
        raise typer.Exit(2) from None
    for item in summary.skipped[:20]:
        typer.echo(f"SKIPPED {item['item']}: {item['path']}: {item['reason']}", err=True)
    if len(summary.skipped) > 20:
        typer.echo(f"... and {len(summary.skipped) - 20} more (see {out / 'report.json'})", err=True)
    if summary.resumed:
        typer.echo(f"resumed: kept {summary.resumed} shard(s) an interrupted run had finished", err=True)
    typer.echo(_summary_line(out, summary))
    if summary.values == 0:
        raise typer.Exit(1)


_PAIRINGS = (("s1_without_s2", "S1 without S2"), ("reference_maps_without_s2", "reference maps without S2"))
_VALUE_KINDS = (("s2_values", "S2"), ("s1_values", "S1"), ("reference_map_values", "reference maps"))


def _summary_line(out: Path, summary) -> str:
    """What was written: patches by pairing (a patch is an S2 patch, or an S1 patch or reference map without
    one), values by kind, the rate in values per second (an S1-only folder writes values and no S2 patch)."""
    counts = summary.counts or {}
    if "s2_with_s1" in counts:  # an S1 folder was given
        pairs = [(counts["s2_with_s1"], "S2 with S1"), (counts.get("s2_without_s1", 0), "S2 without S1")]
    else:
        pairs = [(counts.get("s2_values", 0), "S2")]
    pairs += [(counts.get(key, 0), text) for key, text in _PAIRINGS]
    kinds = [(counts.get(key, 0), text) for key, text in _VALUE_KINDS]
    patches = sum(n for n, _ in pairs)
    by_pairing = ", ".join(f"{n} {text}" for n, text in pairs if n) or "none"
    by_kind = ", ".join(f"{n} {text}" for n, text in kinds if n) or "none"
    rate = summary.values / summary.seconds if summary.seconds > 0 else 0.0
    extra = counts.get("s2_without_reference_map", 0)
    return (
        f"{out}: {patches} patch(es) ({by_pairing}"
        + (f"; {extra} S2 without reference map" if extra else "")
        + f"), {summary.values} value(s) ({by_kind}) in {len(summary.shards)} shard(s), "
        f"{len(summary.skipped)} skipped, {summary.seconds:.1f} s ({rate:.1f} values/s)"
    )


def register(app: typer.Typer) -> None:
    app.command("encode")(encode)
