"""Classification heads p_k(y | x) of FedGMI components."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedgmi.errors import ConfigError
from fedgmi.models.vae import mlp


def weighted_cross_entropy(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                           norm: torch.Tensor | float) -> torch.Tensor:
    """sum_i w_i CE(logits_i, y_i) / (B * norm): the training-weighted cross-entropy of a batch
    (FedGMI's M-step for a head, FedEM eq. 9; with ``norm`` the mean weight over the client's
    data, each batch is an unbiased estimate of the client's weighted mean).

    Args:
        logits: (B, Y) class logits; y: (B,) labels; weights: (B,) w_i >= 0.
        norm: The normaliser, a scalar > 0.

    Returns:
        Scalar float32 loss in nats.
    """
    return (weights * F.cross_entropy(logits.float(), y, reduction="none")).mean() / norm


class MLPClassifier(nn.Module):
    """MLP classifier on flattened pixels; default 784-200-10, the MNIST model of IFCA
    (Ghosh et al. 2020) and FedSoft (Ruan & Joe-Wong 2022).

    Args:
        image_shape: Shape of one input, e.g. (1, 28, 28); D = prod(image_shape).
        num_classes: Number of classes (>= 2).
        hidden_dims: Hidden widths (ReLU between layers).

    Raises:
        ConfigError: num_classes < 2 or a non-positive width.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int = 10,
                 hidden_dims: Sequence[int] = (200,)) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes = {num_classes!r} must be >= 2")
        if any(h < 1 for h in hidden_dims):
            raise ConfigError(f"hidden_dims = {list(hidden_dims)!r} must all be >= 1")
        self.data_dim = math.prod(image_shape)
        self.num_classes = num_classes
        self.net = mlp([self.data_dim, *hidden_dims, num_classes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) or (B, *image_shape) inputs -> (B, num_classes) logits."""
        return self.net(x.reshape(x.shape[0], self.data_dim))


class CNNClassifier(nn.Module):
    """Small LeNet-style CNN: two 5x5 conv + ReLU + 2x2 max-pool blocks (``channels``), then
    a ``hidden``-unit layer and the class logits (LeCun et al. 1998; the CNN of McMahan et al.
    2017 for MNIST, narrower). Inputs are single- or multi-channel square images.

    Args:
        image_shape: (channels, H, W) of one input, H and W >= 12.
        num_classes: Number of classes (>= 2).
        channels: Output channels of the two conv blocks.
        hidden: Width of the fully connected layer.

    Raises:
        ConfigError: num_classes < 2, images smaller than 12x12, or a non-positive width.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int = 10,
                 channels: Sequence[int] = (16, 32), hidden: int = 128) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes = {num_classes!r} must be >= 2")
        if len(image_shape) != 3 or min(image_shape[1:]) < 12:
            raise ConfigError(f"image_shape = {tuple(image_shape)!r}: CNNClassifier needs (C, H, W) with H, W >= 12")
        if len(channels) != 2 or min(*channels, hidden) < 1:
            raise ConfigError(f"channels = {list(channels)!r} (two, >= 1) and hidden = {hidden!r} (>= 1)")
        self.image_shape = tuple(image_shape)
        c0, (c1, c2) = image_shape[0], channels
        self.features = nn.Sequential(
            nn.Conv2d(c0, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )
        flat = c2 * (image_shape[1] // 4) * (image_shape[2] // 4)
        self.classifier = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) or (B, C, H, W) inputs -> (B, num_classes) logits."""
        return self.classifier(self.features(x.reshape(x.shape[0], *self.image_shape)))
