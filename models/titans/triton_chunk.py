"""Titans memory as Triton kernels: chunk_titans_memory's contract and results in one kernel launch per call.

Why a file of its own rather than a backend argument of chunk_titans_memory: the two share the closed form
(chunk.py derives it) and the coefficients of the gates' recurrence (chunk.chunk_coefficients, reused
here), but nothing of how they run. chunk.py is PyTorch operators in a Python loop over chunks; this is a
kernel that loops over the chunks itself, with a hand-written backward of its own. Keeping them apart
keeps each readable, and a model picks one through its backend (model.MEMORY_BACKENDS) as it picks the
per-token reference.

What runs per call (triton_kernels.py has the kernels and their tiling):
- PyTorch, for all chunks at once: the coefficients A, c, G, s, e of every chunk from the gates (a few
  dozen operators whatever the length; autograd takes their gradients back to the gates), and a copy of the
  state into working buffers;
- one kernel launch, one program per (batch, head), looping over the chunks in order. A call that
  continues a chunk an earlier call began (state.pos > 0) takes a second launch for that chunk's rest,
  whose keys meet the chunk's base weights rather than the current ones.
The backward is as many launches, over the chunks in reverse, from each chunk's starting memory, which the
forward saves when a gradient is wanted; everything inside a chunk is recomputed.

Runs on CUDA, or on the CPU through Triton's interpreter (TRITON_INTERPRET=1 when the op is called), which
the tests use. Memory depth 1 or 2 (depth 3 and more: chunk_titans_memory). A call computes in float32
(float64 for float64 inputs), its products in tf32 only when torch.backends.cuda.matmul.allow_tf32 is on.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from models.modules.dtypes import compute_dtype

from .chunk import chunk_coefficients
from .naive import LN_EPS, MemoryState, get_activation, initial_state

MAX_DEPTH = 2
ACT_CODES = {"gelu": 0, "silu": 1}  # triton_kernels.GELU, SILU


def interpreting() -> bool:
    """Whether triton.jit runs kernels through its interpreter (read from the environment as Triton does)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def triton_problem() -> str | None:
    """Why the Triton kernels cannot run here, or None when they can (triton is imported only where they
    could run: importing it takes a while)."""
    if not torch.cuda.is_available() and not interpreting():
        return "the Triton kernels need a CUDA device (or TRITON_INTERPRET=1, Triton's CPU interpreter)"
    try:
        importlib.import_module("triton")
    except ImportError as err:
        return f"triton does not import: {err}"
    return None


def _kernels() -> ModuleType:
    """triton_kernels, imported on first use, and imported again if TRITON_INTERPRET changed since:
    triton.jit reads it when it decorates."""
    from triton.runtime.interpreter import InterpretedFunction

    module = importlib.import_module("models.titans.triton_kernels")
    if isinstance(module.titans_fwd_d1_kernel, InterpretedFunction) != interpreting():
        module = importlib.reload(module)
    return module


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# Hidden units per tile, when set (tests set it to run several tiles at small sizes); else launch_config's.
HIDDEN_TILE: int | None = None


