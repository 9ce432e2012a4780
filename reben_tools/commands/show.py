"""``reben show``: draw one patch of an archive to a PNG, for people who are not in Python.

Owns: the ``show`` command.
Does not own: the drawing (``learn.sample_figure`` through ``ReBENDataset.plot``), reading samples
(``learn.dataset``).
May import: ``reben_tools.learn``, ``reben_tools.format``, ``reben_tools.commands.outputs``, ``.sources``, typer.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reben_tools.commands.outputs import guarded_output
from reben_tools.commands.sources import ARCHIVE_HELP, METADATA_OPTION, resolve_archive
from reben_tools.commands.urls import CACHE_DIR, CACHE_SIZE, use_cache


def show(
    archive: str = typer.Argument(..., help=ARCHIVE_HELP),
    patch_id: str = typer.Argument(
        ..., help="The S2 patch id, e.g. S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57."
    ),
    out: Path = typer.Option(Path("patch.png"), "--out", "-o", callback=guarded_output, help="PNG to write."),
    metadata: list[Path] | None = METADATA_OPTION,
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Draw PATCH_ID: Sentinel-2 RGB, Sentinel-1 VV and VH, the reference map in CORINE colours (when the archive holds
    it; a plain LMDB of S1/S2 values only is drawn without), the labels as title."""
    import matplotlib.pyplot as plt

    from reben_tools.format.codec import ValueDecodeError
    from reben_tools.format.layout import ArchiveError
    from reben_tools.learn.data.dataset import ReBENDataset

    use_cache(cache_dir, cache_size)
    source = resolve_archive(archive, metadata, statistics=True)
    try:
        dataset = ReBENDataset(source, bands="ALL", include_snow_cloud=True)
        sample = dataset[dataset.index_of(patch_id)]
        figure = dataset.plot(sample)
        figure_has_map = any(axis.get_title().startswith("Reference map") for axis in figure.axes)
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(1) from None
    except (ArchiveError, ValueDecodeError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    typer.echo(f"{out}: {patch_id}" + ("" if figure_has_map else " (no reference map in the archive: drawn without)"))


def register(app: typer.Typer) -> None:
    app.command("show")(show)
