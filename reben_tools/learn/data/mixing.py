"""CutMix for multi-label batches, with label propagation from the reference maps.

Owns: box sampling, batched pasting of images and reference maps, the two label rules
(``cutmix``: labels mixed by the pasted area, as in Yun et al. 2019; ``cutmix-lp``: labels
recomputed from the mixed reference map, as in Burgert, Clasen, Klotz, Siebert, Demir
2024), the label-noise count of naive CutMix on a batch, and the per-class pixel shares of
reference maps (:func:`class_fractions_from_codes`, the comparison protocol's positive control).
Does not own: reading archives or reference maps (``learn.dataset``), the training loop,
the CLI, or the CLC legend (``format.labels``: the code -> 19-class table used here is the
pipeline's own :func:`code_to_class_index_table`).
May import: torch, numpy, the label table of the format layer, reben_tools.learn.runtime.devices (host copies).

Everything runs on the device of the batch, for the whole batch at once: a fixed number of
tensor operations whatever the batch size (no per-sample Python loop). Random numbers are
drawn from the ``torch.Generator`` given (on the generator's device, then moved), so the
same seed gives the same boxes on CPU and GPU.

The labelling rule of a mixed patch (``cutmix-lp``) is the archive's rule, unchanged: the
reference map's CLC codes map to the 19 classes through the pipeline's table; pixels without
a class (999, the UNLABELED codes, and any other code outside the legend) are ignored; a
class is present if it covers at least one pixel. The archive's other rule, "a patch is kept
only if less than 25% of its pixels are UNLABELED", decides which patches enter the archive,
not which classes a patch has, so it is not applied to mixed patches: a mixed patch is never
dropped or relabelled for it. Because both parents have less than 25% UNLABELED pixels, the
mixed map has less than 50% of them, and at least one labelled pixel for any box size (the
box holds a share ``a`` of the source and the rest ``1 - a`` of the target; both cannot be
entirely UNLABELED since ``a < 0.25`` and ``1 - a < 0.25`` cannot both hold), so a mixed
label is never empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from reben_tools.format.labels import MASK_IGNORE_INDEX, NUM_CLASSES, code_to_class_index_table
from reben_tools.learn.runtime.devices import host_to_device

MIX_MODES = ("none", "cutmix", "cutmix-lp")
"""``none``: no mixing; ``cutmix``: labels mixed by area; ``cutmix-lp``: labels from the mixed map."""
MODES_NEEDING_REFERENCE_MAPS = frozenset({"cutmix-lp"})
DEFAULT_MIX_PROB = 0.5
DEFAULT_AREA_RANGE = (0.1, 0.5)
_CODE_TABLE_SIZE = 1 << 16
"""The class table covers every uint16 value, so any stored code indexes it."""


def parse_area_range(text: str | tuple[float, float]) -> tuple[float, float]:
    """Parse ``"0.1,0.5"`` (or a pair) into ``(low, high)`` with ``0 < low <= high <= 1``.

    Raises:
        ValueError: not two numbers, or outside ``(0, 1]``, or ``low > high``.
    """
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            raise ValueError(f"--mix-area {text!r}: expected two numbers 'low,high', e.g. 0.1,0.5") from None
    else:
        values = tuple(float(v) for v in text)
    if len(values) != 2:
        raise ValueError(f"--mix-area {text!r}: expected two numbers 'low,high', e.g. 0.1,0.5")
    low, high = values
    if not (0.0 < low <= high <= 1.0):
        raise ValueError(f"--mix-area {text!r}: need 0 < low <= high <= 1 (shares of the patch area)")
    return low, high


@cache
def _class_table_cpu(order: str) -> torch.Tensor:
    table = np.full(_CODE_TABLE_SIZE, MASK_IGNORE_INDEX, dtype=np.uint8)
    base = code_to_class_index_table(order)
    table[: len(base)] = base
    return torch.from_numpy(table)


def class_table(order: str = "alphabetical", device: torch.device | str | None = None) -> torch.Tensor:
    """The pipeline's CLC code -> class index table, extended to every uint16 value.

    Args:
        order: class index order, ``"alphabetical"`` or ``"original"``.
        device: where the table should live.

    Returns:
        uint8 tensor (65536,): entry ``c`` is the 19-class index of CLC code ``c`` as in
        :func:`reben_tools.format.labels.code_to_class_index_table`, 255 for UNLABELED codes, 999 and
        every code outside the legend (codes >= 1000 included).
    """
    table = _class_table_cpu(order)
    return table if device is None else table.to(device)


def labels_from_codes(reference_maps: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-hot labels of a batch of reference maps by the archive's labelling rule.

    Args:
        reference_maps: integer tensor (B, H, W) of raw CLC codes in 0..65535 (uint16,
            int32 or int64).
        table: the class table from :func:`class_table` (alphabetical order on the maps'
            device if None).

    Returns:
        float32 tensor (B, 19) on the maps' device: 1 where the class covers at least one
        pixel, 0 elsewhere; pixels without a class are ignored.
    """
    if reference_maps.ndim != 3:
        raise ValueError(f"reference maps: expected (B, H, W), got shape {tuple(reference_maps.shape)}")
    if table is None:
        table = class_table("alphabetical", reference_maps.device)
    b = reference_maps.shape[0]
    classes = table[reference_maps.to(torch.int64)].reshape(b, -1).to(torch.int64)
    present = torch.zeros(b, 256, dtype=torch.uint8, device=reference_maps.device)
    present.scatter_(1, classes, 1)
    return present[:, :NUM_CLASSES].to(torch.float32)


