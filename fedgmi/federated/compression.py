"""Codecs for model updates: ``encode(update, state) -> Payload`` with its exact size in bytes,
``decode(payload) -> update``.

A codec maps a flat float32 update (P,) to a :class:`Payload`: the tensors that would cross the
wire (packed codes, scales, indices, a seed) and nothing else, so ``Payload.nbytes`` is the
honest size of the message. Sizes of things both ends already know (the model's parameter count
P, the codec's settings) are not sent and not counted.

Codecs:

* :class:`Identity` (float32) and :class:`HalfPrecision` (float16 / bfloat16);
* :class:`StochasticQuantization`: b bits per value, unbiased stochastic rounding onto 2^(b-1)-1
  levels per sign of a per-bucket scale (QSGD, Alistarh et al. 2017, Sec. 3.1, with the
  bucket max-norm instead of the L2 norm);
* :class:`TopK`: the largest-magnitude fraction of entries (Stich et al. 2018), with indices as
  int16/int32 or a bitmap, whichever is smaller;
* :class:`RandomK`: a random fraction of entries, the 8-byte seed sent instead of the indices.

Composition: the sparsifiers encode their kept values with any other codec (``values=``), e.g.
``TopK(0.05, values=StochasticQuantization(8))``.

Error feedback (Stich et al. 2018, Alg. 1; Karimireddy et al. 2019, Alg. 2, EF-SGD): with
``error_feedback=True`` and a per-client ``state`` dict, the codec compresses
``p = update + e`` and keeps ``e <- p - decode(encode(p))`` in ``state["residual"]``, so what was
dropped or rounded away is sent in a later round. Without a state (the downlink, where the
server's copy of what clients hold already carries what was not delivered) it is off.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from fedgmi.errors import ConfigError
from fedgmi.federated.messages import tensor_bytes

HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Payload:
    """One encoded update: what crosses the wire.

    Attributes:
        numel: Length P of the decoded update (known to both ends, not counted).
        tensors: The tensors sent, by name.
        inner: The payload of a nested value codec (a sparsifier's kept values), or ``None``.
    """

    numel: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    inner: Payload | None = None

    def wire_tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor sent, nested payloads included."""
        yield from self.tensors.values()
        if self.inner is not None:
            yield from self.inner.wire_tensors()

    @property
    def device(self) -> torch.device:
        """Where the payload's tensors are."""
        return next(self.wire_tensors()).device

    @property
    def nbytes(self) -> int:
        """Exact size in bytes of the tensors sent."""
        return tensor_bytes(self.wire_tensors())


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack (N,) integer codes in [0, 2^bits) into ceil(N * bits / 8) uint8 bytes
    (little-endian bit order within a byte)."""
    if bits == 8:
        return codes.to(torch.uint8)
    shifts = torch.arange(bits, device=codes.device, dtype=torch.int32)
    flat = ((codes.to(torch.int32).unsqueeze(1) >> shifts) & 1).flatten()  # (N * bits,)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8))
    weights = 1 << torch.arange(8, device=codes.device, dtype=torch.int32)
    return (flat.view(-1, 8) * weights).sum(1).to(torch.uint8)  # (ceil(N * bits / 8),)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: (count,) int64 codes."""
    if bits == 8:
        return packed.to(torch.int64)
    shifts = torch.arange(8, device=packed.device, dtype=torch.int32)
    flat = ((packed.to(torch.int32).unsqueeze(1) >> shifts) & 1).flatten()[:count * bits]
    weights = 1 << torch.arange(bits, device=packed.device, dtype=torch.int64)
    return (flat.view(count, bits).to(torch.int64) * weights).sum(1)


class Codec(ABC):
    """Encodes a flat float32 update into a :class:`Payload` and back.

    Args:
        error_feedback: Keep the compression error in the per-client ``state`` and add it to
            the next update (EF-SGD; see the module docstring).
    """

    #: True when ``decode(encode(u))`` is ``u`` exactly.
    lossless: bool = False

    def __init__(self, error_feedback: bool = False) -> None:
        self.error_feedback = bool(error_feedback)

    def encode(self, update: torch.Tensor, state: dict | None = None,
               generator: torch.Generator | None = None) -> Payload:
        """Encode a (P,) update (any float dtype; read as float32).

        Args:
            update: The update, e.g. a component's parameter delta.
            state: This client's mutable state for this stream (error-feedback residual).
            generator: Randomness of stochastic codecs (seeded by the caller).
        """
        x = update.detach().float().reshape(-1)
        use_ef = self.error_feedback and state is not None
        if use_ef and "residual" in state:
            x = x + state["residual"]
        payload = self._encode(x, generator)
        if use_ef:
            state["residual"] = x - self.decode(payload)
        return payload

    @abstractmethod
    def _encode(self, x: torch.Tensor, generator: torch.Generator | None) -> Payload:
        """Encode (P,) float32 ``x``."""

    @abstractmethod
    def decode(self, payload: Payload) -> torch.Tensor:
        """The (P,) float32 update a payload stands for."""

    @abstractmethod
    def nbytes(self, numel: int) -> int:
        """Size in bytes of the payload of a (numel,) update (known before encoding)."""

    def limited(self, numel: int, max_bytes: int) -> Codec | None:
        """This codec, or a cheaper variant of it, whose payload for (numel,) fits in
        ``max_bytes``; ``None`` when none does (sparsifiers lower their fraction)."""
        return self if self.nbytes(numel) <= max_bytes else None


class Identity(Codec):
    """float32 values, sent as they are (4 P bytes)."""

    lossless = True

    def _encode(self, x, generator):
        return Payload(x.numel(), {"values": x})

    def decode(self, payload):
        return payload.tensors["values"]

    def nbytes(self, numel):
        return 4 * numel


class HalfPrecision(Codec):
    """Values cast to a 16-bit float (2 P bytes); round to nearest.

    Args:
        dtype: "float16" (10-bit mantissa, overflows above 65504) or "bfloat16" (7-bit
            mantissa, float32's range).
    """

    def __init__(self, dtype: str = "float16", error_feedback: bool = False) -> None:
        super().__init__(error_feedback)
        if dtype not in HALF_DTYPES:
            raise ConfigError(f"HalfPrecision dtype {dtype!r}; choose one of: {', '.join(HALF_DTYPES)}")
        self.dtype = dtype

    def _encode(self, x, generator):
        return Payload(x.numel(), {"values": x.to(HALF_DTYPES[self.dtype])})

    def decode(self, payload):
        return payload.tensors["values"].float()

    def nbytes(self, numel):
        return 2 * numel


class StochasticQuantization(Codec):
    """Unbiased b-bit stochastic quantization (QSGD, Alistarh et al. 2017, Sec. 3.1).

    Values are cut into buckets of ``bucket_size``; with s = 2^(b-1) - 1 levels per sign and a
    bucket's scale m = max_i |x_i| (sent as float32), each value becomes
    sign(x_i) * l_i * m / s with l_i = floor(s |x_i| / m + u_i), u_i ~ U[0, 1), so
    E[decode] = x (unbiased). The code sign * l + s in [0, 2s] takes b bits. Payload:
    ceil(P b / 8) + 4 ceil(P / bucket_size) bytes.

    Args:
        bits: Bits per value, 2 to 8 (2 = ternary {-m, 0, m}).
        bucket_size: Values sharing one scale.

    Raises:
        ConfigError: ``bits`` outside 2..8 or ``bucket_size`` < 1.
    """

    def __init__(self, bits: int = 8, bucket_size: int = 512, error_feedback: bool = False) -> None:
        super().__init__(error_feedback)
        if int(bits) != bits or not 2 <= bits <= 8:
            raise ConfigError(f"StochasticQuantization bits = {bits!r} must be an integer in 2..8")
        if int(bucket_size) != bucket_size or bucket_size < 1:
            raise ConfigError(f"StochasticQuantization bucket_size = {bucket_size!r} must be an integer >= 1")
        self.bits, self.bucket_size = int(bits), int(bucket_size)
        self.levels = 2 ** (self.bits - 1) - 1

    def _buckets(self, x: torch.Tensor) -> torch.Tensor:
        """(B, bucket_size) zero-padded view of (P,) ``x``."""
        return torch.nn.functional.pad(x, (0, (-x.numel()) % self.bucket_size)).view(-1, self.bucket_size)

    def _encode(self, x, generator):
        buckets = self._buckets(x)  # (B, d)
        scale = buckets.abs().amax(1)  # (B,)
        y = buckets.abs() / scale.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1) * self.levels
        u = torch.rand(y.shape, generator=generator, device=y.device)
        level = torch.floor(y + u).clamp_max(self.levels)  # (B, d), E[level] = y
        codes = (torch.sign(buckets) * level + self.levels).flatten()[:x.numel()]
        return Payload(x.numel(), {"scale": scale, "codes": pack_bits(codes, self.bits)})

    def decode(self, payload):
        n = payload.numel
        codes = unpack_bits(payload.tensors["codes"], self.bits, n).float() - self.levels  # (P,)
        codes = torch.nn.functional.pad(codes, (0, (-n) % self.bucket_size)).view(-1, self.bucket_size)
        return (codes * (payload.tensors["scale"] / self.levels).unsqueeze(1)).flatten()[:n]

    def nbytes(self, numel):
        return math.ceil(numel * self.bits / 8) + 4 * math.ceil(numel / self.bucket_size)


