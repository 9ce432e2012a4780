"""Names of products and patches (reBEN's conventions: ESA product names, patch ids ``<product>_<x>_<y>``, S1 partner names).

Pure string functions: parse a Sentinel-2 product name, make and parse reBEN
patch ids, and derive the Sentinel-1 partner name and the BigEarthNet v1 name.
Every parser raises ``ValueError`` with the offending string in the message.

Owns: parsing and formatting S2 product names, patch ids, S1 partner names and v1 names.
Does not own: folder layouts (``release.geotiff_*``), archive keys' values (``format.codec``).
May import: the standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

_S2_PRODUCT_RE = re.compile(
    r"^(?P<mission>S2[A-D])_(?P<level>MSIL2A)_(?P<sensing>\d{8}T\d{6})_"
    r"(?P<baseline>N\d{4})_(?P<orbit>R\d{3})_T(?P<tile>\d{2}[C-HJ-NP-X][A-HJ-NP-Z]{2})"
    r"(?:_(?P<generation>\d{8}T\d{6}))?(?:\.SAFE)?$"
)
_PATCH_ID_RE = re.compile(
    r"^(?P<product>S2[A-D]_MSIL2A_\d{8}T\d{6}_N\d{4}_R\d{3}_T\d{2}[C-HJ-NP-X][A-HJ-NP-Z]{2})"
    r"_(?P<x>\d{2,4})_(?P<y>\d{2,4})$"
)
_S1_PRODUCT_RE = re.compile(
    r"^(?P<prefix>(?P<mission>S1[A-D])_(?P<mode>IW|EW|SM|WV)_(?P<ptype>GRD[HMF]|SLC_?)_"
    r"(?P<pol>1S[DS][VH])_(?P<start>\d{8}T\d{6}))(?:_.*)?$"
)
_S1_PATCH_RE = re.compile(
    r"^(?P<prefix>S1[A-D]_[A-Z]{2}_[A-Z_]+_1S[DS][VH]_\d{8}T\d{6})_"
    r"(?P<tile>\d{2}[C-HJ-NP-X][A-HJ-NP-Z]{2})_(?P<x>\d{1,4})_(?P<y>\d{1,4})$"
)
MAX_NAME_LENGTH = 200
PATCH_ID_PATTERN = _PATCH_ID_RE.pattern
"""The regular expression :func:`parse_patch_id` matches (for vectorised parsing, e.g. with pyarrow)."""


@dataclass(frozen=True)
class S2ProductName:
    """The fields of a Sentinel-2 L2A product name.

    ``tile`` is the MGRS tile without its leading ``T`` (``33UUP``).
    ``generation`` is None for names given without a generation time.
    """

    mission: str
    level: str
    sensing: str
    baseline: str
    orbit: str
    tile: str
    generation: str | None

    @property
    def patch_prefix(self) -> str:
        """The product name without generation time: the stem of every patch id."""
        return f"{self.mission}_{self.level}_{self.sensing}_{self.baseline}_{self.orbit}_T{self.tile}"

    @property
    def sensing_time(self) -> datetime:
        return datetime.strptime(self.sensing, "%Y%m%dT%H%M%S")

    @property
    def baseline_number(self) -> int:
        """Processing baseline as a number (``N0400`` -> 400, ``N9999`` -> 9999)."""
        return int(self.baseline[1:])


@dataclass(frozen=True)
class PatchId:
    """A parsed reBEN patch id: ``<product prefix>_<x>_<y>``."""

    product: str
    x: int
    y: int

    @property
    def tile(self) -> str:
        return self.product.rsplit("_T", 1)[1]

    @property
    def mission(self) -> str:
        return self.product[:3]

    @property
    def sensing(self) -> str:
        return self.product.split("_")[2]

    def __str__(self) -> str:
        return patch_id(self.product, self.x, self.y)


def _check_length(name: str, what: str) -> None:
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, got {type(name).__name__}: {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is {len(name)} characters long (max {MAX_NAME_LENGTH}): {name[:60]!r}...")


def parse_s2_product_name(name: str) -> S2ProductName:
    """Parse ``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_20240101T000000.SAFE``.

    The ``.SAFE`` suffix and the generation time are optional.

    Raises:
        ValueError: the name is not a Sentinel-2 L2A product name.
    """
    _check_length(name, "Sentinel-2 product name")
    match = _S2_PRODUCT_RE.match(name)
    if not match:
        raise ValueError(
            f"not a Sentinel-2 L2A product name: {name!r} "
            "(expected e.g. S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_20240101T000000.SAFE)"
        )
    return S2ProductName(**match.groupdict())


def patch_id(product_prefix: str, x: int, y: int) -> str:
    """The reBEN patch id: product prefix then ``_x_y``, each at least two digits."""
    return f"{product_prefix}_{x:02d}_{y:02d}"


def parse_patch_id(name: str) -> PatchId:
    """Parse ``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57``.

    Raises:
        ValueError: the string is not a reBEN patch id.
    """
    _check_length(name, "patch id")
    match = _PATCH_ID_RE.match(name)
    if not match:
        raise ValueError(
            f"malformed patch id {name!r} (expected e.g. S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57)"
        )
    return PatchId(match["product"], int(match["x"]), int(match["y"]))


def s1_product_prefix(s1_product_name: str) -> str:
    """Mission through acquisition start of an S1 product name.

    ``S1B_IW_GRDH_1SDV_20170612T165809_20170612T165834_005073_008DEB_1F0B`` ->
    ``S1B_IW_GRDH_1SDV_20170612T165809``.
    """
    _check_length(s1_product_name, "Sentinel-1 product name")
    match = _S1_PRODUCT_RE.match(s1_product_name.removesuffix(".SAFE"))
    if not match:
        raise ValueError(
            f"not a Sentinel-1 product name: {s1_product_name!r} (expected e.g. S1B_IW_GRDH_1SDV_20170612T165809)"
        )
    return match["prefix"]


def s1_acquisition_time(s1_product_name: str) -> datetime:
    """Acquisition start of an S1 product (or S1 patch) name."""
    prefix = s1_product_prefix(s1_product_name)
    return datetime.strptime(prefix.rsplit("_", 1)[1], "%Y%m%dT%H%M%S")


def s1_patch_name(s1_product_name: str, tile: str, x: int, y: int) -> str:
    """The S1 partner name: ``S1B_IW_GRDH_1SDV_20170612T165809_33UUP_26_57``.

    ``tile`` may be given with or without its leading ``T``; x and y are not padded.
    """
    return f"{s1_product_prefix(s1_product_name)}_{tile.removeprefix('T')}_{x}_{y}"


def parse_s1_patch_name(name: str) -> tuple[str, str, int, int]:
    """Split an S1 patch name into (product prefix, tile, x, y)."""
    _check_length(name, "S1 patch name")
    match = _S1_PATCH_RE.match(name)
    if not match:
        raise ValueError(
            f"malformed S1 patch name {name!r} (expected e.g. S1B_IW_GRDH_1SDV_20170612T165809_33UUP_26_57)"
        )
    return match["prefix"], match["tile"], int(match["x"]), int(match["y"])


def s2v1_name(patch: str | PatchId) -> str:
    """The BigEarthNet v1 name of a patch: mission, level, sensing start, unpadded x_y."""
    parsed = parse_patch_id(patch) if isinstance(patch, str) else patch
    mission, level, sensing = parsed.product.split("_")[:3]
    return f"{mission}_{level}_{sensing}_{parsed.x}_{parsed.y}"


def reference_map_key(patch: str) -> str:
    """The archive key of a patch's reference map."""
    return f"{patch}_reference_map"
