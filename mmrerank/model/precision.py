"""The encoder's numeric precision (fp32, bf16, fp16 or int8) and what `auto` picks for a device and processor.

int8 quantises only the encoder's linear layers: each weight once at load, one scale per output
channel; each activation row (one token) with its own scale at every call, so a pair's score does
not depend on which other pairs share its micro-batch. The embedding, the norms, attention and the
Matryoshka heads stay in fp32. Activations use 7 bits (-63..63): on processors without VNNI the
u8 x s8 products are summed in int16 pairs, and 7 bits keep those sums exact, so every x86 host
computes the same integers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmrerank.serving.settings import PRECISIONS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}

WEIGHT_LEVELS = 127
ACTIVATION_LEVELS = 63
ACTIVATION_ZERO_POINT = 64  # the kernel takes unsigned activations: -63..63 travels as 1..127


@dataclass(frozen=True)
class Precision:
    """A resolved precision and the one-line reason it was chosen."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of everything int8 leaves unquantised (and of the whole encoder otherwise)."""
        return DTYPES[self.name]


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The processor's feature flags as Linux reports them (`avx2`, `avx512_vnni`, `amx_bf16`, ...); empty elsewhere."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def int8_unavailable_reason(device: torch.device, features: frozenset[str]) -> str | None:
    """Why int8 GEMMs cannot run here, or None: they need the CPU, AVX2 and PyTorch's fbgemm engine."""
    if device.type != "cpu":
        return f"int8 runs on the CPU only, not on {device.type}"
    if "avx2" not in features:
        return "int8 needs a processor with AVX2"
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return "this PyTorch build lacks the fbgemm int8 engine"
    return None


def choose_precision(requested: str, device: torch.device, features: frozenset[str] | None = None) -> Precision:
    """Resolve `requested` (one of PRECISIONS) for `device`; `features` defaults to this processor's flags.

    `auto` is bf16 on a GPU. On a CPU it is int8 wherever int8 GEMMs run (AVX2 and up: on the
    development CPU the whole model ran 1.7x faster than fp32, within the demo's quality bound,
    see docs/benchmarks.md), else bf16 where the processor computes in it natively, else fp32.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {requested!r}")
    features = cpu_features() if features is None else features
    if requested == "int8":
        reason = int8_unavailable_reason(device, features)
        if reason is not None:
            raise ValueError(reason)
        return Precision("int8", "asked for")
    if requested != "auto":
        return Precision(requested, "asked for")
    if device.type != "cpu":
        return Precision("bf16", f"auto: half precision on {device.type}")
    if int8_unavailable_reason(device, features) is None:
        vnni = "with" if {"avx512_vnni", "avx_vnni", "amx_int8"} & features else "without"
        return Precision("int8", f"auto: AVX2 int8 GEMMs ({vnni} VNNI) on this CPU")
    native_bf16 = {"avx512_bf16", "amx_bf16"} & features
    if native_bf16:
        return Precision("bf16", f"auto: the CPU computes bf16 natively ({', '.join(sorted(native_bf16))})")
    return Precision("fp32", "auto: this CPU has neither int8 nor native bf16 units")


class Int8Linear(nn.Module):
    """A bias-free linear layer computed in int8: per-channel weight scales, per-token activation scales."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear quantises bias-free linear layers only")
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scales = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / WEIGHT_LEVELS
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # PyTorch marks quantised tensors deprecated; fbgemm's packing needs one
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch.quantize_per_channel(weight, scales.double(), zero_points, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(quantized, None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / ACTIVATION_LEVELS
        levels = torch.round(rows / scale)  # whole numbers in -63..63: the kernel's own quantisation is exact
        product = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            levels, 1.0, ACTIVATION_ZERO_POINT, self._packed
        )
        return (product * scale).reshape(*hidden.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linears(module: nn.Module) -> int:
    """Replace every `nn.Linear` under `module` by an `Int8Linear`; returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
            replaced += 1
        else:
            replaced += quantize_linears(child)
    return replaced
