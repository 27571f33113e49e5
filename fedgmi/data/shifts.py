"""Kinds of inherent distribution: how the K components of a probabilistic mixture differ.

A :class:`Shift` turns base images (and labels) into the samples of component ``k``. It is
chosen in a config by ``class_path`` under ``scenario.shift`` (``scenario.angles`` remains a
shorthand for :class:`Rotation`)::

    scenario:
      dataset: mnist
      shift:
        class_path: fedgmi.data.shifts.Corruption
        init_args: {corruptions: [none, noise, contrast], severity: 3}

========================  ==========================================  ===============  ==========
kind                      component k                                 p(x) differs?    K allowed
========================  ==========================================  ===============  ==========
:class:`Rotation`         images rotated by ``angles[k]`` degrees     yes              any
:class:`Corruption`       its own corruption (noise, blur, contrast,  yes              <= 5 grey,
                          inversion, colour) at a severity 1..5                         6 colour
:class:`LabelPermutation` the same images, labels ``perm_k[y]``       **no**           <= classes
:class:`ClassSkew`        its own class distribution q_k              yes (via y)      <= classes
                          (class subsets or Dirichlet(beta))                            (subsets)
:class:`DatasetUnion`     a different dataset, resized to one shape   yes              <= datasets
:class:`Transformed`      the user's own transform ``transforms[k]``  user's choice    any
:class:`Composed`         several kinds at once (e.g. rotation AND    if a part's      the parts'
                          a label permutation per component)          does             common K
========================  ==========================================  ===============  ==========

Under :class:`LabelPermutation` every component has the same ``p(x)`` and differs only in
``p(y | x)``: responsibilities computed from ``p_k(x)`` alone (FedGMI's label-free E-step) carry
no information about the component, while the joint E-step (``+ log p_k(y | x)``) and the
label-using peers (IFCA, FedEM, ...) can separate the components.

Every base image is used at most once in a scenario (pools stay disjoint). Randomness of a
shift (the corruption noise, Dirichlet class distributions) comes from the scenario seed.
"""

from __future__ import annotations

import itertools
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
import torch

from fedgmi.errors import ConfigError

__all__ = [
    "CORRUPTIONS",
    "ClassSkew",
    "Composed",
    "Corruption",
    "DatasetUnion",
    "LabelPermutation",
    "Rotation",
    "Shift",
    "Transformed",
    "corrupt_images",
    "rotate_images",
]

KEY = "scenario.shift.init_args"
"""Prefix of the config keys named in error messages."""


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_list(v) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str | bytes)


