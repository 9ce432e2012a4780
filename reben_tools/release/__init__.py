"""reBEN's GeoTIFF release: read it, encode it into an archive, verify/merge/export archives.

Owns: ``geotiff_release`` (layout, reading), ``geotiff_write`` (writing, export),
``synthetic_release`` (test release), ``encode_plan``/``encode_workers``/``encode``
(release -> archive) and ``archive_tools`` (verify, merge, export-tiff).
Does not own: the archive format (``format``), building from scenes (``build``), splits
(``splits``), the CLI (``commands``).
May import: ``format``, ``geo`` and third-party libraries; never ``build``, ``splits``,
``learn`` or ``commands``.
"""
