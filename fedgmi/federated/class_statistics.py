"""Per-class feature statistics: what pFedGM and FedVTC send instead of (or beside) models.

A client summarises its features z = phi(x) by class: the count n_y, the mean mu_y and the
per-dimension (diagonal) variance s2_y. The server pools the clients' summaries into the
statistics of the pooled data, exactly (the parallel-variance formula, Chan, Golub and LeVeque
1979): n = sum_i n_i, mu = sum_i n_i mu_i / n, s2 = sum_i n_i (s2_i + mu_i^2) / n - mu^2.
Variances are population variances (divided by n, not n - 1), so that pooling is exact.

On the wire the three tensors travel as one flat float32 vector (:meth:`ClassStatistics.flat`),
(Y + 2 Y d) entries: Y counts, Y d means, Y d variances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClassStatistics:
    """Class-wise count, mean and diagonal variance of d-dimensional features.

    Attributes:
        counts: (Y,) samples per class (float).
        means: (Y, d) class means; 0 for a class with no samples.
        variances: (Y, d) per-dimension population variances; 0 for a class with no samples.

    Raises:
        ValueError: shapes that do not agree, or negative counts.
    """

    counts: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor

    def __post_init__(self) -> None:
        y = self.counts.shape[0]
        if self.counts.dim() != 1 or self.means.shape != self.variances.shape or self.means.shape[0] != y:
            raise ValueError(f"ClassStatistics: counts {tuple(self.counts.shape)}, means {tuple(self.means.shape)} "
                             f"and variances {tuple(self.variances.shape)} must be (Y,), (Y, d), (Y, d)")
        if bool((self.counts < 0).any()):
            raise ValueError(f"ClassStatistics.counts = {self.counts.tolist()} must be >= 0")

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def of(cls, z: torch.Tensor, y: torch.Tensor, num_classes: int) -> ClassStatistics:
        """Statistics of (N, d) features ``z`` with (N,) integer labels ``y`` in [0, num_classes)."""
        z = z.detach().float()
        onehot = torch.nn.functional.one_hot(y.long(), num_classes).to(z)  # (N, Y)
        counts = onehot.sum(0)
        safe = counts.clamp_min(1.0)[:, None]
        means = onehot.T @ z / safe
        second = onehot.T @ (z * z) / safe
        variances = (second - means * means).clamp_min(0.0)
        return cls(counts, means, variances)

    def flat(self) -> torch.Tensor:
        """(Y + 2 Y d,) float32: counts, then means, then variances (row-major)."""
        return torch.cat([self.counts.float(), self.means.float().reshape(-1), self.variances.float().reshape(-1)])

    @classmethod
    def from_flat(cls, vector: torch.Tensor, num_classes: int) -> ClassStatistics:
        """Inverse of :meth:`flat`.

        Raises:
            ValueError: a vector whose length is not Y (1 + 2 d) for an integer d >= 1.
        """
        rest = vector.numel() - num_classes
        if rest <= 0 or rest % (2 * num_classes):
            raise ValueError(f"a flat ClassStatistics vector of {vector.numel()} entries does not fit "
                             f"{num_classes} classes (expected Y (1 + 2 d) entries)")
        d = rest // (2 * num_classes)
        counts, means, variances = vector.split([num_classes, num_classes * d, num_classes * d])
        return cls(counts.clone(), means.reshape(num_classes, d).clone(), variances.reshape(num_classes, d).clone())

    @staticmethod
    def pooled(parts: Sequence[ClassStatistics]) -> ClassStatistics:
        """The statistics of the union of the parts' data (exact; see the module docstring).

        Raises:
            ValueError: no parts, or parts of different shapes.
        """
        if not parts:
            raise ValueError("ClassStatistics.pooled needs at least one part")
        shape = parts[0].means.shape
        if any(p.means.shape != shape for p in parts):
            raise ValueError(f"ClassStatistics.pooled: parts of shapes {[tuple(p.means.shape) for p in parts]}")
        counts = torch.stack([p.counts for p in parts]).double()  # (P, Y)
        means = torch.stack([p.means for p in parts]).double()  # (P, Y, d)
        second = torch.stack([p.variances for p in parts]).double() + means ** 2
        total = counts.sum(0)
        safe = total.clamp_min(1.0)[:, None]
        mean = (counts[..., None] * means).sum(0) / safe
        var = ((counts[..., None] * second).sum(0) / safe - mean ** 2).clamp_min(0.0)
        dtype = parts[0].means.dtype
        return ClassStatistics(total.to(dtype), mean.to(dtype), var.to(dtype))
