"""Augmentations applied to image batches on the training device.

Owns: random_flips (reBEN's random horizontal and vertical flips) and TrainMixer (CutMix / CutMix-LP
as the training loop applies it: after upsampling and normalisation, before the flips).
Does not own: getting batches to the device (loaders.py), the augmentation generator's seeding (loop.py),
the CutMix transform itself (mixing.py).
May import: torch; reben_tools.learn.data.mixing, reben_tools.learn.runtime.devices.
"""

from __future__ import annotations

import torch

from reben_tools.learn.data.mixing import MODES_NEEDING_REFERENCE_MAPS, class_table, cutmix
from reben_tools.learn.runtime.devices import host_to_device


def random_flips(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of ``(B, C, H, W)`` left-right and/or up-down with probability 1/2 each."""
    b = images.shape[0]
    flips = torch.rand((2, b), generator=generator, device=generator.device) < 0.5
    flips = host_to_device(flips, images.device)  # pinned, non-blocking: the host does not wait for the GPU
    images = torch.where(flips[0].view(b, 1, 1, 1), images.flip(-1), images)
    return torch.where(flips[1].view(b, 1, 1, 1), images.flip(-2), images)


class TrainMixer:
    """CutMix (``"cutmix"``) or CutMix with label propagation (``"cutmix-lp"``) in the training loop.

    Called with the batch already on the device (images upsampled and normalised, float32
    labels) and the host batch dict, whose ``reference_map`` (uint16 (B, 120, 120), present
    when the mode needs it) is copied to the device as uint16 and widened there. Draws from
    the loop's augmentation generator, so a resumed run replays the same boxes.

    Args:
        mode: ``"cutmix"`` or ``"cutmix-lp"``.
        prob: probability that a sample is mixed.
        area_range: box area range, shares of the patch area.
        class_order: the labels' class order (the code -> class table follows it).
        device: the training device.
    """

    def __init__(
        self, mode: str, prob: float, area_range: tuple[float, float], class_order: str, device: torch.device
    ) -> None:
        self.mode = mode
        self.prob = prob
        low, high = area_range
        self.area_range = (low, high)
        self.needs_reference_maps = mode in MODES_NEEDING_REFERENCE_MAPS
        self.table = class_table(class_order, device) if self.needs_reference_maps else None

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, batch: dict, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        maps = None
        if self.needs_reference_maps:
            maps = batch["reference_map"].to(images.device, non_blocking=True)
        channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
        mixed = cutmix(
            images,
            labels,
            maps,
            mode=self.mode,
            area_range=self.area_range,
            prob=self.prob,
            generator=generator,
            table=self.table,
        )
        out = mixed.images.contiguous(memory_format=torch.channels_last) if channels_last else mixed.images
        return out, mixed.labels