def class_fractions_from_codes(reference_maps: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """Share of each class's pixels in a batch of reference maps: float32 (B, 19).

    The denominator is every pixel of the map (pixels without a class count too), so a row
    sums to the labelled share of the patch; ``labels_from_codes`` is ``fractions > 0``.
    """
    if reference_maps.ndim != 3:
        raise ValueError(f"reference maps: expected (B, H, W), got shape {tuple(reference_maps.shape)}")
    if table is None:
        table = class_table("alphabetical", reference_maps.device)
    b = reference_maps.shape[0]
    classes = table[reference_maps.to(torch.int64)].reshape(b, -1).to(torch.int64)
    counts = torch.zeros(b, 256, dtype=torch.float32, device=reference_maps.device)
    counts.scatter_add_(1, classes, torch.ones_like(classes, dtype=torch.float32))
    return counts[:, :NUM_CLASSES] / classes.shape[1]


@dataclass(frozen=True)
class MixBoxes:
    """The boxes of one mixed batch; every field is an int64 tensor (B,) unless stated.

    Sample ``b`` of the mixed batch is sample ``b`` of the input with the box
    ``[src_top : src_top + height, src_left : src_left + width]`` of input sample
    ``source[b]`` pasted at ``[dst_top : dst_top + height, dst_left : dst_left + width]``.
    Unmixed samples have ``mixed[b] == False`` and an empty box (height = width = 0).

    Attributes:
        source: index of the sample the box comes from (a random permutation of the batch).
        mixed: bool (B,), whether the sample is mixed (drawn with the mix probability).
        height, width: box sides in pixels.
        src_top, src_left: upper-left corner of the box in the source sample.
        dst_top, dst_left: upper-left corner where it is pasted (drawn independently).
    """

    source: torch.Tensor
    mixed: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    src_top: torch.Tensor
    src_left: torch.Tensor
    dst_top: torch.Tensor
    dst_left: torch.Tensor

    def area_fraction(self, size: tuple[int, int]) -> torch.Tensor:
        """Share of the ``(H, W)`` patch covered by each pasted box, float32 (B,)."""
        return (self.height * self.width).to(torch.float64).div(size[0] * size[1]).to(torch.float32)

    def to(self, device: torch.device | str) -> MixBoxes:
        """The same boxes with every tensor on ``device``.

        From the CPU to a GPU: one pinned, non-blocking copy of the eight fields stacked (the host does
        not wait for the GPU), instead of eight synchronous ones.
        """
        device, names = torch.device(device), list(self.__dataclass_fields__)
        if self.source.device.type != "cpu" or device.type == "cpu":
            return MixBoxes(**{k: getattr(self, k).to(device) for k in names})
        rows = host_to_device(torch.stack([getattr(self, k).to(torch.int64) for k in names]), device)
        moved = dict(zip(names, rows.unbind(0), strict=True))
        moved["mixed"] = moved["mixed"].bool()
        return MixBoxes(**moved)


def sample_boxes(
    batch_size: int,
    size: tuple[int, int],
    area_range: tuple[float, float] = DEFAULT_AREA_RANGE,
    prob: float = DEFAULT_MIX_PROB,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MixBoxes:
    """Draw the source partner, box and both box positions of every sample of a batch.

    The box covers a share ``a ~ U(area_range)`` of the patch with the patch's aspect ratio:
    ``height = round(H * sqrt(a))``, ``width = round(W * sqrt(a))``, each at least 1 and at
    most the side. Both corners are drawn uniformly among the positions where the box lies
    wholly inside the patch, independently, so the box usually lands elsewhere than where it
    was cut (Burgert et al. 2024) and the pasted area is exactly ``height * width``.

    Args:
        batch_size: B.
        size: ``(H, W)`` in pixels.
        area_range: ``(low, high)`` shares of the patch area, ``0 < low <= high <= 1``.
        prob: probability that a sample is mixed.
        generator: source of randomness (drawn on its device); the global one if None.
        device: where the returned tensors live (the generator's device if None).

    Returns:
        :class:`MixBoxes` with tensors (B,).
    """
    low, high = parse_area_range(area_range)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"--mix-prob {prob}: must lie in [0, 1]")
    h_img, w_img = size
    gen_device = generator.device if generator is not None else torch.device("cpu")
    source = torch.randperm(batch_size, generator=generator, device=gen_device)
    mixed = torch.rand(batch_size, generator=generator, device=gen_device) < prob
    area = low + (high - low) * torch.rand(batch_size, dtype=torch.float64, generator=generator, device=gen_device)
    root = area.sqrt()
    height = torch.round(h_img * root).to(torch.int64).clamp_(1, h_img) * mixed
    width = torch.round(w_img * root).to(torch.int64).clamp_(1, w_img) * mixed
    corners = torch.rand(4, batch_size, dtype=torch.float64, generator=generator, device=gen_device)
    room_h, room_w = h_img - height + 1, w_img - width + 1
    src_top = torch.minimum((corners[0] * room_h).floor().to(torch.int64), room_h - 1)
    src_left = torch.minimum((corners[1] * room_w).floor().to(torch.int64), room_w - 1)
    dst_top = torch.minimum((corners[2] * room_h).floor().to(torch.int64), room_h - 1)
    dst_left = torch.minimum((corners[3] * room_w).floor().to(torch.int64), room_w - 1)
    boxes = MixBoxes(source, mixed, height, width, src_top, src_left, dst_top, dst_left)
    return boxes if device is None else boxes.to(device)


def paste(x: torch.Tensor, boxes: MixBoxes) -> torch.Tensor:
    """Paste every sample's source box into it, for the whole batch at once.

    Args:
        x: tensor (B, ..., H, W) of any dtype torch can gather and select (images float32
            (B, C, H, W); reference maps int32/int64 (B, H, W)).
        boxes: the boxes, on ``x``'s device.

    Returns:
        tensor of ``x``'s shape and dtype: ``x`` with, in sample ``b``, the pixels of the
        destination box replaced by the source box of sample ``boxes.source[b]``.
    """
    shape = x.shape
    b, h, w = shape[0], shape[-2], shape[-1]
    flat = x.reshape(b, -1, h * w)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= boxes.dst_top[:, None]) & (rows < (boxes.dst_top + boxes.height)[:, None])
    in_cols = (cols >= boxes.dst_left[:, None]) & (cols < (boxes.dst_left + boxes.width)[:, None])
    src_rows = (rows - boxes.dst_top[:, None] + boxes.src_top[:, None]).clamp_(0, h - 1)
    src_cols = (cols - boxes.dst_left[:, None] + boxes.src_left[:, None]).clamp_(0, w - 1)
    # one (H*W) source-pixel index per sample, shared by all channels (an expanded view, no copy)
    index = (src_rows[:, :, None] * w + src_cols[:, None, :]).reshape(b, 1, h * w).expand(b, flat.shape[1], h * w)
    shifted = torch.gather(flat[boxes.source], 2, index)
    inside = (in_rows[:, :, None] & in_cols[:, None, :]).reshape(b, 1, h * w)
    return torch.where(inside, shifted, flat).reshape(shape)


