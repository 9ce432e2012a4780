# reben-tools: `docker build -t reben-tools . && docker run --rm -v $PWD:/data reben-tools demo --out /data/demo`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MPLBACKEND=Agg
WORKDIR /opt/reben-tools

# rasterio, pyproj, shapely and lmdb ship manylinux wheels with GDAL/PROJ/GEOS and
# the JPEG2000 driver inside, so no system GDAL is needed.
COPY pyproject.toml README.md ./
COPY reben_tools ./reben_tools
COPY pipelines ./pipelines
COPY schemas ./schemas
# torch is pinned so builds are reproducible.
RUN pip install torch==2.13.0 && pip install .

WORKDIR /data
ENTRYPOINT ["reben"]
CMD ["--help"]
