"""Helpers shared by the cpu and cuda backends (not kernels: `reference.py` lists those)."""
from tinygrad_gpt.kernels.reference import get_array_module


def flat_inplace(a):
    """(flat view of a, None) if a is C-contiguous, else (flat contiguous copy, a) to write back.

    For the fused in-place kernels (AdamW) of both backends: they walk one flat array, and a
    non-contiguous argument is updated through a copy that the caller writes back into `a`."""
    if a.flags.c_contiguous:
        return a.reshape(-1), None                                 # (a.size,) view
    return get_array_module(a).ascontiguousarray(a).reshape(-1), a  # (a.size,) copy
