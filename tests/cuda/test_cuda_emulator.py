"""The CPU emulator of the CUDA kernels (cuda_emulator) can fail: controls.

tests/cuda/test_cuda_kernels_emulated.py passes only if the emulator would have caught a broken kernel.
Here each kind of bug it claims to catch is put into a kernel and must be caught:
- mutations of the real kernel sources, run through kernels.cuda's own wrappers: a missing
  __syncthreads (attention, cross-entropy), a causal mask off by one, attention without its online
  softmax rescale, a warp reduction that skips half the lanes (layer norm), a scatter one element
  past its row (embedding);
- small kernels that break one CUDA rule each: a barrier in divergent code, a shuffle after lanes
  returned, a full-mask shuffle in a block that is not whole warps, reading shared memory nobody
  wrote, a write past the end of an array, a block reading another block's output, arguments of
  the wrong C type, a launch over CUDA's limits, more than 48 KiB of shared memory.
And the stand-in cupy stays private: after load(), the process still has no `cupy`.
"""
import math
import sys

import numpy as np
import pytest

from tinygrad_gpt import cuda_emulator
from tinygrad_gpt.cuda_emulator import EmulatorError
from tinygrad_gpt.kernels import reference

if cuda_emulator.compiler() is None:
    pytest.skip("the CUDA emulator needs g++ (or $CXX) with C++17", allow_module_level=True)

cupy, cuda = cuda_emulator.load()


def mutate(monkeypatch, module, old, new, count=1):
    """Replace `old` by `new` in module.SOURCE (exactly `count` times) for this test."""
    source = module.SOURCE
    assert source.count(old) == count, f"{old!r} occurs {source.count(old)} times in {module.__name__}"
    monkeypatch.setattr(module, "SOURCE", source.replace(old, new))


def rel_err(a, ref):
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return np.linalg.norm(a - ref) / np.linalg.norm(ref)


def attention_inputs(rng, shape=(2, 2, 100, 32)):
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    return q, k, v, 1.0 / math.sqrt(shape[-1])


# ------------------------------------------------------------------------------------------------
# the unmodified kernels pass (so the failures below come from the mutations)
# ------------------------------------------------------------------------------------------------
def test_unmodified_attention_matches_the_reference(rng):
    q, k, v, scale = attention_inputs(rng)
    out, lse = cuda.attention_forward(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), scale)
    want_out, want_lse = reference.attention_forward(q, k, v, scale)
    assert rel_err(out.get(), want_out) < 1e-5 and rel_err(lse.get(), want_lse) < 1e-5


# ------------------------------------------------------------------------------------------------
# mutations of the real kernels
# ------------------------------------------------------------------------------------------------
def test_attention_without_the_tile_barrier_is_caught(rng, monkeypatch):
    """Drop the barrier that waits until every thread is done with the previous key tile."""
    mutate(monkeypatch, cuda.attention, "        __syncthreads();                                    "
           "// the previous tile is consumed\n", "")
    q, k, v, scale = attention_inputs(rng)
    with pytest.raises(EmulatorError, match="race between barriers"):
        cuda.attention_forward(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), scale)


def test_attention_with_an_off_by_one_mask_is_caught(rng, monkeypatch):
    mutate(monkeypatch, cuda.attention, "(key <= t0 + row && key < W) ? dot : ninf",
           "(key <= t0 + row + 1 && key < W) ? dot : ninf")
    q, k, v, scale = attention_inputs(rng)
    out, _ = cuda.attention_forward(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), scale)
    assert rel_err(out.get(), reference.attention_forward(q, k, v, scale)[0]) > 1e-2


def test_attention_without_the_online_softmax_rescale_is_caught(rng, monkeypatch):
    """Leave out the alpha = exp(m - m_new) rescale of what earlier key tiles accumulated."""
    mutate(monkeypatch, cuda.attention, "for (int d = 0; d < HSP; d++) acc[d] *= alpha;", "")
    mutate(monkeypatch, cuda.attention, "l = l * alpha + p_sum;", "l = l + p_sum;")
    q, k, v, scale = attention_inputs(rng)
    q *= 3.0                                                       # scores spread: maxima move between tiles
    out, _ = cuda.attention_forward(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), scale)
    assert rel_err(out.get(), reference.attention_forward(q, k, v, scale)[0]) > 1e-3


def test_layernorm_with_half_a_warp_reduction_is_caught(rng, monkeypatch):
    # the preamble's warp_sum is shared by every file; the layer norm module compiles PREAMBLE + SOURCE
    common = cuda._common
    old = "for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync"
    assert common.PREAMBLE.count(old) == 1
    monkeypatch.setattr(common, "PREAMBLE", common.PREAMBLE.replace(old, old.replace("16", "8")))
    common._raw_module.cache_clear()
    x = rng.standard_normal((33, 100)).astype(np.float32)
    w, b = np.ones(100, np.float32), np.zeros(100, np.float32)
    try:
        out, _, _ = cuda.layernorm_forward(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b))
    finally:
        monkeypatch.undo()
        common._raw_module.cache_clear()
    assert rel_err(out.get(), reference.layernorm_forward(x, w, b)[0]) > 1e-2


