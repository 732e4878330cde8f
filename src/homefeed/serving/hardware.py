"""Hardware probing for the served ranker: which compute dtype and which matmul kernels.

1. `cpu_flags` reads the CPU's feature flags (/proc/cpuinfo); `onednn_bf16` asks torch whether
   oneDNN is built in and takes bf16 matmuls on this CPU.
2. `cpu_bf16_native` combines them: bf16 matmuls beat fp32 only with native bf16 dot products
   (AVX512-BF16 / AMX-BF16 / Arm BF16); without them bf16 is emulated (~10x slower than fp32).
3. `resolve_dtype` turns the requested dtype ("auto", a name, a torch dtype or None) into the
   dtype `homefeed.serving.fast_model.ServedRanker` computes in, refusing what the device cannot run.
4. `kernel_info` describes what runs the matmuls (for the benchmarks' and the service's reports);
   `torch_at_least` gates features on the torch version (CUDA graphs need 2.4).

Imports nothing but torch.
"""

from __future__ import annotations

from typing import Any

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU flags (/proc/cpuinfo) of native bf16 dot products: x86 AVX512-BF16 / AMX-BF16, Arm BF16.
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def onednn_bf16() -> bool:
    """oneDNN is built in and takes bf16 matmuls on this CPU (else ATen's generic bf16 gemm)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16_native() -> bool:
    """True where bf16 matmuls beat fp32 on this CPU: oneDNN is built in and usable for bf16
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``: AVX-512 core or Arm bf16) AND the CPU has
    native bf16 dot products (AVX512-BF16 / AMX-BF16 / Arm BF16 in /proc/cpuinfo). Without
    them oneDNN emulates bf16 (an AVX2-only CPU runs a bf16 matmul ~10x slower than fp32)."""
    takes_bf16 = onednn_bf16()
    flags = cpu_flags()
    if flags is None:  # not Linux: trust oneDNN's own check
        return takes_bf16
    return takes_bf16 and any(f in flags for f in _NATIVE_BF16_FLAGS)


def resolve_dtype(dtype: Any, device: torch.device | str) -> torch.dtype:
    """The compute dtype ServedRanker runs: a torch dtype or its name, "auto" or None.

    "auto": bfloat16 on CUDA, bfloat16 on a CPU with native bf16 (`cpu_bf16_native`), float32
    on any other CPU. None: bfloat16 on CUDA, float32 on CPU (the exact path). On CPU,
    float16 is refused (no fast fp16 CPU kernels); bfloat16 is allowed everywhere (slow
    without native support, but correct)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if dtype is None:
        return torch.bfloat16 if cuda else torch.float32
    if isinstance(dtype, str):
        if dtype == "auto":
            return torch.bfloat16 if cuda or (device.type == "cpu" and cpu_bf16_native()) else torch.float32
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto, {', '.join(_DTYPES)}; got {dtype!r}")
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype {dtype} is not supported: use {', '.join(_DTYPES)} or auto")
    if not cuda and dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype {dtype} is not supported on {device.type}: use float32, bfloat16 or auto")
    return dtype


def kernel_info(device: torch.device | str, dtype: torch.dtype) -> dict[str, Any]:
    """What runs the matmuls: for the benchmarks' and the service's reports."""
    device = torch.device(device)
    info: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        return info
    get_cap = getattr(torch.backends.cpu, "get_cpu_capability", None)
    info.update({
        "cpu_capability": get_cap() if get_cap else None,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "bf16_native": cpu_bf16_native(),
        "matmul": ("fp32 (MKL)" if dtype != torch.bfloat16 else
                   "bf16 autocast, oneDNN" if onednn_bf16() else "bf16 autocast, ATen generic (emulated)"),
    })
    return info


def torch_at_least(major: int, minor: int) -> bool:
    try:
        parts = torch.__version__.split("+")[0].split(".")
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (ValueError, IndexError):
        return True


__all__ = ["cpu_bf16_native", "cpu_flags", "dtype_name", "kernel_info", "onednn_bf16", "resolve_dtype",
           "torch_at_least"]