def launch_config(chunk_size: int, head_dim: int, hidden: int) -> dict:
    """Block sizes and warps. tl.dot wants every side >= 16 on the GPU. The hidden tile holds about 1024
    entries of a weight matrix: compiled for sm_90 at chunk 16, D 64, hidden 256, tiles of 16 hidden units
    and 8 warps spilled the fewest registers, forward and backward (tiles of 32, or 4 warps, spilled more:
    the chunk's 16-row operands are replicated in every warp, which leaves little room). Under the
    interpreter, where registers cost nothing and every operation a Python call, one tile holds them all.
    The launches ask for one stage (no software pipelining of the tile loops, whose loads and stores touch
    the memory the program updates in place; the register figures above are for one stage too)."""
    block_n, block_d = max(16, _pow2(chunk_size)), max(16, _pow2(head_dim))
    block_h = max(16, _pow2(hidden))
    if HIDDEN_TILE is not None:
        block_h = HIDDEN_TILE
    elif not interpreting():
        block_h = min(block_h, max(16, 1024 // block_d))
    return dict(BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_H=block_h, num_warps=8 if block_d >= 64 else 4)


def _precision(dtype: torch.dtype) -> str:
    """tf32 for float32 products exactly when PyTorch's own float32 matmuls use it."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _coefficients(theta: Tensor, eta: Tensor, alpha: Tensor, size: int) -> tuple[Tensor, ...]:
    """The chunks' coefficients for gates [N, t] cut into chunks of ``size`` (the last one padded with gates
    that leave A and E unchanged, theta 0 so that no padding token writes): A, c [N, n_chunks, size],
    G [N, n_chunks, size, size], s [N, n_chunks, size], e [N, n_chunks], each contiguous."""
    pad = -theta.shape[-1] % size
    gates = [F.pad(g, (0, pad), value=fill).unflatten(-1, (-1, size)) for g, fill in
             ((theta, 0.0), (eta, 1.0), (alpha, 0.0))]  # fmt: skip
    return tuple(t.contiguous() for t in chunk_coefficients(*gates))


def _strides(t: Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


class TritonChunkMemory(torch.autograd.Function):
    """The kernels over one call, with their backward.

    Inputs: cfg (a dict: depth, activation code, norm, residual, chunk size, head_len (the rest of a chunk
    begun earlier, 0 if none), ends_mid_chunk, save (keep each chunk's starting memory for a backward),
    precision, dtype); q, k, v [B, H, T, D]; per launch (head, then body) per memory layer the coefficients
    (A, c, G, s, e) or Nones; per layer the weights, [B, H, d_out, d_in] or, for a sequence's start, the
    initial weights [H, d_out, d_in]; per layer the momentum, [B, H, d_out, d_in] or None for zero; then,
    when head_len > 0, per layer the chunk's base. Outputs: y [B, H, T, D], per layer the weights and the
    momentum after the call, and, when the body's last chunk is partial, per layer its starting weights
    (the base that the next call continues from).
    """

    @staticmethod
    def forward(ctx, cfg: dict, q: Tensor, k: Tensor, v: Tensor, *rest: Tensor | None):
        kern = _kernels()
        depth, dtype = cfg["depth"], cfg["dtype"]
        n_coef = 2 * depth * 5
        coefs, rest = rest[:n_coef], rest[n_coef:]
        weights, momenta, base = rest[:depth], rest[depth : 2 * depth], rest[2 * depth :]
        B, H, T, D = q.shape
        shapes = [(H, *w.shape[-2:]) for w in weights]
        work_w = [_buffer(w, s, B, dtype, q.device) for w, s in zip(weights, shapes, strict=True)]
        work_m = [_buffer(m, s, B, dtype, q.device) for m, s in zip(momenta, shapes, strict=True)]
        base = [_buffer(b, s, B, dtype, q.device) for b, s in zip(base, shapes, strict=False)]
        y = torch.empty(B, H, T, D, dtype=q.dtype, device=q.device)
        ckpts, out_base = [], []
        for name, t0, t_len, csz, layer_coefs in _launches(cfg, T, coefs):
            ckpt = []
            if cfg["save"]:
                n_chunks = -(-t_len // csz)
                pairs = [t for wm in zip(work_w, work_m, strict=True) for t in wm]  # W1, S1, W2, S2
                ckpt = [t.new_empty(B * H, n_chunks, *t.shape[1:]) for t in pairs]
            if name == "body" and cfg["ends_mid_chunk"]:
                out_base = [torch.empty_like(w) for w in work_w]
            span = slice(t0, t0 + t_len)
            q_, k_, v_, y_ = (t[:, :, span] for t in (q, k, v, y))
            _launch_forward(kern, cfg, B * H, H, q_, k_, v_, y_, layer_coefs, work_w, work_m,
                            base if name == "head" else [], ckpt, out_base if name == "body" else [],
                            t_len, csz)  # fmt: skip
            ckpts.append(ckpt)
        ctx.cfg = cfg
        ctx.meta = (q.shape, q.dtype, k.dtype, v.dtype, shapes, [w.dim() for w in weights],
                    [m is not None for m in momenta], [len(c) for c in ckpts])  # fmt: skip
        ctx.save_for_backward(q, k, v, *coefs, *base, *(t for c in ckpts for t in c))
        return (y, *(w.view(B, H, *w.shape[1:]) for w in (*work_w, *work_m, *out_base)))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor | None, *d_state: Tensor | None):
        kern = _kernels()
        cfg = ctx.cfg
        depth, dtype = cfg["depth"], cfg["dtype"]
        (B, H, T, D), q_dtype, k_dtype, v_dtype, shapes, w_dims, has_m, n_ckpt = ctx.meta
        n_coef = 2 * depth * 5
        q, k, v, *saved = ctx.saved_tensors
        coefs, saved = saved[:n_coef], saved[n_coef:]
        n_base = depth if cfg["head_len"] else 0
        base, saved = saved[:n_base], saved[n_base:]
        ckpts = []
        for n in n_ckpt:
            ckpts.append(saved[:n])
            saved = saved[n:]
        device = q.device

        def buffer(g: Tensor | None, shape) -> Tensor:
            buf = torch.zeros(B * H, *shape[1:], dtype=dtype, device=device)
            if g is not None:
                buf.view(B, *shape).copy_(g)
            return buf

        # dL/d(memory), carried in place from the call's end to its start by the launches in reverse
        lam_w = [buffer(g, s) for g, s in zip(d_state[:depth], shapes, strict=True)]
        lam_m = [buffer(g, s) for g, s in zip(d_state[depth : 2 * depth], shapes, strict=True)]
        d_out_base = d_state[2 * depth :]
        dy = torch.zeros(B, H, T, D, dtype=dtype, device=device) if dy is None else dy.contiguous()
        dq, dk, dv = (torch.empty(B, H, T, D, dtype=dtype, device=device) for _ in range(3))
        d_coefs: list[Tensor | None] = [None] * n_coef
        d_base = [torch.zeros_like(b) for b in base]
        launches = _launches(cfg, T, coefs)
        for idx in reversed(range(len(launches))):
            name, t0, t_len, csz, layer_coefs = launches[idx]
            grads = [torch.empty_like(t) for lc in layer_coefs for t in lc]
            first = 0 if name == "head" else 5 * depth
            d_coefs[first : first + len(grads)] = grads
            d_ob = []
            if name == "body" and cfg["ends_mid_chunk"] and any(g is not None for g in d_out_base):
                d_ob = [buffer(g, s) for g, s in zip(d_out_base, shapes, strict=True)]
            span = slice(t0, t0 + t_len)
            tensors = [t[:, :, span] for t in (q, k, v, dy, dq, dk, dv)]
            _launch_backward(kern, cfg, B * H, H, tensors, layer_coefs, grads, ckpts[idx],
                             base if name == "head" else [], lam_w, lam_m,
                             d_base if name == "head" else [], d_ob, t_len, csz)  # fmt: skip
        # initial weights [H, d_out, d_in] were broadcast over the batch: their gradient sums over it
        d_w = [lam.view(B, *s).sum(0) if dim == 3 else lam.view(B, *s)
               for lam, s, dim in zip(lam_w, shapes, w_dims, strict=True)]  # fmt: skip
        d_m = [lam.view(B, *s) if keep else None for lam, s, keep in zip(lam_m, shapes, has_m, strict=True)]
        d_b = [d.view(B, *s) for d, s in zip(d_base, shapes[:n_base], strict=True)]
        return (None, dq.to(q_dtype), dk.to(k_dtype), dv.to(v_dtype), *d_coefs, *d_w, *d_m, *d_b)


def _buffer(t: Tensor | None, shape: tuple[int, ...], batch: int, dtype: torch.dtype, device) -> Tensor:
    """A fresh [batch * H, d_out, d_in] copy of a state tensor ([B, H, ...], or [H, ...] broadcast over the
    batch; None for zeros), which the kernels update in place."""
    if t is None:
        return torch.zeros(batch * shape[0], *shape[1:], dtype=dtype, device=device)
    buf = torch.empty(batch * shape[0], *shape[1:], dtype=dtype, device=device)
    buf.view(batch, *shape).copy_(t)
    return buf


def _launches(cfg: dict, T: int, coefs) -> list[tuple]:
    """(name, first token, tokens, chunk size, per layer the 5 coefficient tensors) of each launch."""
    depth, head_len, size = cfg["depth"], cfg["head_len"], cfg["chunk_size"]
    per_launch = [coefs[i * 5 * depth : (i + 1) * 5 * depth] for i in range(2)]
    layers = [[lc[j * 5 : (j + 1) * 5] for j in range(depth)] for lc in per_launch]
    out = []
    if head_len:
        out.append(("head", 0, head_len, head_len, layers[0]))
    if T > head_len:
        out.append(("body", head_len, T - head_len, size, layers[1]))
    return out


def _launch(kernel, n_programs: int):
    """kernel[grid] inside a profiler mark (bench.measure.launches counts a marked launch as one dispatch,
    whatever the interpreter does inside it on the CPU)."""
    launcher = kernel[(n_programs,)]

    def run(*args, **kwargs):
        with torch.profiler.record_function(f"triton::{kernel.fn.__name__}"):
            return launcher(*args, **kwargs)

    return run


def _launch_forward(kern, cfg, BH, H, q, k, v, y, layer_coefs, work_w, work_m, base, ckpt, out_base,
                    t_len, csz):  # fmt: skip
    D, depth = q.shape[-1], cfg["depth"]
    dummy = work_w[0]
    common = dict(ACT=cfg["act"], NORM=cfg["norm"], RESIDUAL=cfg["residual"], HAS_BASE=bool(base),
                  SAVE=bool(ckpt), WRITE_BASE=bool(out_base), PRECISION=cfg["precision"])  # fmt: skip
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(y)[:3])
    if depth == 1:
        conf = launch_config(cfg["chunk_size"], D, D)
        _launch(kern.titans_fwd_d1_kernel, BH)(
            q, k, v, y, *strides, *layer_coefs[0], work_w[0], work_m[0],
            base[0] if base else dummy, *(ckpt or [dummy, dummy]), out_base[0] if out_base else dummy,
            H, t_len, csz, D, LN_EPS, BLOCK_N=conf["BLOCK_N"], BLOCK_D=conf["BLOCK_D"],
            num_warps=conf["num_warps"], num_stages=1, **common,
        )  # fmt: skip
        return
    hidden = work_w[0].shape[1]
    conf = launch_config(cfg["chunk_size"], D, hidden)
    _launch(kern.titans_fwd_d2_kernel, BH)(
        q, k, v, y, *strides, *layer_coefs[0], *layer_coefs[1], work_w[0], work_m[0], work_w[1], work_m[1],
        *(base or [dummy, dummy]), *(ckpt or [dummy] * 4), *(out_base or [dummy, dummy]),
        H, t_len, csz, D, hidden, LN_EPS, BLOCK_N=conf["BLOCK_N"], BLOCK_D=conf["BLOCK_D"],
        BLOCK_H=conf["BLOCK_H"], num_warps=conf["num_warps"], num_stages=1, **common,
    )  # fmt: skip


def _launch_backward(kern, cfg, BH, H, tensors, layer_coefs, grads, ckpt, base, lam_w, lam_m, d_base, d_ob,
                     t_len, csz):  # fmt: skip
    q, k, v, dy, dq, dk, dv = tensors
    D, depth = q.shape[-1], cfg["depth"]
    dummy = lam_w[0]
    common = dict(ACT=cfg["act"], NORM=cfg["norm"], RESIDUAL=cfg["residual"], HAS_BASE=bool(base),
                  ADD_BASE_GRAD=bool(d_ob), PRECISION=cfg["precision"])  # fmt: skip
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(dq)[:3])
    if depth == 1:
        conf = launch_config(cfg["chunk_size"], D, D)
        _launch(kern.titans_bwd_d1_kernel, BH)(
            q, k, v, dy, dq, dk, dv, *strides, *layer_coefs[0], *grads, *ckpt,
            base[0] if base else dummy, lam_w[0], lam_m[0], d_base[0] if d_base else dummy,
            d_ob[0] if d_ob else dummy, H, t_len, csz, D, LN_EPS, BLOCK_N=conf["BLOCK_N"],
            BLOCK_D=conf["BLOCK_D"], num_warps=conf["num_warps"], num_stages=1, **common,
        )  # fmt: skip
        return
    hidden = lam_w[0].shape[1]
    conf = launch_config(cfg["chunk_size"], D, hidden)
    scratch = torch.empty(BH, conf["BLOCK_N"], hidden, dtype=lam_w[0].dtype, device=q.device)
    _launch(kern.titans_bwd_d2_kernel, BH)(
        q, k, v, dy, dq, dk, dv, *strides, *layer_coefs[0], *layer_coefs[1], *grads,
        *ckpt, *(base or [dummy, dummy]), lam_w[0], lam_m[0], lam_w[1], lam_m[1],
        *(d_base or [dummy, dummy]), *(d_ob or [dummy, dummy]), scratch,
        H, t_len, csz, D, hidden, LN_EPS, BLOCK_N=conf["BLOCK_N"], BLOCK_D=conf["BLOCK_D"],
        BLOCK_H=conf["BLOCK_H"], num_warps=conf["num_warps"], num_stages=1, **common,
    )  # fmt: skip


def triton_chunk_titans_memory(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    eta: Tensor,
    alpha: Tensor,
    params: tuple[Tensor, ...],
    chunk_size: int = 16,
    activation: str = "gelu",
    residual: bool = True,
    state: MemoryState | None = None,
    norm: bool = False,
    norm_weight: tuple[Tensor, ...] | Tensor | None = None,
    norm_bias: tuple[Tensor, ...] | Tensor | None = None,
    forget_to_init: bool = False,
) -> tuple[Tensor, MemoryState]:
    """Titans memory by Triton kernels: same contract and results as chunk_titans_memory, for the memory
    the kernels implement (gates per head, no LayerNorm gain or bias, forgetting by decay; the model
    refuses this backend for any other, by name).

    Args:
        q: [B, H, T, D] queries, read from the memory after each token's update.
        k: [B, H, T, D] keys the memory is written with.
        v: [B, H, T, D] values the memory learns to map the keys to.
        theta: [B, H, T] inner learning rate per token (the step size of the surprise).
        eta: [B, H, T] momentum decay per token (past surprise kept).
        alpha: [B, H, T] forgetting gate per token (weight decay of the memory).
        params: per memory layer [H, d_out, d_in], the memory's initial weights; 1 or 2 layers.
        chunk_size: tokens per chunk; inside a chunk every gradient is taken at the chunk-base weights.
        activation: "gelu" or "silu", between the memory's layers.
        norm_weight, norm_bias, forget_to_init: as chunk_titans_memory's; the kernels implement neither
            (NotImplementedError when given).
        residual: M(x) = x + MLP(x) when True, MLP(x) otherwise.
        state: a MemoryState to continue from (None: the initial weights, zero momentum).
        norm: M(x) = x + LN(MLP(x)), the LayerNorm (no affine parameters) on the last layer's output.

    Returns:
        y: [B, H, T, D] retrievals M_t(q_t), in the dtype of q.
        state: the MemoryState after the last token, to continue the sequence exactly.
    """
    get_activation(activation)  # validates the name
    if norm_weight is not None or norm_bias is not None or forget_to_init:
        raise NotImplementedError(
            "the Triton kernels implement the memory LayerNorm without gain and bias, and forgetting by decay"
        )
    if not 1 <= len(params) <= MAX_DEPTH:
        raise ValueError(
            f"the Triton kernels hold memories of depth 1 or {MAX_DEPTH}, not {len(params)}; "
            "use chunk_titans_memory"
        )
    problem = triton_problem()
    if problem is None and q.device.type != "cuda" and not interpreting():
        problem = f"the Triton kernels run on CUDA tensors (or any under TRITON_INTERPRET=1), not {q.device}"
    if problem is not None:
        raise RuntimeError(problem)
    B, H, T, D = q.shape
    dtype = compute_dtype(q.dtype, params[0].dtype)
    if T == 0:
        return q.new_zeros(B, H, 0, D), state or initial_state(params, B, dtype)
    pos = 0 if state is None else state.pos
    head_len = min(T, chunk_size - pos) if pos > 0 else 0
    end_pos = (pos + T) % chunk_size
    depth = len(params)
    cfg = dict(depth=depth, act=ACT_CODES[activation], norm=norm, residual=residual, chunk_size=chunk_size,
               head_len=head_len, dtype=dtype, precision=_precision(dtype),
               ends_mid_chunk=end_pos > 0 and T > head_len)  # fmt: skip
    # a sequence's start: the initial weights broadcast over the batch by the kernels' buffers, no momentum
    weights = tuple(params) if state is None else tuple(state.weights)
    momenta = (None,) * depth if state is None else tuple(state.momentum)
    base = tuple(state.base) if head_len else ()
    inputs = (q, k, v, theta, eta, alpha, *weights, *(m for m in momenta if m is not None), *base)
    # the chunks' starting memory is kept only for a backward
    cfg["save"] = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    with torch.autocast(q.device.type, enabled=False):
        gates = [(g if g.dtype == dtype else g.to(dtype)).reshape(B * H, T) for g in (theta, eta, alpha)]
        coefs: list[Tensor | None] = [None] * (2 * depth * 5)
        for i, (lo, hi, size) in enumerate(((0, head_len, head_len), (head_len, T, chunk_size))):
            if hi > lo:
                launch = _coefficients(*(g[:, lo:hi] for g in gates), size)
                # today one set of gates drives every layer; per-layer gates would pass a set each
                coefs[i * 5 * depth : (i + 1) * 5 * depth] = launch * depth
        y, *outs = TritonChunkMemory.apply(cfg, q, k, v, *coefs, *weights, *momenta, *base)
    weights, momentum = tuple(outs[:depth]), tuple(outs[depth : 2 * depth])
    if end_pos == 0:
        new_base = weights
    elif cfg["ends_mid_chunk"]:
        new_base = tuple(outs[2 * depth :])
    else:  # the call ended inside the chunk an earlier call began
        new_base = base
    return y, MemoryState(weights, momentum, new_base, end_pos)