@dataclass(frozen=True)
class MixedBatch:
    """A mixed batch.

    Attributes:
        images: float tensor (B, C, H, W), the mixed images.
        labels: float32 tensor (B, 19), the labels by the mode's rule.
        reference_maps: int32 tensor (B, H, W) of mixed CLC codes (None if none were given).
        boxes: the boxes used.
    """

    images: torch.Tensor
    labels: torch.Tensor
    reference_maps: torch.Tensor | None
    boxes: MixBoxes


def cutmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    reference_maps: torch.Tensor | None = None,
    *,
    mode: str = "cutmix",
    area_range: tuple[float, float] = DEFAULT_AREA_RANGE,
    prob: float = DEFAULT_MIX_PROB,
    generator: torch.Generator | None = None,
    table: torch.Tensor | None = None,
) -> MixedBatch:
    """CutMix a batch on its device, labels by area (``cutmix``) or from the mixed map (``cutmix-lp``).

    Args:
        images: float tensor (B, C, H, W), e.g. upsampled and normalised 120x120 patches.
        labels: float tensor (B, 19) multi-hot, in the class order of ``table``.
        reference_maps: integer tensor (B, H, W) of raw CLC codes (uint16 as stored, or
            int32/int64), same H and W as the images; required for ``cutmix-lp``.
        mode: ``"cutmix"`` (``y = (1 - r) * y_target + r * y_source`` with ``r`` the pasted
            share of the area) or ``"cutmix-lp"`` (``y`` = the classes present on at least one
            pixel of the mixed map; unmixed samples keep their labels).
        area_range: box area range, shares of the patch area.
        prob: probability that a sample is mixed.
        generator: seeded ``torch.Generator`` for reproducible boxes.
        table: class table from :func:`class_table` on the batch's device, in the labels'
            class order (alphabetical if None).

    Returns:
        :class:`MixedBatch`.
    """
    if mode not in ("cutmix", "cutmix-lp"):
        raise ValueError(f"mix mode {mode!r}: expected 'cutmix' or 'cutmix-lp'")
    if images.ndim != 4 or labels.ndim != 2 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"images {tuple(images.shape)} and labels {tuple(labels.shape)}: expected (B, C, H, W) and (B, K)"
        )
    b, _, h, w = images.shape
    if reference_maps is not None and tuple(reference_maps.shape) != (b, h, w):
        raise ValueError(
            f"reference maps of shape {tuple(reference_maps.shape)}: expected {(b, h, w)} to match the images"
        )
    if mode == "cutmix-lp" and reference_maps is None:
        raise ValueError("mix mode 'cutmix-lp' needs the reference maps of the batch")
    boxes = sample_boxes(b, (h, w), area_range, prob, generator, images.device)
    mixed_images = paste(images, boxes)
    mixed_maps = None
    if reference_maps is not None:
        mixed_maps = paste(reference_maps.to(images.device).to(torch.int32), boxes)
    if mode == "cutmix":
        share = boxes.area_fraction((h, w)).to(labels.dtype)[:, None]
        mixed_labels = (1 - share) * labels + share * labels[boxes.source]
    else:
        if table is None:
            table = class_table("alphabetical", images.device)
        assert mixed_maps is not None, "cutmix-lp has reference maps (checked above)"
        from_map = labels_from_codes(mixed_maps, table).to(labels.dtype)
        mixed_labels = torch.where(boxes.mixed[:, None], from_map, labels)
    return MixedBatch(mixed_images, mixed_labels, mixed_maps, boxes)


