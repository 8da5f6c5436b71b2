"""`gemm4`: a strip of four matrix rows, C (+)= A B, as explicit SIMD code (a Numba intrinsic).

    C[r, x] (+)= sum_k A[r, k] B[k, x]      r < nrows (<= 4), x < ncols, k < K

Why this exists: attention's matrix products are tiny (K = 32 to 256) and a new one starts for
every four query rows, too small for a BLAS call (~1-2 us of overhead each) and too oddly shaped
for LLVM's loop vectoriser. Written as Numba loops they ran at 10-30 GFLOP/s: a dot product over
32 elements ends in a horizontal sum per output, and an outer-product loop keeps its accumulators
in memory. Here the four output rows of a tile of columns live in vector registers for the whole
sum over k, as in the micro-kernel of any BLAS: per k, one vector load of B's row, four scalar
loads of A broadcast to vectors, four vector multiply-adds. Measured at 150 GFLOP/s (float32, one
core of a 2-core AVX-512 AMD EPYC VM) against 30 for the best Numba-loop version.

The IR is target-neutral: LLVM splits a vector wider than the machine's registers into several
(a tile is two registers wide: 2 x 16 float32 with AVX-512, 2 x 8 with AVX2), and the masked loads
and stores that cover the last partial tile of columns become AVX-512 mask registers or AVX2
`vmaskmov`. Strided A (any row and k stride) lets one routine read a matrix or its transpose, so
attention never copies P^T or dS^T.

Follows: the BLIS / GotoBLAS micro-kernel (a register-blocked rank-1-update loop);
llvmlite's IR builder as Numba's own intrinsics use it.
Does not: block for cache (every operand of an attention head sits in L1/L2), pack panels, or
check bounds: the caller guarantees every offset it passes is inside its array.
"""
import llvmlite.binding as llvm
from llvmlite import ir
from numba import config, types
from numba.core import cgutils
from numba.extending import intrinsic


def _vector_bytes():
    """Width of the host's vector registers in bytes: 64 (AVX-512), 32 (AVX/AVX2), else 16; 16 when
    Numba is told to compile for another CPU (NUMBA_CPU_NAME, e.g. "generic" for portable caches)."""
    if config.CPU_NAME not in (None, "host"):
        return 16
    features = llvm.get_host_cpu_features()
    if features.get("avx512f"):
        return 64
    return 32 if features.get("avx") else 16


VECTOR_BYTES = _vector_bytes()


def _splat(builder, value, vty):
    """<value, value, ...> of vector type vty."""
    i32 = ir.IntType(32)
    v = builder.insert_element(ir.Constant(vty, None), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, vty.count), [0] * vty.count))


