"""Building an archive from scenes: Sentinel-2 L2A + Sentinel-1 + CORINE -> reben-tools archive.

Modules: ``scenes`` (reading S2 products and S1 scenes), ``tiling`` (the patch grid,
blocks of rows), ``corine`` (CORINE sources, reference maps), ``countries`` (country
of a patch), ``quality`` (SCL snow / cloud flags), ``pipeline/`` (the Dask build,
``reben build``), ``demo_region/`` (the generated demo region), ``demo`` (``reben demo``).

Owns: the scene-to-archive build and its demo inputs.
Does not own: the archive format (reben_tools.format), the MGRS grid and reBEN's split
rule (reben_tools.geo), encoding reBEN's GeoTIFF release (reben_tools.release), split
strategies and audits (reben_tools.splits).
May import: reben_tools.format and reben_tools.geo only (never release, splits, learn,
commands); this sub-package exposes no names itself.
"""