class Shift(ABC):
    """One family of K inherent distributions built from base datasets.

    The scenario builder calls, in order: :meth:`check` (does the kind fit the data?),
    :meth:`draw_pool` (which base images each component's samples use, disjoint), then
    :meth:`render` once per component (its images and labels).
    """

    @property
    @abstractmethod
    def num_components(self) -> int:
        """``K``."""

    @abstractmethod
    def component_names(self) -> list[str]:
        """``K`` short names, e.g. ``["rot0", "rot90"]``."""

    def validate(self) -> None:
        """Check the arguments (called by the constructor and again by
        :meth:`fedgmi.data.ScenarioConfig.validate`).

        Raises:
            ConfigError: One line naming the key (``scenario.shift.init_args.<name>``), the
                value and what is allowed.
        """

    def _validate_quietly(self) -> None:
        """Normalise the arguments at construction without raising: jsonargparse instantiates
        shifts and would bury the message; :class:`~fedgmi.data.ScenarioConfig` calls
        :meth:`validate` next and raises it as one line."""
        try:
            self.validate()
        except ConfigError:
            pass

    def other_datasets(self) -> list[str]:
        """Names of datasets besides ``scenario.dataset`` whose images feed components."""
        return []

    def check(self, shapes: Sequence[tuple[int, ...]], num_classes: Sequence[int], names: Sequence[str]) -> None:
        """Refuse a kind that does not fit the data (before any image is drawn); the builder
        always calls it first, and a kind may remember facts of the data it needs later
        (channels, number of classes).

        Args:
            shapes: ``(C, H, W)`` of each base dataset (``scenario.dataset`` first, then
                :meth:`other_datasets`).
            num_classes: Classes of each base dataset.
            names: Name of each base dataset.

        Raises:
            ConfigError: One line naming the key, the value and what is allowed.
        """

    def output_shape(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, int, int]:
        """``(C, H, W)`` of every rendered sample."""
        return tuple(shapes[0])

    def output_classes(self, num_classes: Sequence[int]) -> int:
        """Number of class labels of the rendered samples."""
        return int(num_classes[0])

    def draw_pool(self, components: np.ndarray, labels: Sequence[torch.Tensor],
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Choose the base image of every sample, each base image at most once.

        Args:
            components: ``(N,)`` int64, the component of every sample (in the scenario's block
                order: client, train/test part, component).
            labels: Labels ``(N_b,)`` of each base dataset.
            rng: The scenario's generator.

        Returns:
            ``(source, index)``, each ``(N,)`` int64: which base dataset and which image of it.
            Default: the first ``N`` entries of one permutation of the first base dataset.

        Raises:
            ConfigError: The datasets hold too few images for the demand.
        """
        n = components.size
        return np.zeros(n, dtype=np.int64), rng.permutation(len(labels[0]))[:n]

    @abstractmethod
    def render(self, images: torch.Tensor, labels: torch.Tensor, k: int, seed: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Component ``k``'s samples from its base images.

        Args:
            images: ``(n, C, H, W)`` float32 in ``[0, 1]``, base images of component ``k``.
            labels: ``(n,)`` int64 base labels.
            k: Component index.
            seed: Seed for any randomness of the rendering (derived from the scenario seed).

        Returns:
            ``(images, labels)``: ``(n, *output_shape)`` float32 in ``[0, 1]`` and ``(n,)``
            int64.
        """


# ---------------------------------------------------------------------------- rotation
ANGLE_TOLERANCE = 1e-6
"""Degrees within which two angles (mod 360) are the same rotation."""


def check_angles(angles, key: str) -> list[float]:
    """Validated list of distinct (mod 360) finite angles in degrees.

    Raises:
        ConfigError: ``key = value`` is empty, not numbers, not finite or repeats a rotation.
    """
    if not _is_list(angles) or len(angles) == 0:
        raise ConfigError(f"{key} = {angles!r} must be a non-empty list of degrees")
    for i, a in enumerate(angles):
        if not _is_real(a) or not math.isfinite(a):
            raise ConfigError(f"{key}[{i}] = {a!r} must be a finite number of degrees")
    turns = sorted(float(a) % 360.0 for a in angles)  # the same rotation when within 1e-6 degree, mod 360
    gaps = [b - a for a, b in itertools.pairwise([*turns, turns[0] + 360.0])] if len(turns) > 1 else [360.0]
    if min(gaps) < ANGLE_TOLERANCE:
        raise ConfigError(
            f"{key} = {list(angles)!r} repeat a rotation (equal modulo 360, within {ANGLE_TOLERANCE:g} degree); "
            "every component needs its own angle"
        )
    return [float(a) for a in angles]


def rotate_images(images: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate a batch of images counter-clockwise by ``angle`` degrees, keeping ``(H, W)``.

    Multiples of 90 degrees on square images use :func:`torch.rot90`, which moves pixels exactly
    (no interpolation) and agrees with torchvision's rotate; other angles use torchvision's
    bilinear rotate with black fill, clamped to ``[0, 1]``.

    Args:
        images: ``(N, C, H, W)`` float tensor.
        angle: Degrees, counter-clockwise.

    Returns:
        ``(N, C, H, W)`` rotated images.
    """
    turns = float(angle) % 360.0
    square = images.shape[-1] == images.shape[-2]
    if turns % 90.0 == 0.0 and square:
        return torch.rot90(images, int(turns // 90.0), dims=(-2, -1)).contiguous()
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    rotated = tvf.rotate(images, turns, interpolation=InterpolationMode.BILINEAR, fill=0.0)
    return rotated.clamp_(0.0, 1.0)


class Rotation(Shift):
    """Component ``k`` is the base dataset rotated by ``angles[k]`` degrees (counter-clockwise).

    The rotated-MNIST scenario of FedGMI's experiments (and of IFCA, Ghosh et al. 2020);
    ``scenario.angles: [...]`` is a shorthand for this class.

    Args:
        angles: Distinct (modulo 360) finite angles in degrees; ``K = len(angles)``.

    Raises:
        ConfigError: Bad angles (message names ``scenario.shift.init_args.angles``).
    """

    def __init__(self, angles: list[float] = (0.0, 90.0, 180.0)) -> None:
        self.angles = list(angles) if _is_list(angles) else angles
        self._validate_quietly()

    def validate(self) -> None:
        self.angles = check_angles(self.angles, f"{KEY}.angles")

    @property
    def num_components(self) -> int:
        return len(self.angles)

    def component_names(self) -> list[str]:
        return [f"rot{a:g}" for a in self.angles]

    def render(self, images, labels, k, seed):
        return rotate_images(images, self.angles[k]), labels


# ---------------------------------------------------------------------------- corruption
CORRUPTIONS: tuple[str, ...] = ("none", "noise", "blur", "contrast", "inversion", "colour")
"""Corruption names in the default order (``colour`` needs three-channel images)."""

NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
"""Gaussian-noise standard deviation per severity 1..5 (ImageNet-C's ``gaussian_noise``,
Hendrycks & Dietterich 2019), pixels in [0, 1], clipped after."""
BLUR_SIGMA = (0.5, 0.75, 1.0, 1.5, 2.0)
"""Gaussian-blur standard deviation in pixels per severity (our scale for 8-32 px images;
ImageNet-C's 1..6 px is for 224 px), kernel ``2 ceil(3 sigma) + 1``."""
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)
"""Contrast factor per severity (ImageNet-C's ``contrast``): blend with the image's mean grey."""
HUE_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)
"""Hue rotation in turns per severity (``colour``; 0.5 = opposite colours)."""


def corrupt_images(images: torch.Tensor, corruption: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Apply one corruption with torchvision's transforms v2 functionals.

    ``none``: unchanged; ``noise``: ``gaussian_noise`` (sigma :data:`NOISE_SIGMA`, clipped);
    ``blur``: ``gaussian_blur`` (:data:`BLUR_SIGMA`); ``contrast``: ``adjust_contrast``
    (:data:`CONTRAST_FACTOR`); ``inversion``: ``invert`` (``1 - x``, severity has no effect);
    ``colour``: ``adjust_hue`` (:data:`HUE_SHIFT`, three channels only).

    Args:
        images: ``(N, C, H, W)`` float32 in ``[0, 1]``.
        corruption: One of :data:`CORRUPTIONS`.
        severity: 1..5.
        seed: Seed of the noise (the global RNG is left as it was).

    Returns:
        ``(N, C, H, W)`` float32 in ``[0, 1]``.
    """
    from torchvision.transforms.v2 import functional as tvf

    s = severity - 1
    if corruption == "none":
        return images.clone()
    if corruption == "noise":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return tvf.gaussian_noise(images, mean=0.0, sigma=NOISE_SIGMA[s], clip=True)
    if corruption == "blur":
        sigma = BLUR_SIGMA[s]
        size = 2 * math.ceil(3 * sigma) + 1
        return tvf.gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma]).clamp_(0.0, 1.0)
    if corruption == "contrast":
        return tvf.adjust_contrast(images, CONTRAST_FACTOR[s]).clamp_(0.0, 1.0)
    if corruption == "inversion":
        return tvf.invert(images)
    if corruption == "colour":
        return tvf.adjust_hue(images, HUE_SHIFT[s]).clamp_(0.0, 1.0)
    raise ConfigError(f"corruption {corruption!r} is unknown; choose from: {', '.join(CORRUPTIONS)}")


class Corruption(Shift):
    """Component ``k`` applies its own appearance corruption ``corruptions[k]`` at ``severity``.

    Corruptions follow ImageNet-C (Hendrycks & Dietterich 2019), see :func:`corrupt_images`.

    Args:
        corruptions: Distinct names from :data:`CORRUPTIONS`, one per component; ``None``: the
            first ``num_components`` of :data:`CORRUPTIONS` that fit the images (``colour``
            only on three-channel images).
        num_components: ``K`` when ``corruptions`` is ``None`` (default 3).
        severity: 1 (mild) .. 5 (strong), shared by every component.

    Raises:
        ConfigError: An unknown or repeated corruption, both or a bad ``num_components``, a
            severity outside 1..5; at build time, ``colour`` on grey images or ``K`` larger
            than the corruptions available for the images.
    """

    def __init__(self, corruptions: list[str] | None = None, num_components: int | None = None,
                 severity: int = 3) -> None:
        self.corruptions, self.num_requested, self.severity = corruptions, num_components, severity
        self._validate_quietly()

    def validate(self) -> None:
        corruptions, num_components, severity = self.corruptions, self.num_requested, self.severity
        if corruptions is not None:
            if num_components is not None:
                raise ConfigError(f"{KEY}: give corruptions or num_components, not both")
            if not _is_list(corruptions) or not corruptions:
                raise ConfigError(f"{KEY}.corruptions = {corruptions!r} must be a non-empty list")
            for c in corruptions:
                if c not in CORRUPTIONS:
                    raise ConfigError(f"{KEY}.corruptions has {c!r}; allowed: {', '.join(CORRUPTIONS)}")
            if len(set(corruptions)) != len(corruptions):
                raise ConfigError(f"{KEY}.corruptions = {list(corruptions)!r} repeats one; each component "
                                  "needs its own corruption")
        elif num_components is not None and (not _is_int(num_components) or num_components < 1):
            raise ConfigError(f"{KEY}.num_components = {num_components!r} must be an integer >= 1")
        if not _is_int(severity) or not 1 <= severity <= 5:
            raise ConfigError(f"{KEY}.severity = {severity!r} must be an integer in 1..5")
        self.corruptions = list(corruptions) if corruptions is not None else None
        self.requested = 3 if corruptions is None and num_components is None else num_components

    @property
    def num_components(self) -> int:
        return len(self.corruptions) if self.corruptions is not None else int(self.requested)

    def _names(self, channels: int = 3) -> list[str]:
        if self.corruptions is not None:
            return self.corruptions
        available = [c for c in CORRUPTIONS if channels == 3 or c != "colour"]
        return available[: self.requested]

    def component_names(self) -> list[str]:
        return [c if c == "none" else f"{c}{self.severity}" for c in self._names(self._channels)]

    _channels = 3

    def check(self, shapes, num_classes, names) -> None:
        channels = shapes[0][0]
        self._channels = channels
        if self.corruptions is not None and "colour" in self.corruptions and channels != 3:
            raise ConfigError(f"{KEY}.corruptions has 'colour' but dataset {names[0]!r} has grey images "
                              f"({channels} channel); colour needs 3 channels")
        allowed = len(CORRUPTIONS) - (channels != 3)
        if self.corruptions is None and self.requested > allowed:
            raise ConfigError(f"{KEY}.num_components = {self.requested} is more than the {allowed} corruptions "
                              f"available for dataset {names[0]!r} ({', '.join(self._names(channels))}); "
                              f"allowed: K <= {allowed}")

    def render(self, images, labels, k, seed):
        return corrupt_images(images, self._names(images.shape[1])[k], self.severity, seed * 1000 + k), labels


# ---------------------------------------------------------------------------- labels
class LabelPermutation(Shift):
    """Same images for every component; component ``k`` relabels ``y -> permutations[k][y]``.

    ``p_k(x)`` is the same for every ``k`` and only ``p_k(y | x)`` differs, so the components are
    not identifiable from ``x`` alone: FedGMI's label-free E-step cannot separate them (its
    assignment accuracy stays near chance), its joint E-step and the label-using peers can.

    Args:
        num_components: ``K`` when ``permutations`` is ``None`` (default 3): component ``k``
            uses the cyclic shift ``y -> (y + k) mod num_classes``, so any two components
            disagree on every class (needs ``K <= num_classes``).
        permutations: Explicit ``K`` distinct permutations of ``0..num_classes-1``.

    Raises:
        ConfigError: Both given, a list that is not a permutation, repeated permutations, or
            ``K`` larger than the number of classes (cyclic shifts).
    """

    def __init__(self, num_components: int | None = None, permutations: list[list[int]] | None = None) -> None:
        self.num_requested, self.permutations = num_components, permutations
        self._validate_quietly()

    def validate(self) -> None:
        num_components, permutations = self.num_requested, self.permutations
        if permutations is not None:
            if num_components is not None:
                raise ConfigError(f"{KEY}: give permutations or num_components, not both")
            if not _is_list(permutations) or not permutations or not all(_is_list(p) for p in permutations):
                raise ConfigError(f"{KEY}.permutations = {permutations!r} must be a non-empty list of lists")
            if len({tuple(p) for p in permutations}) != len(permutations):
                raise ConfigError(f"{KEY}.permutations repeats a permutation; each component needs its own")
        elif num_components is not None and (not _is_int(num_components) or num_components < 1):
            raise ConfigError(f"{KEY}.num_components = {num_components!r} must be an integer >= 1")
        self.permutations = [list(p) for p in permutations] if permutations is not None else None
        self.requested = 3 if permutations is None and num_components is None else num_components

    @property
    def num_components(self) -> int:
        return len(self.permutations) if self.permutations is not None else int(self.requested)

    def component_names(self) -> list[str]:
        """``perm0`` (identity under cyclic shifts), ``perm1``, ..."""
        return [f"perm{k}" for k in range(self.num_components)]

    def table(self, num_classes: int) -> torch.Tensor:
        """``(K, num_classes)`` int64: row ``k`` maps a base label to component ``k``'s label."""
        if self.permutations is not None:
            return torch.tensor(self.permutations, dtype=torch.int64)
        base = torch.arange(num_classes)
        return torch.stack([(base + k) % num_classes for k in range(self.num_components)])

    _classes = 0

    def check(self, shapes, num_classes, names) -> None:
        c = self._classes = int(num_classes[0])
        if self.permutations is None:
            if self.requested > c:
                raise ConfigError(f"{KEY}.num_components = {self.requested} is more than dataset {names[0]!r} with "
                                  f"{c} classes; cyclic label shifts allow K <= {c}")
            return
        for i, p in enumerate(self.permutations):
            if sorted(p) != list(range(c)):
                raise ConfigError(f"{KEY}.permutations[{i}] = {p!r} is not a permutation of 0..{c - 1} "
                                  f"(dataset {names[0]!r} has {c} classes)")

    def render(self, images, labels, k, seed):
        return images.clone(), self.table(self._classes)[k][labels]


# ---------------------------------------------------------------------------- class skew
class ClassSkew(Shift):
    """Component ``k`` has its own class distribution ``q_k``; images are untouched.

    ``q_k`` is uniform over ``classes[k]`` (given subsets), or drawn from
    ``Dirichlet(dirichlet * 1)`` over all classes (seeded by the scenario seed), or, when
    neither is given, uniform over the ``k``-th of ``num_components`` contiguous, disjoint
    groups of classes (``numpy.array_split``). Each sample's class is drawn from ``q_k``, its
    image from the remaining images of that class (no image used twice).

    Args:
        num_components: ``K`` when ``classes`` is ``None`` (default 3).
        classes: ``K`` non-empty, distinct lists of class labels.
        dirichlet: Concentration ``beta > 0`` of the Dirichlet over classes.

    Raises:
        ConfigError: Both ``classes`` and ``num_components``, empty or repeated subsets, a bad
            concentration; at build time a class label outside the dataset, ``K`` larger than
            the number of classes (disjoint groups), or a class with too few images.
    """

    def __init__(self, num_components: int | None = None, classes: list[list[int]] | None = None,
                 dirichlet: float | None = None) -> None:
        self.num_requested, self.classes, self.dirichlet = num_components, classes, dirichlet
        self.distributions: np.ndarray | None = None  # (K, num_classes), set by draw_pool
        self._validate_quietly()

    def validate(self) -> None:
        num_components, classes, dirichlet = self.num_requested, self.classes, self.dirichlet
        if classes is not None:
            if num_components is not None:
                raise ConfigError(f"{KEY}: give classes or num_components, not both")
            if dirichlet is not None:
                raise ConfigError(f"{KEY}: give classes or dirichlet, not both")
            if not _is_list(classes) or not classes or not all(_is_list(c) and c for c in classes):
                raise ConfigError(f"{KEY}.classes = {classes!r} must be a list of non-empty lists of labels")
            if not all(_is_int(v) for c in classes for v in c):
                raise ConfigError(f"{KEY}.classes = {classes!r} must hold integer labels")
            if len({frozenset(c) for c in classes}) != len(classes):
                raise ConfigError(f"{KEY}.classes = {classes!r} repeats a subset; each component needs its own")
        elif num_components is not None and (not _is_int(num_components) or num_components < 1):
            raise ConfigError(f"{KEY}.num_components = {num_components!r} must be an integer >= 1")
        if dirichlet is not None and (not _is_real(dirichlet) or not math.isfinite(dirichlet) or dirichlet <= 0):
            raise ConfigError(f"{KEY}.dirichlet = {dirichlet!r} must be a finite number > 0")
        self.classes = [list(c) for c in classes] if classes is not None else None
        self.requested = 3 if classes is None and num_components is None else num_components
        self.dirichlet = None if dirichlet is None else float(dirichlet)

    @property
    def num_components(self) -> int:
        return len(self.classes) if self.classes is not None else int(self.requested)

    def _subsets(self, num_classes: int) -> list[list[int]]:
        if self.classes is not None:
            return self.classes
        return [g.tolist() for g in np.array_split(np.arange(num_classes), self.num_components)]

    def component_names(self) -> list[str]:
        if self.dirichlet is not None:
            return [f"skew{k}" for k in range(self.num_components)]
        if self.classes is None:
            return [f"group{k}" for k in range(self.num_components)]
        return ["cls" + "-".join(str(v) for v in c) if len(c) <= 4 else f"cls{c[0]}..{c[-1]}" for c in self.classes]

    def check(self, shapes, num_classes, names) -> None:
        c = num_classes[0]
        if self.classes is not None:
            for i, subset in enumerate(self.classes):
                bad = [v for v in subset if not 0 <= v < c]
                if bad:
                    raise ConfigError(f"{KEY}.classes[{i}] has {bad!r}, outside dataset {names[0]!r} labels 0..{c - 1}")
        elif self.dirichlet is None and self.requested > c:
            raise ConfigError(f"{KEY}.num_components = {self.requested} is more than dataset {names[0]!r} with {c} "
                              f"classes; disjoint class groups allow K <= {c} (or set dirichlet)")

    def class_distributions(self, num_classes: int, rng: np.random.Generator) -> np.ndarray:
        """``(K, num_classes)`` float64 rows ``q_k`` on the simplex."""
        if self.dirichlet is not None:
            return rng.dirichlet(np.full(num_classes, self.dirichlet), size=self.num_components)
        q = np.zeros((self.num_components, num_classes))
        for k, subset in enumerate(self._subsets(num_classes)):
            q[k, subset] = 1.0 / len(subset)
        return q

    def draw_pool(self, components, labels, rng):
        base_labels = labels[0].numpy()
        num_classes = int(base_labels.max()) + 1
        self.distributions = q = self.class_distributions(num_classes, rng)
        wanted = np.empty(components.size, dtype=np.int64)  # the class of every sample
        for k in range(self.num_components):
            mask = components == k
            wanted[mask] = rng.choice(num_classes, size=int(mask.sum()), p=q[k])
        index = np.empty(components.size, dtype=np.int64)
        for c in range(num_classes):
            need = np.flatnonzero(wanted == c)
            have = rng.permutation(np.flatnonzero(base_labels == c))
            if need.size > have.size:
                raise ConfigError(f"class skew needs {need.size} images of class {c} but the dataset holds "
                                  f"{have.size}; lower scenario.samples_per_client or scenario.num_clients")
            index[need] = have[: need.size]
        return np.zeros(components.size, dtype=np.int64), index

    def render(self, images, labels, k, seed):
        return images.clone(), labels


# ---------------------------------------------------------------------------- dataset union
def resize_images(images: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` images to ``shape = (C', H', W')`` (antialiased bilinear;
    grey -> colour repeats the channel, colour -> grey is ITU-R 601 luma), clamped to [0, 1]."""
    from torchvision.transforms.v2 import functional as tvf

    c, h, w = shape
    if tuple(images.shape[-2:]) != (h, w):
        images = tvf.resize(images, [h, w], antialias=True)
    if images.shape[1] != c:
        if c == 3 and images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        elif c == 1 and images.shape[1] == 3:
            images = tvf.rgb_to_grayscale(images)
        else:
            raise ConfigError(f"cannot map {images.shape[1]} channels to {c}")
    return images.clamp(0.0, 1.0).contiguous()


class DatasetUnion(Shift):
    """Each component is a different dataset: component 0 is ``scenario.dataset``, component
    ``k >= 1`` is ``others[k - 1]``, every image resized to ``image_shape``.

    Labels keep each dataset's own ids (MNIST's 3 and FashionMNIST's 3 share label 3, so
    ``p(y | x)`` differs between components); ``num_classes`` is the largest of the datasets'.

    Args:
        others: Distinct dataset names (see :data:`fedgmi.data.datasets.DATASETS`), none equal
            to ``scenario.dataset``; ``K = 1 + len(others)``.
        image_shape: ``(C, H, W)`` of every sample; default ``scenario.dataset``'s shape.

    Raises:
        ConfigError: An empty or repeated list, a bad shape; at build time an unknown dataset
            or one equal to ``scenario.dataset``.
    """

    def __init__(self, others: list[str] = ("fashion_mnist",), image_shape: list[int] | None = None) -> None:
        self.others, self.image_shape = others, image_shape
        self._names: list[str] = []
        self._validate_quietly()

    def validate(self) -> None:
        others, image_shape = self.others, self.image_shape
        if not _is_list(others) or not others or not all(isinstance(o, str) for o in others):
            raise ConfigError(f"{KEY}.others = {others!r} must be a non-empty list of dataset names")
        if len(set(others)) != len(others):
            raise ConfigError(f"{KEY}.others = {list(others)!r} repeats a dataset; each component needs its own")
        if image_shape is not None and (not _is_list(image_shape) or len(image_shape) != 3
                                        or not all(_is_int(d) and d >= 1 for d in image_shape)
                                        or image_shape[0] not in (1, 3)):
            raise ConfigError(f"{KEY}.image_shape = {image_shape!r} must be [C, H, W] with C 1 or 3")
        self.others = list(others)
        self.image_shape = tuple(image_shape) if image_shape is not None else None

    @property
    def num_components(self) -> int:
        return 1 + len(self.others)

    def other_datasets(self) -> list[str]:
        return list(self.others)

    def component_names(self) -> list[str]:
        return self._names or ["base", *self.others]

    def check(self, shapes, num_classes, names) -> None:
        if names[0] in self.others:
            raise ConfigError(f"{KEY}.others = {self.others!r} repeats scenario.dataset = {names[0]!r}; "
                              "component 0 is scenario.dataset, the others must differ")
        self._names = list(names)

    def output_shape(self, shapes):
        return tuple(self.image_shape) if self.image_shape is not None else tuple(shapes[0])

    def output_classes(self, num_classes):
        return int(max(num_classes))

    def draw_pool(self, components, labels, rng):
        source = components.astype(np.int64).copy()
        index = np.empty(components.size, dtype=np.int64)
        for k in range(self.num_components):
            mask = components == k
            n, have = int(mask.sum()), len(labels[k])
            if n > have:
                raise ConfigError(f"component {k} ({self.component_names()[k]}) needs {n} images but its dataset "
                                  f"holds {have}; lower scenario.samples_per_client or scenario.num_clients")
            index[mask] = rng.permutation(have)[:n]
        return source, index

    def render(self, images, labels, k, seed):
        return images, labels  # resized by the builder to output_shape before rendering


# ---------------------------------------------------------------------------- the user's own
class Transformed(Shift):
    """Component ``k`` is the base data passed through the user's ``transforms[k]``.

    For bringing one's own shift (see :func:`fedgmi.data.custom.scenario_from_tensors`).

    Args:
        transforms: ``K`` callables, each mapping a batch ``(n, C, H, W)`` float32 in [0, 1] to
            a batch of the same shape in [0, 1] (e.g. a ``torchvision.transforms.v2``
            transform, or ``lambda x: x.flip(-1)``); ``None`` means the identity.
        names: ``K`` component names (default ``t0, t1, ...``).
        relabel: Optional ``K`` callables mapping labels ``(n,)`` int64 to labels (``None``:
            unchanged).
        seed_transforms: Seed torch's global RNG (restored afterwards) before each component's
            transform, from the scenario seed, so random transforms are reproducible.

    Raises:
        ConfigError: No transforms, a transform that is not callable, names of the wrong length.
    """

    def __init__(self, transforms: Sequence[Callable | None], names: Sequence[str] | None = None,
                 relabel: Sequence[Callable | None] | None = None, seed_transforms: bool = True) -> None:
        if not _is_list(transforms) or not transforms:
            raise ConfigError(f"transforms = {transforms!r} must be a non-empty list of K callables")
        for i, t in enumerate(transforms):
            if t is not None and not callable(t):
                raise ConfigError(f"transforms[{i}] = {t!r} is not callable")
        if names is not None and len(names) != len(transforms):
            raise ConfigError(f"names has {len(names)} entries but there are K = {len(transforms)} transforms")
        if relabel is not None and len(relabel) != len(transforms):
            raise ConfigError(f"relabel has {len(relabel)} entries but there are K = {len(transforms)} transforms")
        self.transforms = list(transforms)
        self.names = list(names) if names is not None else [f"t{k}" for k in range(len(transforms))]
        self.relabel = list(relabel) if relabel is not None else [None] * len(transforms)
        self.seed_transforms = seed_transforms

    @property
    def num_components(self) -> int:
        return len(self.transforms)

    def component_names(self) -> list[str]:
        return list(self.names)

    def render(self, images, labels, k, seed):
        t, r = self.transforms[k], self.relabel[k]
        if t is None:
            out = images.clone()
        else:
            with torch.random.fork_rng(devices=[], enabled=self.seed_transforms):
                if self.seed_transforms:
                    torch.manual_seed(seed * 1000 + k)
                out = t(images)
        if not isinstance(out, torch.Tensor) or out.shape != images.shape:
            raise ConfigError(f"transforms[{k}] returned {getattr(out, 'shape', type(out))}; it must keep the "
                              f"batch shape {tuple(images.shape)}")
        out = out.to(torch.float32).clamp(0.0, 1.0)
        return out, (labels if r is None else torch.as_tensor(r(labels), dtype=torch.int64))


# ---------------------------------------------------------------------------- composition
class Composed(Shift):
    """Several kinds at once: component ``k`` renders through ``shifts[0]``'s component ``k``,
    then ``shifts[1]``'s, and so on.

    The PM scenario's hardest case ties covariate and concept shift together, where no single
    model can be right for everyone: ``Composed([Rotation([0, 90, 180]), LabelPermutation(3)])``
    gives each component its own appearance AND its own labelling (a sample's look tells its
    component, and the component tells how to read its label), so only a model that routes by
    component predicts well (``configs/pm_mnist_rotation_permutation.yaml``)::

        scenario:
          shift:
            class_path: fedgmi.data.shifts.Composed
            init_args:
              shifts:
                - {class_path: fedgmi.data.shifts.Rotation, init_args: {angles: [0, 90, 180]}}
                - {class_path: fedgmi.data.shifts.LabelPermutation, init_args: {num_components: 3}}

    Args:
        shifts: Two or more shifts with the same ``K``. At most one of them may choose the base
            images itself (:class:`ClassSkew`, :class:`DatasetUnion`); its choice is used.

    Raises:
        ConfigError: Fewer than two shifts, one that is not a Shift, different ``K``, or two
            that each choose the base images.
    """

    def __init__(self, shifts: list[Shift]) -> None:
        self.shifts = list(shifts) if _is_list(shifts) else shifts
        self._validate_quietly()

    def validate(self) -> None:
        shifts = self.shifts
        if not _is_list(shifts) or len(shifts) < 2 or not all(isinstance(s, Shift) for s in shifts):
            raise ConfigError(f"{KEY}.shifts = {shifts!r} must be a list of two or more shifts (class_path entries)")
        for s in shifts:
            s.validate()
        ks = [s.num_components for s in shifts]
        if len(set(ks)) != 1:
            names = ", ".join(f"{type(s).__name__} K={k}" for s, k in zip(shifts, ks))
            raise ConfigError(f"{KEY}.shifts have different numbers of components ({names}); all need the same K")
        if len(self._pool_choosers()) > 1:
            names = ", ".join(type(s).__name__ for s in self._pool_choosers())
            raise ConfigError(f"{KEY}.shifts: {names} each choose the base images; compose at most one of them")

    def _pool_choosers(self) -> list[Shift]:
        """The parts that override :meth:`Shift.draw_pool` (class skew, dataset union)."""
        return [s for s in self.shifts if type(s).draw_pool is not Shift.draw_pool]

    @property
    def num_components(self) -> int:
        return self.shifts[0].num_components

    def component_names(self) -> list[str]:
        """Each part's name of component ``k`` joined by ``+``, e.g. ``rot90+perm1``."""
        return ["+".join(parts) for parts in zip(*(s.component_names() for s in self.shifts))]

    def other_datasets(self) -> list[str]:
        return [d for s in self.shifts for d in s.other_datasets()]

    def check(self, shapes, num_classes, names) -> None:
        for s in self.shifts:
            s.check(shapes, num_classes, names)
            shapes = [s.output_shape(shapes)] * len(shapes)
            num_classes = [s.output_classes(num_classes)] * len(num_classes)

    def output_shape(self, shapes):
        for s in self.shifts:
            shapes = [s.output_shape(shapes)] * len(shapes)
        return tuple(shapes[0])

    def output_classes(self, num_classes):
        for s in self.shifts:
            num_classes = [s.output_classes(num_classes)] * len(num_classes)
        return int(num_classes[0])

    def draw_pool(self, components, labels, rng):
        chooser = (self._pool_choosers() or self.shifts)[0]
        return chooser.draw_pool(components, labels, rng)

    def render(self, images, labels, k, seed):
        for s in self.shifts:
            images, labels = s.render(images, labels, k, seed)
        return images, labels
