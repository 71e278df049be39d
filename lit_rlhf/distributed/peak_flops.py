"""The peak dense bf16/fp16 tensor FLOP/s of common accelerators, for model FLOPs utilisation: one table, looked up
by the name ``torch.cuda.get_device_name`` reports. Unknown devices (and CPUs) have no peak: MFU is then not logged,
the achieved FLOP/s are.

Values are the vendors' spec sheets' dense figures (the sheets print sparse ones twice as large), bf16 where the
device has it, else fp16, with fp32 accumulation (what PyTorch's matmuls use):

- A100 SXM/PCIe: 312 TFLOPS (NVIDIA A100 Tensor Core GPU datasheet).
- H100 SXM: 989 TFLOPS; H100 PCIe: 756; H100 NVL: 835 (NVIDIA H100 Tensor Core GPU datasheet).
- H200 SXM: 989 TFLOPS; H200 NVL: 835 (NVIDIA H200 Tensor Core GPU datasheet).
- B200: 2,250 TFLOPS (NVIDIA DGX B200 / HGX B200 datasheet, per GPU).
- L4: 121 TFLOPS; L40S: 362; L40: 181; A10: 125; RTX A6000: 155; T4: 65 fp16 (NVIDIA datasheets of each).
- V100 SXM2: 125 TFLOPS fp16; V100 PCIe: 112 (NVIDIA V100 datasheet; no bf16).
- GeForce RTX 4090: 165 TFLOPS with fp32 accumulation (NVIDIA Ada Lovelace architecture whitepaper, appendix A).

AWS's A10G is absent on purpose: NVIDIA publishes no spec sheet for it, and it is not the A10's figure.
"""

from __future__ import annotations

import re
from typing import Optional

import torch

TERA = 1e12
#: (words that must all be words of the lower-cased device name, peak FLOP/s), the more specific first.
PEAK_FLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("h100", "pcie"), 756 * TERA),
    (("h100", "nvl"), 835 * TERA),
    (("h100",), 989 * TERA),
    (("h200", "nvl"), 835 * TERA),
    (("h200",), 989 * TERA),
    (("b200",), 2250 * TERA),
    (("a100",), 312 * TERA),
    (("l40s",), 362 * TERA),
    (("l40",), 181 * TERA),
    (("l4",), 121 * TERA),
    (("a10",), 125 * TERA),
    (("a6000",), 155 * TERA),
    (("v100", "pcie"), 112 * TERA),
    (("v100",), 125 * TERA),
    (("t4",), 65 * TERA),
    (("4090",), 165 * TERA),
)


def peak_flops_of(device_name: str) -> Optional[float]:
    """The table's peak FLOP/s for a device named ``device_name`` (as CUDA reports it), or None if not known."""
    words_of_name = set(re.split(r"[^a-z0-9]+", device_name.lower()))  # "NVIDIA A100-SXM4-80GB": a100, sxm4, ...
    for words, peak in PEAK_FLOPS:
        if words_of_name.issuperset(words):
            return peak
    return None


def device_peak_flops(device: torch.device) -> Optional[float]:
    """Peak dense bf16 FLOP/s of ``device``, or None (a CPU, or a GPU the table does not know)."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued kernels, so a wall-clock phase time covers its work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