def test_cross_entropy_block_kernel_without_its_barrier_is_caught(rng, monkeypatch):
    mutate(monkeypatch, cuda.cross_entropy,
           "    if (lane == 0) { shared_m[warp] = m; shared_s[warp] = s; }\n    __syncthreads();\n",
           "    if (lane == 0) { shared_m[warp] = m; shared_s[warp] = s; }\n")
    logits = rng.standard_normal((3, 2000)).astype(np.float32)    # V > 1024: a block per row
    targets = rng.integers(0, 2000, size=3)
    with pytest.raises(EmulatorError, match="race between barriers"):
        cuda.softmax_cross_entropy_forward(cupy.asarray(logits), cupy.asarray(targets))


def test_embedding_scatter_past_its_row_is_caught(rng, monkeypatch):
    mutate(monkeypatch, cuda.embedding, "atomicAdd(dweight + row * C + c, dout[e]);",
           "atomicAdd(dweight + row * C + c + 1, dout[e]);")
    dout = rng.standard_normal((20, 8)).astype(np.float32)
    idx = np.full(20, 4)                                           # the last row of a (5, 8) table
    with pytest.raises(EmulatorError, match="wrote outside an array"):
        cuda.embedding_backward(cupy.asarray(dout), cupy.asarray(idx), 5)


# ------------------------------------------------------------------------------------------------
# small kernels that break one rule each
# ------------------------------------------------------------------------------------------------
RULES = r"""
template <typename T>
__global__ void divergent_barrier(T* out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = T(1);
}
template <typename T>
__global__ void shuffle_after_return(T* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, T(threadIdx.x), 1);
}
template <typename T>
__global__ void warp_sum_kernel(const T* x, T* out) {
    out[threadIdx.x] = warp_sum(x[threadIdx.x]);
}
template <typename T>
__global__ void unwritten_shared(T* out) {
    __shared__ T tile[64];
    if (threadIdx.x != 5) tile[threadIdx.x] = T(threadIdx.x);
    __syncthreads();
    out[threadIdx.x] = tile[(threadIdx.x + 1) % 64];
}
template <typename T>
__global__ void past_the_end(T* out, int n) {
    out[threadIdx.x] = T(2);                      // n < blockDim.x: no bounds check
}
template <typename T>
__global__ void scaled_copy(const T* x, T* out, long long n, T s) {
    for (long long i = threadIdx.x; i < n; i += blockDim.x) out[i] = s * x[i];
}
template <typename T>
__global__ void reads_another_block(T* data) {
    if (threadIdx.x == 0 && blockIdx.x > 0) data[blockIdx.x] += data[blockIdx.x - 1];  // a prefix sum across blocks: wrong
}
template <typename T>
__global__ void add_then_sync(T* data) {
    data[blockIdx.x * blockDim.x + threadIdx.x] += T(1);  // in place, before the first barrier
    __syncthreads();
}
template <typename T>
__global__ void too_much_shared(T* out) {
    __shared__ T big[7000];
    big[threadIdx.x] = T(0);
    out[threadIdx.x] = big[threadIdx.x];
}
"""
NAMES = ["divergent_barrier<float>", "shuffle_after_return<float>", "warp_sum_kernel<float>",
         "unwritten_shared<float>", "past_the_end<float>", "scaled_copy<float>", "reads_another_block<float>",
         "add_then_sync<float>", "too_much_shared<double>"]


@pytest.fixture(scope="module")
def rules():
    module = cupy.RawModule(code=cuda._common.PREAMBLE + RULES,
                            name_expressions=NAMES)
    return {name.split("<")[0]: module.get_function(name) for name in NAMES}


def test_warp_sum_control_passes(rules):
    x = np.arange(64, dtype=np.float32)
    out = cupy.zeros(64, dtype=np.float32)
    rules["warp_sum_kernel"]((1,), (64,), (cupy.asarray(x), out))
    np.testing.assert_array_equal(out.get(), np.repeat([x[:32].sum(), x[32:].sum()], 32))


def test_barrier_in_divergent_code_raises(rules):
    with pytest.raises(EmulatorError, match="divergent"):
        rules["divergent_barrier"]((1,), (64,), (cupy.zeros(64, dtype=np.float32),))


def test_shuffle_after_lanes_returned_raises(rules):
    with pytest.raises(EmulatorError, match="16 lanes of warp 0 returned"):
        rules["shuffle_after_return"]((1,), (32,), (cupy.zeros(32, dtype=np.float32),))


def test_full_mask_shuffle_in_a_partial_warp_raises(rules):
    with pytest.raises(EmulatorError, match="not a multiple of 32"):
        rules["warp_sum_kernel"]((1,), (48,), (cupy.zeros(48, dtype=np.float32),
                                               cupy.zeros(48, dtype=np.float32)))