class Sparsifier(Codec):
    """Keeps k = ceil(fraction * P) entries; their values go through the ``values`` codec.

    Args:
        fraction: Fraction of entries kept, in (0, 1].
        values: Codec of the k kept values (default :class:`Identity`, float32).
        error_feedback: Carry what was not sent into the next round (default on; see module).

    Raises:
        ConfigError: ``fraction`` outside (0, 1].
    """

    def __init__(self, fraction: float = 0.01, values: Codec | None = None, error_feedback: bool = True) -> None:
        super().__init__(error_feedback)
        if not 0 < fraction <= 1:
            raise ConfigError(f"{type(self).__name__} fraction = {fraction!r} must be in (0, 1]")
        self.fraction, self.values = float(fraction), values or Identity()
        self._keep: int | None = None  # set by `limited` (a byte budget)

    def keep(self, numel: int) -> int:
        """k for a (numel,) update."""
        return self._keep if self._keep is not None else max(1, min(numel, math.ceil(self.fraction * numel)))

    @abstractmethod
    def index_bytes(self, numel: int, k: int) -> int:
        """Bytes that say which k of numel entries are kept."""

    def _cost(self, numel: int, k: int) -> int:
        return self.index_bytes(numel, k) + self.values.nbytes(k)

    def nbytes(self, numel):
        return self._cost(numel, self.keep(numel))

    def limited(self, numel, max_bytes):
        """The largest k (at most this codec's own) whose payload fits (binary search: the size
        grows with k)."""
        low, high = 0, self.keep(numel)
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self._cost(numel, mid) <= max_bytes else (low, mid - 1)
        if low == 0:
            return None
        variant = copy.copy(self)
        variant._keep = low
        return variant

    def _encode(self, x, generator):
        index, tensors = self._select(x, self.keep(x.numel()), generator)  # (k,) sorted
        return Payload(x.numel(), tensors, self.values.encode(x[index], None, generator))

    def decode(self, payload):
        out = torch.zeros(payload.numel, device=payload.inner.device)
        out[self._indices(payload)] = self.values.decode(payload.inner)
        return out

    @abstractmethod
    def _select(self, x: torch.Tensor, k: int, generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(k,) sorted kept indices of ``x`` and the tensors that tell them to the receiver."""

    @abstractmethod
    def _indices(self, payload: Payload) -> torch.Tensor:
        """The (k,) sorted kept indices, read back from ``payload``."""


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int16 if numel <= torch.iinfo(torch.int16).max + 1 else torch.int32


class TopK(Sparsifier):
    """The k largest-magnitude entries (Stich et al. 2018). Indices travel as int16/int32
    (2 or 4 bytes each) or as a P-bit bitmap, whichever is smaller."""

    @staticmethod
    def _bitmap_is_smaller(numel: int, k: int) -> bool:
        return math.ceil(numel / 8) < k * torch.empty(0, dtype=_index_dtype(numel)).element_size()

    def index_bytes(self, numel, k):
        if self._bitmap_is_smaller(numel, k):
            return math.ceil(numel / 8)
        return k * torch.empty(0, dtype=_index_dtype(numel)).element_size()

    def _select(self, x, k, generator):
        index = torch.topk(x.abs(), k, sorted=False).indices.sort().values
        if self._bitmap_is_smaller(x.numel(), k):
            mask = torch.zeros(x.numel(), dtype=torch.int32, device=x.device)
            mask[index] = 1
            return index, {"bitmap": pack_bits(mask, 1)}
        return index, {"indices": index.to(_index_dtype(x.numel()))}

    def _indices(self, payload):
        if "bitmap" in payload.tensors:
            return unpack_bits(payload.tensors["bitmap"], 1, payload.numel).nonzero().flatten()
        return payload.tensors["indices"].to(torch.int64)


class RandomK(Sparsifier):
    """k entries drawn uniformly without replacement; the receiver redraws them from the 8-byte
    seed sent. Values are not rescaled by P/k: with error feedback (default) the residual
    delivers the rest; without it the update is shrunk by k/P."""

    def index_bytes(self, numel, k):
        return 8

    @staticmethod
    def _draw(numel: int, k: int, seed: int, device) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(numel, generator=gen)[:k].sort().values.to(device)

    def _select(self, x, k, generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=x.device).item())
        return self._draw(x.numel(), k, seed, x.device), {"seed": torch.tensor([seed], dtype=torch.int64)}

    def _indices(self, payload):
        return self._draw(payload.numel, payload.inner.numel, int(payload.tensors["seed"].item()),
                          payload.inner.device)
