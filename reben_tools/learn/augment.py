"""Augmentations applied to image batches on the training device.

Owns: random_flips (reBEN's random horizontal and vertical flips).
Does not own: getting batches to the device (loaders.py), the augmentation generator's seeding (loop.py).
May import: torch.
"""

from __future__ import annotations

import torch


def random_flips(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of ``(B, C, H, W)`` left-right and/or up-down with probability 1/2 each."""
    b = images.shape[0]
    flips = torch.rand((2, b), generator=generator, device=generator.device) < 0.5
    flips = flips.to(images.device)
    images = torch.where(flips[0].view(b, 1, 1, 1), images.flip(-1), images)
    return torch.where(flips[1].view(b, 1, 1, 1), images.flip(-2), images)