def test_unwritten_shared_memory_reads_nan(rules):
    out = cupy.zeros(64, dtype=np.float32)
    rules["unwritten_shared"]((1,), (64,), (out,))
    got = out.get()
    assert np.isnan(got[4]) and np.isfinite(np.delete(got, 4)).all()


def test_write_past_the_end_raises(rules):
    with pytest.raises(EmulatorError, match="wrote outside an array"):
        rules["past_the_end"]((1,), (40,), (cupy.zeros(33, dtype=np.float32), np.int32(33)))


def test_arguments_are_checked_against_the_c_signature(rules):
    x, out = cupy.asarray(np.ones(10, np.float32)), cupy.empty(10, dtype=np.float32)
    copy = rules["scaled_copy"]
    copy((1,), (32,), (x, out, np.int64(10), np.float32(3)))
    np.testing.assert_array_equal(out.get(), np.full(10, 3, np.float32))
    with pytest.raises(TypeError, match="argument 2 is int32 but the parameter is a 8-byte integer"):
        copy((1,), (32,), (x, out, np.int32(10), np.float32(3)))
    with pytest.raises(TypeError, match="argument 3 is float64 but the parameter is a 4-byte float"):
        copy((1,), (32,), (x, out, np.int64(10), np.float64(3)))
    with pytest.raises(TypeError, match="argument 3 is a Python float"):
        copy((1,), (32,), (x, out, np.int64(10), 3.0))
    with pytest.raises(TypeError, match="argument 0 is a float64 array but the parameter points to 4-byte floats"):
        copy((1,), (32,), (cupy.ones(10, dtype=np.float64), out, np.int64(10), np.float32(3)))
    with pytest.raises(EmulatorError, match="not C-contiguous"):
        copy((1,), (32,), (cupy.ones(20, dtype=np.float32)[::2], out, np.int64(10), np.float32(3)))
    with pytest.raises(TypeError, match="3 arguments for 4 parameters"):
        copy((1,), (32,), (x, out, np.int64(10)))


def test_launch_limits_are_checked(rules):
    args = (cupy.ones(10, dtype=np.float32), cupy.empty(10, dtype=np.float32), np.int64(10), np.float32(1))
    with pytest.raises(EmulatorError, match="more than 1024 threads"):
        rules["scaled_copy"]((1,), (1025,), args)
    with pytest.raises(EmulatorError, match="over CUDA's limits"):
        rules["scaled_copy"]((1, 65536), (32,), args)


def test_a_block_reading_another_blocks_output_is_a_race(rules):
    with pytest.raises(EmulatorError, match="between blocks"):
        rules["reads_another_block"]((8,), (32,), (cupy.ones(8, dtype=np.float32),))


def test_a_barrier_reruns_the_launch_with_fibers_from_the_same_inputs(rules):
    """The first run calls threads one by one; the barrier aborts it after a thread has written.
    The fiber run must start from the original inputs: each element gets exactly one +1."""
    data = cupy.ones(3 * 64, dtype=np.float32)
    rules["add_then_sync"]((3,), (64,), (data,))
    np.testing.assert_array_equal(data.get(), np.full(3 * 64, 2, np.float32))


def test_shared_memory_over_48_kib_raises(rules):
    with pytest.raises(EmulatorError, match="above the 48 KiB static limit"):
        rules["too_much_shared"]((1,), (32,), (cupy.zeros(32, dtype=np.float64),))


def test_the_stand_in_cupy_stays_private():
    from tinygrad_gpt import kernels
    assert sys.modules.get("cupy") is not cupy
    assert kernels.for_array(np.zeros(3)) is not cuda
    name = "tinygrad_gpt.kernels.cuda"
    assert name not in sys.modules or sys.modules[name] is not cuda


def test_the_ucontext_fibers_agree_with_the_assembly_switch(rules, monkeypatch):
    """Fibers through ucontext (the path off x86-64 Linux) run the same kernels to the same bits,
    and break the same rule the same way."""
    monkeypatch.setattr(cuda_emulator, "USE_UCONTEXT", True)
    module = cupy.RawModule(code=cuda._common.PREAMBLE + RULES, name_expressions=NAMES)
    x = cupy.asarray(np.random.default_rng(0).standard_normal(64).astype(np.float32))
    want, got = cupy.zeros(64, dtype=np.float32), cupy.zeros(64, dtype=np.float32)
    rules["warp_sum_kernel"]((1,), (64,), (x, want))
    module.get_function("warp_sum_kernel<float>")((1,), (64,), (x, got))
    np.testing.assert_array_equal(got.get(), want.get())
    with pytest.raises(EmulatorError, match="divergent"):
        module.get_function("divergent_barrier<float>")((1,), (64,), (cupy.zeros(64, dtype=np.float32),))
