"""Which ONNX Runtime execution providers the scorer asks for, and with which options.

``STREAMREC_DEVICE``: ``cpu``; ``cuda`` (TensorRT, then CUDA, then the CPU if neither is installed: logged
and counted as a fallback); ``auto`` (GPU providers when onnxruntime-gpu offers them, else the CPU).
Shared by the model graphs (`streamrec.serving.ranking`) and the retrieval index (`streamrec.serving.index`).
"""

from __future__ import annotations

import ctypes.util
import functools
import logging
from typing import Sequence

import onnxruntime as ort

from streamrec.serving import metrics

log = logging.getLogger(__name__)
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)


@functools.cache
def tensorrt_installed() -> bool:
    """onnxruntime-gpu always offers TensorRT, but it needs TensorRT's own libraries; without them ONNX
    Runtime retries on CUDA *without the provider options* (so TF32 would be back on): leave it out."""
    return ctypes.util.find_library("nvinfer") is not None


def providers_for(device: str, available: Sequence[str] | None = None) -> list[str]:
    """Execution providers for a device setting, best first, CPU always last.

    >>> providers_for("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CPUExecutionProvider']
    >>> providers_for("auto", ["CPUExecutionProvider"])
    ['CPUExecutionProvider']
    """
    available = list(ort.get_available_providers() if available is None else available)
    if device == "cpu":
        return [CPU]
    gpu = [p for p in GPU_PROVIDERS if p in available and (p != TENSORRT or tensorrt_installed())]
    if device == "cuda" and not gpu:
        log.warning("STREAMREC_DEVICE=cuda but onnxruntime offers %s; using the CPU "
                    "(install onnxruntime-gpu, the `gpu` extra, on a machine with CUDA)", available)
        metrics.gpu_fallbacks.inc()
    return gpu + [CPU]


# TF32 matrix products keep 10 mantissa bits: scores would differ from the CPU's by ~1e-3, more than the
# 1e-4 parity the registry promises, for a speed-up these small graphs do not need.
CUDA_OPTIONS = {"use_tf32": "0"}


def session_providers(providers: Sequence[str]) -> list:
    """``providers`` with their options, as `ort.InferenceSession` takes them."""
    return [(p, CUDA_OPTIONS) if p == CUDA else p for p in providers]
