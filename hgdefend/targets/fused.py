"""One Triton kernel for a member block ``conv → activation → 2×2 max-pool`` (the ``fused`` kernel).

Why: the batched forward of the built-in nets is limited by memory traffic, not arithmetic. cuDNN
writes each convolution's full-resolution output (the MNIST net's first conv: 74 KB per
member-image), then max-pool reads it back and writes a quarter of it, and the activation reads and
writes that again. Here each program computes a tile of *pooled* outputs directly: an implicit-GEMM
convolution (patches gathered on the fly, ``tl.dot`` on tensor cores) evaluated at the four
positions of each pooling window, their maximum, the bias and the activation, and writes only the
pooled map. Exact reformulation: max-pool of (conv + bias) is (max of the conv) + bias, and the
supported activations are non-decreasing, so they commute with the max.

The input is either shared by all K members (the first layer: ``[B, C, H, W]``, member stride 0) or
grouped (``[B, K*C, H, W]``, member k reads channels ``k*C .. k*C+C-1``); the output is grouped,
``[B, K*Cout, H', W']``, as :meth:`TargetSpec._forward_grouped` lays it out. Gradients (attacks,
training) come from :class:`_Block`: the kernel also saves which window position won, and the
backward routes the pooled gradient there into cuDNN's convolution gradients. CUDA only;
``TRITON_INTERPRET=1`` runs the same kernel on CPU tensors (the tests check it against ``conv2d``).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .precision import matmul_precision

ACTIVATIONS = {"leaky_relu": 0, "relu": 1}
"""Activations the kernel applies after the pool (both non-decreasing: they commute with max)."""

BLOCK_R = 32  # reduction chunk (input channel × kernel position); tl.dot needs >= 16
MAX_MEMBERS_PER_LAUNCH = 65_535  # CUDA's limit on a grid's second axis
INT32_MAX = 2**31 - 1
LAUNCH = {"block_m": 64, "num_warps": 4, "num_stages": 2}
"""Pooled output positions (image × row × column) per program, and Triton's launch settings."""