@intrinsic
def gemm4(typingctx, a, a_off, a_rs, a_ks, b, b_off, ldb, K, c, c_off, ldc, nrows, ncols, accumulate):
    """C[r, x] = (C[r, x] if accumulate else 0) + sum_{k < K} A[r, k] B[k, x], r < nrows, x < ncols.

    Every matrix is addressed in its array's flat element order (arrays: C-contiguous, one float
    dtype), so any row and column of any array can be a matrix corner:
        A[r, k] = a.flat[a_off + r * a_rs + k * a_ks]   (a_ks = 1: rows of a; a_rs = 1: its columns)
        B[k, x] = b.flat[b_off + k * ldb + x]           (rows of B contiguous)
        C[r, x] = c.flat[c_off + r * ldc + x]
    nrows in 1..4; rows r >= nrows are neither read nor written. K = 0 writes zeros (or leaves C).
    """
    arrays = (a, b, c)
    if not all(isinstance(t, types.Array) and t.layout == "C" and t.dtype in (types.float32, types.float64)
               for t in arrays) or not (a.dtype == b.dtype == c.dtype):
        return None
    ints = (a_off, a_rs, a_ks, b_off, ldb, K, c_off, ldc, nrows, ncols)
    if not all(isinstance(t, types.Integer) for t in ints):
        return None
    intp = types.intp
    sig = types.void(a, intp, intp, intp, b, intp, intp, intp, c, intp, intp, intp, intp, types.boolean)
    W = 2 * VECTOR_BYTES // (a.dtype.bitwidth // 8)                # columns per tile: two registers

    def codegen(context, builder, signature, args):
        (a_v, a_off, a_rs, a_ks, b_v, b_off, ldb, K, c_v, c_off, ldc, nrows, ncols, acc_flag) = args
        a_data, b_data, c_data = (context.make_array(t)(context, builder, v).data
                                  for t, v in zip((signature.args[0], signature.args[4], signature.args[8]),
                                                  (a_v, b_v, c_v)))
        elt = a_data.type.pointee
        vty = ir.VectorType(elt, W)
        vptr = vty.as_pointer()
        mty = ir.VectorType(ir.IntType(1), W)
        i32 = ir.IntType(32)
        ity = context.get_value_type(types.intp)
        one = ir.Constant(ity, 1)
        zero_v = ir.Constant(vty, None)
        align = ir.Constant(i32, signature.args[0].dtype.bitwidth // 8)
        name = f"v{W}f{'32' if isinstance(elt, ir.FloatType) else '64'}.p0"
        mload = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vptr, i32, mty, vty]),
                                               f"llvm.masked.load.{name}")
        mstore = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [vty, vptr, i32, mty]),
                                                f"llvm.masked.store.{name}")
        fast = ("contract", "reassoc")                             # fmul + fadd fuse into an FMA

        # A's row offsets; a row r >= nrows reads row nrows - 1 (its result is never stored)
        a_rows = []
        for r in range(4):
            rr = builder.select(builder.icmp_signed("<", ir.Constant(ity, r), nrows), ir.Constant(ity, r),
                                builder.sub(nrows, one))
            a_rows.append(builder.add(a_off, builder.mul(rr, a_rs)))
        accs = [cgutils.alloca_once(builder, vty) for _ in range(4)]  # promoted to registers by LLVM
        lanes = ir.Constant(ir.VectorType(ity, W), list(range(W)))
        n_tiles = builder.udiv(builder.add(ncols, ir.Constant(ity, W - 1)), ir.Constant(ity, W))
        with cgutils.for_range(builder, n_tiles) as tile:
            x0 = builder.mul(tile.index, ir.Constant(ity, W))
            mask = builder.icmp_signed("<", lanes, _splat(builder, builder.sub(ncols, x0), ir.VectorType(ity, W)))
            for acc in accs:
                builder.store(zero_v, acc)
            with cgutils.for_range(builder, K) as kloop:
                k = kloop.index
                b_row = builder.gep(b_data, [builder.add(builder.add(b_off, builder.mul(k, ldb)), x0)])
                bk = builder.call(mload, [builder.bitcast(b_row, vptr), align, mask, zero_v])
                ak = builder.mul(k, a_ks)
                for r in range(4):
                    a_rk = builder.load(builder.gep(a_data, [builder.add(a_rows[r], ak)]))
                    prod = builder.fmul(_splat(builder, a_rk, vty), bk, flags=fast)
                    builder.store(builder.fadd(builder.load(accs[r]), prod, flags=fast), accs[r])
            for r in range(4):
                with builder.if_then(builder.icmp_signed("<", ir.Constant(ity, r), nrows)):
                    c_row = builder.gep(c_data, [builder.add(builder.add(c_off, builder.mul(ir.Constant(ity, r), ldc)), x0)])
                    c_ptr = builder.bitcast(c_row, vptr)
                    with builder.if_then(acc_flag):
                        old = builder.call(mload, [c_ptr, align, mask, zero_v])
                        builder.store(builder.fadd(builder.load(accs[r]), old), accs[r])
                    builder.call(mstore, [builder.load(accs[r]), c_ptr, align, mask])
        return context.get_dummy_value()

    return sig, codegen
