"""Generator of the embedded demo region: real-layout Sentinel-2 L2A products,
Sentinel-1 scenes, a CORINE 2018 GeoPackage and country polygons.

The region straddles the Belgium / Luxembourg border over two real MGRS tiles in
two UTM zones:

* ``T31UGR`` (EPSG:32631, upper-left corner (699960, 5600040), nearest country
  Belgium): a ``.SAFE`` product of 2017-06-13 (baseline N0205, no offset, a cloud
  with cirrus and shadow) and one of 2017-12-22 (N0500, ``BOA_ADD_OFFSET`` -1000,
  a diagonal no-data swath edge and snow);
* ``T32ULV`` (EPSG:32632, upper-left corner (300000, 5500020), nearest country
  Luxembourg): a ``.SAFE`` product of 2018-04-15 (N0400, offset, a single zero
  pixel in B8A, a small cloud) and a folder of GeoTIFF bands of 2017-09-27 (N0205).

Each product is small but real in layout: its rasters start at the real tile's
upper-left corner and cover the first ``patches_per_side`` x ``patches_per_side``
patches plus 600 m, so that the last patch row and column are incomplete (as in a
full tile: 109,800 m = 91.5 patches). Bands are JPEG2000 (lossless OpenJPEG) in
``GRANULE/L2A_*/IMG_DATA/R10m|R20m|R60m`` at every resolution a real L2A product
holds them, uint16 digital numbers (0 = no data; +1000 for baselines N0400 and
later), ``SCL`` uint8 at 20 m, with ``MTD_MSIL2A.xml``, the granule's ``MTD_TL.xml``
and ``manifest.safe``.

Land cover is a mosaic of CORINE-like polygons (Voronoi cells with spatially
correlated codes, dissolved by code) plus designed features with UNLABELED codes
(a 999 gap, 122 strips, a 124 airport, a 131 quarry) placed on exact patch
fractions. Reflectances follow a per-class spectrum (vegetation red edge / NIR
high, water dark in the NIR, urban flat) with per-polygon and per-pixel noise and
a seasonal NIR factor, so a model can learn the labels from the pixels.
Sentinel-1 scenes (VV, VH, float32 dB, EPSG:4326, NaN no-data) are rotated swath
strips, 0.3 to 3.8 days from the S2 dates, whose backscatter depends on the class.

Everything is drawn from ``numpy.random.default_rng`` seeded per component, so the
same seed gives byte-identical files. :func:`generate_region` returns a
:class:`DemoRegion` with the paths and the facts a test can check (worked out from
the design geometry, not by re-implementing the pipeline); it also writes them to
``expected.json``. :func:`write_full_size_product` writes one full 10,980 x 10,980
product (plus S1 and CORINE over it) by blocks of patch rows, for memory benchmarks.

Modules:

* :mod:`.design` -- the region's design: products, S1 swaths, UNLABELED features, sizes.
* :mod:`.signatures` -- per-class reflectance spectra, seasonal NIR factors, backscatter, SCL.
* :mod:`.geometry` -- the product frame (tile grid + side), seeded generators, reprojection.
* :mod:`.land_cover` -- the CORINE-like polygon mosaic, its rasterisation, the GeoPackage.
* :mod:`.countries` -- the countries file and each patch's nearest country.
* :mod:`.s2_render` -- S2 band and SCL values of a block of rows (clouds, snow, no-data).
* :mod:`.raster_sink` -- single-band rasters written by row windows (lossless JPEG2000 / GeoTIFF).
* :mod:`.s2_product` -- a product on disk: ``.SAFE`` or GeoTIFF layout, ``MTD_*.xml``, ``manifest.safe``.
* :mod:`.s1_scene` -- S1 VV / VH scenes (EPSG:4326 swath strips).
* :mod:`.results` -- what :func:`~.region.generate_region` returns (:class:`~.results.DemoRegion`, ...).
* :mod:`.expected` -- the facts a correct pipeline must find, from the design geometry.
* :mod:`.region` -- :func:`~.region.generate_region` and :func:`~.region.tree_digest`.
* :mod:`.full_size` -- :func:`~.full_size.write_full_size_product` (one 10,980 x 10,980 product).

Owns: nothing but this overview (no code, no re-exports: import from the modules above).
Does not own: building an archive from the region (reben_tools.builder.pipeline, reben_tools.builder.demo).
May import: nothing.
"""
