"""The scene-to-archive build: Sentinel-2 L2A + Sentinel-1 + CORINE -> reben-tools archive, on Dask.

Work unit: one *block* (a run of patch rows over the whole width) of one product.
A worker reads its block's window of every band at native resolution, drops
incomplete and no-data patches, rasterises CORINE into the reference maps, drops
patches with 25% or more UNLABELED pixels, warps the closest valid S1 acquisition
onto each remaining patch, computes SCL fractions, encodes the values and writes
its own shard atomically (``format.shards.write_shard``), with the patch rows in the
shard's ``rows.parquet``. Only a small summary travels back through the scheduler.

The client then reads the rows of every finished shard, assigns countries and
quality flags, merges the train-split band moments (computed per block: the split
depends only on the patch position), and writes the metadata files,
``patches.parquet``, ``report.json``, the manifest, a summary and a map.

Resumable: a shard whose directory is complete (``shard.json`` + ``rows.parquet``)
and whose recorded fingerprint matches the current inputs is not rebuilt; stale
``.tmp-*`` directories are removed. Deterministic: shard names, shard contents and
every metadata file depend on the inputs only, never on scheduling.

Modules, in the order a build runs them:

* :mod:`.config` -- :class:`PipelineConfig` (TOML / JSON settings), :class:`BuildError`.
* :mod:`.discovery` -- opening the S2 products and S1 scenes a config names, S1 candidates of a product.
* :mod:`.planning` -- one :class:`BlockTask` per (product, block), shard names, input fingerprints.
* :mod:`.rows` -- the schema and metadata key of a shard's ``rows.parquet`` (worker -> client contract).
* :mod:`.block` -- building one block into one shard (runs on a Dask worker).
* :mod:`.execution` -- the Dask client or LocalCluster, chains of consecutive blocks, collecting results.
* :mod:`.finalise` -- client side: merging the shards' rows into metadata, ``patches.parquet``,
  ``report.json`` and the manifest.
* :mod:`.summary` -- build counts, their text form and the split map PNG.
* :mod:`.run` -- :func:`build_archive`: lock, discover, plan, skip finished shards, execute, finalise.

Owns: nothing but this overview (no code, no re-exports: import from the modules above).
Does not own: the demo flow (:mod:`reben_tools.builder.demo`) nor the generator
(:mod:`reben_tools.builder.demo_region`).
May import: nothing.
"""
