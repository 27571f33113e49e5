"""Feature extractors z = phi(x) in R^d for the methods that work in a feature space (pFedGM,
FedVTC): two architectures with the same feature size, so that clients may differ in one and
still share per-class feature statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fedgmi.errors import ConfigError
from fedgmi.models.vae import mlp


def _check(feature_dim: int, widths: Sequence[int]) -> None:
    if int(feature_dim) != feature_dim or feature_dim < 1:
        raise ConfigError(f"feature_dim = {feature_dim!r} must be an integer >= 1")
    if any(int(w) != w or w < 1 for w in widths):
        raise ConfigError(f"widths = {list(widths)!r} must all be integers >= 1")


class CNNFeatures(nn.Module):
    """The conv body of :class:`~fedgmi.models.heads.CNNClassifier` (two 5x5 conv + ReLU + 2x2
    max-pool blocks) and a linear map to ``feature_dim`` features, then ReLU.

    Args:
        image_shape: (C, H, W) of one input, H and W >= 12.
        feature_dim: d, the feature size.
        channels: Output channels of the two conv blocks.

    Raises:
        ConfigError: images smaller than 12x12 or a non-positive width.
    """

    def __init__(self, image_shape: Sequence[int], feature_dim: int = 64, channels: Sequence[int] = (8, 16)) -> None:
        super().__init__()
        _check(feature_dim, channels)
        if len(image_shape) != 3 or min(image_shape[1:]) < 12 or len(channels) != 2:
            raise ConfigError(f"image_shape = {tuple(image_shape)!r}, channels = {list(channels)!r}: CNNFeatures "
                              "needs (C, H, W) with H, W >= 12 and two channel widths")
        self.image_shape, self.feature_dim = tuple(image_shape), int(feature_dim)
        c0, (c1, c2) = image_shape[0], channels
        flat = c2 * (image_shape[1] // 4) * (image_shape[2] // 4)
        self.net = nn.Sequential(
            nn.Conv2d(c0, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(flat, feature_dim), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) or (B, C, H, W) inputs -> (B, d) features."""
        return self.net(x.reshape(x.shape[0], *self.image_shape))


class MLPFeatures(nn.Module):
    """An MLP on flattened pixels to ``feature_dim`` features, ReLU after every layer.

    Args:
        image_shape: Shape of one input; D = prod(image_shape).
        feature_dim: d, the feature size.
        hidden_dims: Hidden widths.

    Raises:
        ConfigError: a non-positive width.
    """

    def __init__(self, image_shape: Sequence[int], feature_dim: int = 64, hidden_dims: Sequence[int] = (200,)) -> None:
        super().__init__()
        _check(feature_dim, hidden_dims)
        self.data_dim, self.feature_dim = math.prod(image_shape), int(feature_dim)
        self.net = nn.Sequential(mlp([self.data_dim, *hidden_dims, feature_dim]), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) or (B, *image_shape) inputs -> (B, d) features."""
        return self.net(x.reshape(x.shape[0], self.data_dim))


def fitting_features(image_shape: Sequence[int], feature_dim: int = 64) -> nn.Module:
    """A feature extractor that fits the images: :class:`CNNFeatures` (channels (8, 16)) for
    (C, H, W) images of at least 12 x 12, else :class:`MLPFeatures` (one hidden layer of 200)."""
    if cnn_fits(image_shape):
        return CNNFeatures(image_shape, feature_dim=feature_dim, channels=(8, 16))
    return MLPFeatures(image_shape, feature_dim=feature_dim, hidden_dims=(200,))


def cnn_fits(image_shape: Sequence[int]) -> bool:
    """Whether :class:`CNNFeatures` takes images of this shape: (C, H, W), H and W >= 12."""
    return len(image_shape) == 3 and min(image_shape[1:]) >= 12
