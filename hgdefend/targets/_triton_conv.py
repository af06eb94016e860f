"""The Triton kernel behind :mod:`hgdefend.targets.fused` (imported only when the kernel first runs).

Kept in its own module so that Triton resolves ``tl`` as a module global when it compiles the
kernel, and importing hgdefend never imports Triton. One program computes ``BLOCK_M`` pooled output
positions × all ``COUT`` channels of one member: four implicit-GEMM accumulators (one per position of
the 2×2 pooling window), their maximum, the bias and the activation; with ``WRITE_CODE`` also which
window position won (an int8 per output, for the input gradient of attacks).
"""

import triton
import triton.language as tl


@triton.jit
def conv_pool_act(
    x_ptr, w_ptr, b_ptr, out_ptr, code_ptr,
    M, H, W, PH, PW, R,
    sxb, sxk, sxc, sxh, sxw,
    sob, soc, soh, sow,
    slope,
    COUT: tl.constexpr, KS: tl.constexpr, PAD: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
    WRITE_CODE: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    k = tl.program_id(1)  # the member
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    b = offs_m // (PH * PW)
    rem = offs_m % (PH * PW)
    oy0 = 2 * (rem // PW) - PAD  # top-left input row of the pooling window's first conv position
    ox0 = 2 * (rem % PW) - PAD
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < COUT
    x_base = x_ptr + b.to(tl.int64) * sxb + k * sxk
    acc00 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc01 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc10 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc11 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_ok = offs_r < R
        c = offs_r // (KS * KS)
        t = offs_r % (KS * KS)
        dy = t // KS
        dx = t % KS
        # weights [K, COUT, R] (contiguous) as a [BLOCK_R, BLOCK_N] tile
        wt = tl.load(w_ptr + (k * COUT + offs_n[None, :]) * R + offs_r[:, None],
                     mask=r_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)  # fmt: skip
        iy = oy0[:, None] + dy[None, :]
        ix = ox0[:, None] + dx[None, :]
        ptr = x_base[:, None] + c[None, :] * sxc + iy * sxh + ix * sxw
        ok = m_ok[:, None] & r_ok[None, :]
        y_in0 = (iy >= 0) & (iy < H)
        y_in1 = (iy + 1 >= 0) & (iy + 1 < H)
        x_in0 = (ix >= 0) & (ix < W)
        x_in1 = (ix + 1 >= 0) & (ix + 1 < W)
        a = tl.load(ptr, mask=ok & y_in0 & x_in0, other=0.0).to(tl.float32)
        acc00 += tl.dot(a, wt, input_precision=PRECISION)
        a = tl.load(ptr + sxw, mask=ok & y_in0 & x_in1, other=0.0).to(tl.float32)
        acc01 += tl.dot(a, wt, input_precision=PRECISION)
        a = tl.load(ptr + sxh, mask=ok & y_in1 & x_in0, other=0.0).to(tl.float32)
        acc10 += tl.dot(a, wt, input_precision=PRECISION)
        a = tl.load(ptr + sxh + sxw, mask=ok & y_in1 & x_in1, other=0.0).to(tl.float32)
        acc11 += tl.dot(a, wt, input_precision=PRECISION)
    acc = tl.maximum(tl.maximum(acc00, acc01), tl.maximum(acc10, acc11))
    bias = tl.load(b_ptr + k * COUT + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    acc = acc + bias[None, :]
    if ACT == 0:
        acc = tl.where(acc >= 0, acc, acc * slope)
    else:
        acc = tl.maximum(acc, 0.0)
    py = rem // PW
    px = rem % PW
    o_ptr = (out_ptr + b.to(tl.int64)[:, None] * sob + (k * COUT + offs_n[None, :]) * soc
             + py[:, None] * soh + px[:, None] * sow)  # fmt: skip
    tl.store(o_ptr, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
    if WRITE_CODE:  # which window position won (0..3, row-major; the first on a tie, as max_pool2d)
        best = acc00
        code = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        code = tl.where(acc01 > best, 1, code)
        best = tl.maximum(best, acc01)
        code = tl.where(acc10 > best, 2, code)
        best = tl.maximum(best, acc10)
        code = tl.where(acc11 > best, 3, code)
        c_ptr = (code_ptr + b.to(tl.int64)[:, None] * sob + (k * COUT + offs_n[None, :]) * soc
                 + py[:, None] * soh + px[:, None] * sow)  # fmt: skip
        tl.store(c_ptr, code.to(tl.int8), mask=m_ok[:, None] & n_ok[None, :])
