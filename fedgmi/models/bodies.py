"""Classifier bodies for colour images (32x32, CIFAR-10).

:class:`CifarCNN` is a small VGG-style network (Simonyan & Zisserman 2015): three blocks of two
3x3 convolutions + GroupNorm + ReLU, a 2x2 max-pool after each block, global average pooling and
one linear layer to the class logits. GroupNorm rather than BatchNorm because averaging
BatchNorm's running statistics across clients with different data breaks under non-IID
federated data (Hsieh, Phanishayee, Mutlu & Gibbons 2020, "The non-IID data quagmire").
It takes ``(image_shape, num_classes)`` like the heads in :mod:`fedgmi.models.heads`, so a
config chooses it by ``class_path`` wherever a classifier is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fedgmi.errors import ConfigError

__all__ = ["CifarCNN"]


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups that divide ``channels``."""
    groups = math.gcd(channels, 8)
    return nn.GroupNorm(groups, channels)


class CifarCNN(nn.Module):
    """VGG-style classifier for ``(C, H, W)`` images with ``H, W`` divisible by 8.

    Args:
        image_shape: ``(C, H, W)`` of one input, e.g. ``(3, 32, 32)``.
        num_classes: Number of classes (>= 2).
        channels: Widths of the three blocks.

    Raises:
        ConfigError: ``num_classes < 2``, a shape not divisible by 8, or a non-positive width.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int = 10,
                 channels: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes = {num_classes!r} must be >= 2")
        if len(image_shape) != 3 or image_shape[1] % 8 or image_shape[2] % 8:
            raise ConfigError(f"image_shape = {tuple(image_shape)!r}: CifarCNN needs (C, H, W) with H, W divisible by 8")
        if len(channels) != 3 or min(channels) < 1:
            raise ConfigError(f"channels = {list(channels)!r} must be three widths >= 1")
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        width = image_shape[0]
        for out in channels:
            layers += [nn.Conv2d(width, out, 3, padding=1), _norm(out), nn.ReLU(),
                       nn.Conv2d(out, out, 3, padding=1), _norm(out), nn.ReLU(), nn.MaxPool2d(2)]
            width = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (B, c3)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` or ``(B, C, H, W)`` inputs -> ``(B, num_classes)`` logits."""
        return self.classifier(self.features(x.reshape(x.shape[0], *self.image_shape)))