@functools.cache
def available() -> bool:
    """Whether Triton can be imported (it ships with CUDA builds of torch)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # an import of a broken install can fail in many ways
        return False
    return True


_USABLE: dict[str, bool] = {}


def usable(device: torch.device | str) -> bool:
    """Whether the kernel compiles and computes a small block right on ``device`` (checked once per
    device). The automatic choice asks this before it picks ``fused``, so a machine whose Triton
    cannot compile (no compiler, an unsupported GPU) scores with ``grouped`` and a warning instead of
    failing every call."""
    dev = torch.device(device)
    key = str(dev)
    if key not in _USABLE:
        ok, why = available(), "Triton cannot be imported"
        if ok:
            try:
                g = torch.Generator().manual_seed(0)
                x, w, b = (
                    torch.randn(s, generator=g).to(dev) for s in ((2, 1, 6, 6), (1, 16, 1, 3, 3), (1, 16))
                )
                with torch.no_grad():
                    got = conv_act_pool(x, w, b, shared=True, padding=1, activation="relu", precision="ieee")
                    ref = F.max_pool2d(F.relu(F.conv2d(x, w[0], b[0], padding=1)), 2)
                ok = bool(torch.allclose(got, ref, rtol=1e-4, atol=1e-4))
                why = "it computed a test block wrongly"
            except Exception as exc:  # any failure to compile or launch means: do not use it here
                ok, why = False, f"{type(exc).__name__}: {str(exc)[:200]}"
        if not ok:
            warnings.warn(f"the fused member kernel is not usable on {key} ({why}); scoring with "
                          "'grouped' instead", RuntimeWarning, stacklevel=2)  # fmt: skip
        _USABLE[key] = ok
    return _USABLE[key]


@functools.cache
def _kernel():  # noqa: ANN202 (a Triton JIT function)
    """The kernel, imported on first use, so importing hgdefend never imports Triton."""
    from ._triton_conv import conv_pool_act

    return conv_pool_act


def conv_act_pool(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    *,
    shared: bool,
    padding: int,
    activation: str,
    negative_slope: float = 0.01,
    precision: str = "tf32",
    block_m: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    return_code: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``maxpool2(act(conv(x)))`` for K members at once, as one kernel.

    ``weight`` ``[K, Cout, Cin, s, s]``, ``bias`` ``[K, Cout]``; ``x`` ``[B, Cin, H, W]`` when
    ``shared`` (every member sees it), else ``[B, K*Cin, H, W]``. Returns ``[B, K*Cout, H', W']`` with
    ``H' = (H + 2*padding - s + 1) // 2``. ``precision``: ``"tf32"`` or ``"ieee"`` for float32 inputs
    (bfloat16 inputs are multiplied exactly; every sum is accumulated in float32). ``block_m``,
    ``num_warps``, ``num_stages``: the launch configuration (default :data:`LAUNCH`; benchmarks sweep it).
    ``return_code``: also return, per output, which position of its pooling window won (int8, 0–3
    row-major; the first on a tie, as ``max_pool2d``): what the input gradient needs.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: the fused kernel supports {sorted(ACTIVATIONS)}, got {activation!r}")
    if precision not in ("tf32", "ieee"):
        raise ValueError(f"precision: expected 'tf32' or 'ieee', got {precision!r}")
    k, cout, cin, ks, ks2 = weight.shape
    if ks != ks2 or bias.shape != (k, cout):
        raise ValueError(f"weight/bias: expected [K, Cout, Cin, s, s] and [K, Cout], got "
                         f"{list(weight.shape)} and {list(bias.shape)}")  # fmt: skip
    b, c_in, h, w = x.shape
    if c_in != (cin if shared else k * cin):
        raise ValueError(f"x: expected {cin if shared else k * cin} channels, got {c_in}")
    ph, pw = (h + 2 * padding - ks + 1) // 2, (w + 2 * padding - ks + 1) // 2
    out = torch.empty((b, k * cout, ph, pw), device=x.device, dtype=x.dtype)
    code = torch.empty(out.shape, device=x.device, dtype=torch.int8) if return_code else None
    m = b * ph * pw
    if m == 0 or k == 0:
        return (out, code) if return_code else out
    wt = weight.to(x.dtype).reshape(k, cout, cin * ks * ks).contiguous()
    bs = bias.to(x.dtype).contiguous()
    sb, sc, sh, sw = x.stride()
    block_m = block_m or LAUNCH["block_m"]
    tune = {"num_warps": num_warps or LAUNCH["num_warps"], "num_stages": num_stages or LAUNCH["num_stages"]}
    r = cin * ks * ks
    # Launches cover slices of the members (the grid's second axis holds at most 65,535 programs, and
    # in-kernel offsets are 32-bit) and of the batch (pooled positions are counted in 32 bits): the
    # slices are views, so each launch reads and writes in place.
    per_member = max(cout * r, cout * ph * pw, 1 if shared else cin * sc)
    k_step = max(1, min(MAX_MEMBERS_PER_LAUNCH, INT32_MAX // per_member))
    b_step = max(1, INT32_MAX // (ph * pw) - block_m)
    for k0 in range(0, k, k_step):
        k1 = min(k, k0 + k_step)
        xk = x if shared else x[:, k0 * cin : k1 * cin]
        for b0 in range(0, b, b_step):
            b1 = min(b, b0 + b_step)
            o = out[b0:b1, k0 * cout : k1 * cout]
            c = code[b0:b1, k0 * cout : k1 * cout] if code is not None else o  # o: never written
            mb = (b1 - b0) * ph * pw
            _kernel()[((mb + block_m - 1) // block_m, k1 - k0)](
                xk[b0:b1], wt[k0:k1], bs[k0:k1], o, c,
                mb, h, w, ph, pw, r,
                sb, 0 if shared else cin * sc, sc, sh, sw,
                *o.stride(),
                float(negative_slope),
                COUT=cout, KS=ks, PAD=padding, ACT=ACTIVATIONS[activation],
                BLOCK_M=block_m, BLOCK_N=max(16, 1 << (cout - 1).bit_length()), BLOCK_R=BLOCK_R,
                # bfloat16 tiles are widened to float32 in the kernel; TF32 holds them exactly
                PRECISION=precision if x.dtype == torch.float32 else "tf32", WRITE_CODE=code is not None,
                **tune,
            )  # fmt: skip
    return (out, code) if return_code else out


class _Block(torch.autograd.Function):
    """The fused block with gradients (attacks: to the inputs; training: to the weights too).

    Backward: the output gradient times the activation's slope, routed to the window position that
    won the max (the saved int8 code; ``max_unpool2d`` writes the full-resolution map), then cuDNN's
    convolution gradients for the input and the weights at the forward's precision; the bias gets the
    routed gradient's sum. The full-resolution forward output is never written. Once differentiable:
    objectives that differentiate a gradient (``create_graph=True``) need ``grouped``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, shared, padding, activation, slope, precision):  # noqa: ANN001, ANN205
        out, code = conv_act_pool(x, weight, bias, shared=shared, padding=padding, activation=activation,
                                  negative_slope=slope, precision=precision, return_code=True)  # fmt: skip
        ctx.save_for_backward(x, out, code, weight)
        ctx.meta = (shared, padding, 0.0 if activation == "relu" else float(slope), precision)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        x, out, code, weight = ctx.saved_tensors
        shared, padding, slope, precision = ctx.meta
        k, cout, cin, ks, _ = weight.shape
        hc, wc = x.shape[2] + 2 * padding - ks + 1, x.shape[3] + 2 * padding - ks + 1
        ph, pw = out.shape[2:]
        g = grad_out * torch.where(out > 0, 1.0, slope).to(grad_out.dtype)
        rows = torch.arange(ph, device=out.device) * (2 * wc)
        cols = torch.arange(pw, device=out.device) * 2
        code = code.long()
        idx = rows[:, None] + cols[None, :] + (code // 2) * wc + code % 2
        full = F.max_unpool2d(g, idx, 2, output_size=(hc, wc))
        w = weight.reshape(k * cout, cin, ks, ks).to(full.dtype)
        groups = 1 if shared else k
        grad_x = grad_w = grad_b = None
        # the forward's precision (TF32 or IEEE float32), not whatever the global flags say now
        with matmul_precision(precision, full.device):
            if ctx.needs_input_grad[0]:
                grad_x = torch.nn.grad.conv2d_input(x.shape, w, full, padding=padding, groups=groups)
            if ctx.needs_input_grad[1]:
                grad_w = torch.nn.grad.conv2d_weight(x.to(full.dtype), w.shape, full, padding=padding,
                                                     groups=groups).reshape(weight.shape)  # fmt: skip
        if ctx.needs_input_grad[2]:
            grad_b = g.sum((0, 2, 3)).reshape(k, cout)
        return grad_x, grad_w, grad_b, None, None, None, None, None


def block(
    x: Tensor, weight: Tensor, bias: Tensor, *, shared: bool, padding: int, activation: str,
    negative_slope: float = 0.01, precision: str = "tf32",
) -> Tensor:  # fmt: skip
    """:func:`conv_act_pool`, differentiable when autograd needs it (attacks, training)."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        return _Block.apply(x, weight, bias, shared, padding, activation, negative_slope, precision)
    return conv_act_pool(x, weight, bias, shared=shared, padding=padding, activation=activation,
                         negative_slope=negative_slope, precision=precision)  # fmt: skip