class CutMix(torch.nn.Module):
    """``cutmix`` / ``cutmix-lp`` as a module that lives on the training device.

    ``mixer = CutMix("cutmix-lp", seed=0, order="alphabetical").to("cuda")``; then per batch
    ``batch = mixer(images, labels, reference_maps)`` (a :class:`MixedBatch`). The class table
    is a buffer, so it follows the module; the generator is created on the device of the
    first batch and seeded with ``seed``.
    """

    table: torch.Tensor  # a buffer (registered in __init__)

    def __init__(
        self,
        mode: str = "cutmix",
        area_range: tuple[float, float] = DEFAULT_AREA_RANGE,
        prob: float = DEFAULT_MIX_PROB,
        seed: int = 0,
        order: str = "alphabetical",
    ) -> None:
        super().__init__()
        if mode not in ("cutmix", "cutmix-lp"):
            raise ValueError(f"mix mode {mode!r}: expected 'cutmix' or 'cutmix-lp'")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"--mix-prob {prob}: must lie in [0, 1]")
        self.mode = mode
        self.area_range = parse_area_range(area_range)
        self.prob = float(prob)
        self.seed = int(seed)
        self.register_buffer("table", class_table(order).clone(), persistent=False)
        self._generator: torch.Generator | None = None

    @property
    def needs_reference_maps(self) -> bool:
        """Whether batches must carry reference maps."""
        return self.mode in MODES_NEEDING_REFERENCE_MAPS

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, reference_maps: torch.Tensor | None = None
    ) -> MixedBatch:
        if self._generator is None or self._generator.device != images.device:
            self._generator = torch.Generator(device=images.device).manual_seed(self.seed)
        return cutmix(
            images,
            labels,
            reference_maps,
            mode=self.mode,
            area_range=self.area_range,
            prob=self.prob,
            generator=self._generator,
            table=self.table,
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, area_range={self.area_range}, prob={self.prob}, seed={self.seed}"


# --------------------------------------------------------------------------------------
# Label noise of naive CutMix
# --------------------------------------------------------------------------------------


@dataclass
class LabelNoiseCounts:
    """Label noise of naive CutMix, counted over mixed samples (numpy int64 arrays (19,)).

    The naive label of a mixed sample is the union of its two parents' labels (the support
    of the area-mixed CutMix label); the true label is the one of the mixed map.

    Attributes:
        samples: mixed samples counted.
        noisy: samples whose naive label differs from the mixed map's label.
        erased: per class, samples where the naive label has the class but the mixed map has
            no pixel of it (its pixels were all covered, or all outside the pasted box).
        added: per class, samples where the mixed map has the class but the naive label does
            not (zero whenever the stored labels are the labels of the stored maps).
        added_to_target: per class, samples where the mixed map has a class the target's own
            label lacks (what keeping the target's label would miss).
        in_union: per class, samples whose naive label has the class (the share's denominator).
    """

    samples: int
    noisy: int
    erased: np.ndarray
    added: np.ndarray
    added_to_target: np.ndarray
    in_union: np.ndarray

    @classmethod
    def zeros(cls) -> LabelNoiseCounts:
        z = np.zeros(NUM_CLASSES, dtype=np.int64)
        return cls(0, 0, z.copy(), z.copy(), z.copy(), z.copy())

    def __iadd__(self, other: LabelNoiseCounts) -> LabelNoiseCounts:
        self.samples += other.samples
        self.noisy += other.noisy
        for name in ("erased", "added", "added_to_target", "in_union"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    @property
    def noisy_share(self) -> float:
        """Share of mixed samples whose naive label is wrong."""
        return self.noisy / self.samples if self.samples else float("nan")


def label_noise_counts(labels: torch.Tensor, mixed: MixedBatch, table: torch.Tensor | None = None) -> LabelNoiseCounts:
    """Count the label noise of naive CutMix in one mixed batch.

    Args:
        labels: float tensor (B, 19), the batch's stored multi-hot labels (before mixing).
        mixed: the batch mixed by :func:`cutmix` with its reference maps, either mode
            (``mixed.reference_maps`` must be set).
        table: class table from :func:`class_table` in the labels' class order
            (alphabetical if None).

    Returns:
        :class:`LabelNoiseCounts` over the batch's mixed samples.
    """
    if mixed.reference_maps is None:
        raise ValueError("label noise needs the mixed reference maps: pass reference_maps to cutmix")
    if table is None:
        table = class_table("alphabetical", labels.device)
    boxes = mixed.boxes
    stored = labels > 0.5
    union = stored | stored[boxes.source]
    truth = labels_from_codes(mixed.reference_maps, table) > 0.5
    keep = boxes.mixed[:, None]

    def per_class(flags: torch.Tensor) -> np.ndarray:
        return (flags & keep).sum(0).cpu().numpy().astype(np.int64)

    noisy = int(((union != truth).any(1) & boxes.mixed).sum())
    return LabelNoiseCounts(
        int(boxes.mixed.sum()),
        noisy,
        per_class(union & ~truth),
        per_class(truth & ~union),
        per_class(truth & ~stored),
        per_class(union),
    )
