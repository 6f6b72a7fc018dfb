"""Titans memory as Triton kernels: chunk_titans_memory's contract and results in one kernel launch per call.

Why a file of its own rather than a backend argument of chunk_titans_memory: the two share the closed form
(chunk.py derives it) and the recurrences of the gates' coefficients (channel_coefficients.py, which
triton_gates.py runs inside the kernels), but nothing of how they run. chunk.py is PyTorch operators in a
Python loop over chunks; this is a kernel that loops over the chunks itself, with a hand-written backward
of its own. Keeping them apart keeps each readable, and a model picks one through its backend
(model.MEMORY_BACKENDS) as it picks the per-token reference.

The whole contract: gates per head, per memory layer or per input channel of each layer (mixed too), the
memory LayerNorm's gain and bias, forgetting toward the initial memory, any initial state.

What runs per call (triton_kernels.py has the kernels and their tiling):
- PyTorch, a few operators whatever the length: each layer's gates stacked into one [3, B, H, T, C]
  tensor (a gate of one value per head or layer broadcast over the channels, not copied), and a copy of
  the state into working buffers;
- one kernel launch, one program per (batch, head), looping over the chunks in order and forming each
  chunk's coefficients from the gates inside it (triton_gates.py). A call that continues a chunk an earlier
  call began (state.pos > 0) takes a second launch for that chunk's rest, whose keys meet the chunk's base
  weights rather than the current ones.
The backward is as many launches, over the chunks in reverse, from each chunk's starting memory, which the
forward saves when a gradient is wanted; everything inside a chunk is recomputed, the gradients w.r.t. the
gates included.

Runs on CUDA, or on the CPU through Triton's interpreter (TRITON_INTERPRET=1 when the op is called), which
the tests use. Memory depth 1 or 2 (depth 3 and more: chunk_titans_memory). A call computes in float32
(float64 for float64 inputs), its products in tf32 only when torch.backends.cuda.matmul.allow_tf32 is on.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from models.modules.dtypes import compute_dtype

from .naive import GATE_NAMES, LN_EPS, Gate, MemoryState, get_activation, initial_state, layer_gates

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
        # the kernels' jit helpers first: the kernels bind them when they are imported
        for name in ("triton_parts", "triton_gates", "triton_kernels"):
            module = importlib.reload(importlib.import_module(f"models.titans.{name}"))
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


# A register bound for the depth-1 backward: without it, ptxas chose 32 or 128 registers for some flag
# combinations (sm_90, D 64) and spilled 2-4 times as much as at 255; with it, the depth-2 kernels spilled
# more, so they go without.
D1_BACKWARD_MAXNREG = 255


def _options(conf: dict, maxnreg: int | None = None) -> dict:
    """A launch's compile options from launch_config's."""
    return dict(num_warps=conf["num_warps"], maxnreg=maxnreg, num_stages=1)


def _precision(dtype: torch.dtype) -> str:
    """tf32 for float32 products exactly when PyTorch's own float32 matmuls use it."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _strides(t: Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


class TritonChunkMemory(torch.autograd.Function):
    """The kernels over one call, with their backward.

    Inputs: cfg (a dict: depth, activation code, norm, residual, to_init, chunk size, head_len (the rest of
    a chunk begun earlier, 0 if none), ends_mid_chunk, save (keep each chunk's starting memory for a
    backward), precision, dtype); q, k, v [B, H, T, D]; per memory layer its gates [3, B, H, T, d_in]
    (theta, eta, alpha; broadcast views where a gate is shared by the channels); the LN's gain and bias
    [H, D]; per layer the initial memory M0 [H, d_out, d_in] toward which it forgets (None unless
    to_init); per layer the weights, [B, H, d_out, d_in] or, for a sequence's start, the initial weights
    [H, d_out, d_in]; per layer the momentum, [B, H, d_out, d_in] or None for zero; then, when head_len > 0,
    per layer the chunk's base. Outputs: y [B, H, T, D], per layer the weights and the momentum after the
    call, and, when the body's last chunk is partial, per layer its starting weights (the base that the
    next call continues from).
    """

    @staticmethod
    def forward(ctx, cfg: dict, q: Tensor, k: Tensor, v: Tensor, *rest: Tensor | None):
        kern = _kernels()
        depth, dtype = cfg["depth"], cfg["dtype"]
        gates, (gain, bias), rest = rest[:depth], rest[depth : depth + 2], rest[depth + 2 :]
        m0s, rest = rest[:depth], rest[depth:]
        weights, momenta, base = rest[:depth], rest[depth : 2 * depth], rest[2 * depth :]
        B, H, T, D = q.shape
        shapes = [(H, *w.shape[-2:]) for w in weights]
        work_w = [_buffer(w, s, B, dtype, q.device) for w, s in zip(weights, shapes, strict=True)]
        work_m = [_buffer(m, s, B, dtype, q.device) for m, s in zip(momenta, shapes, strict=True)]
        base = [_buffer(b, s, B, dtype, q.device) for b, s in zip(base, shapes, strict=False)]
        y = torch.empty(B, H, T, D, dtype=q.dtype, device=q.device)
        ckpts, out_base = [], []
        for name, t0, t_len, csz in _launches(cfg, T):
            ckpt = []
            if cfg["save"]:
                n_chunks = -(-t_len // csz)
                pairs = [t for wm in zip(work_w, work_m, strict=True) for t in wm]  # W1, S1, W2, S2
                ckpt = [t.new_empty(B * H, n_chunks, *t.shape[1:]) for t in pairs]
            if name == "body" and cfg["ends_mid_chunk"]:
                out_base = [torch.empty_like(w) for w in work_w]
            span = slice(t0, t0 + t_len)
            q_, k_, v_, y_ = (t[:, :, span] for t in (q, k, v, y))
            gates_ = [g[:, :, :, span] for g in gates]
            _launch_forward(kern, cfg, B * H, H, q_, k_, v_, y_, gates_, gain, bias, m0s, work_w, work_m,
                            base if name == "head" else [], ckpt, out_base if name == "body" else [],
                            t_len, csz)  # fmt: skip
            ckpts.append(ckpt)
        ctx.cfg = cfg
        ctx.meta = (q.shape, q.dtype, k.dtype, v.dtype, shapes, [w.dim() for w in weights],
                    [m is not None for m in momenta], [len(c) for c in ckpts])  # fmt: skip
        ctx.save_for_backward(q, k, v, *gates, gain, bias, *(m for m in m0s if m is not None), *base,
                              *(t for c in ckpts for t in c))  # fmt: skip
        return (y, *(w.view(B, H, *w.shape[1:]) for w in (*work_w, *work_m, *out_base)))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor | None, *d_state: Tensor | None):
        kern = _kernels()
        cfg = ctx.cfg
        depth, dtype = cfg["depth"], cfg["dtype"]
        (B, H, T, D), q_dtype, k_dtype, v_dtype, shapes, w_dims, has_m, n_ckpt = ctx.meta
        q, k, v, *saved = ctx.saved_tensors
        gates, (gain, bias), saved = saved[:depth], saved[depth : depth + 2], saved[depth + 2 :]
        n_m0 = depth if cfg["to_init"] else 0
        m0s, saved = saved[:n_m0] or [None] * depth, saved[n_m0:]
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
        # every token and channel of the gates is written by the launch that holds it
        d_gates = [torch.empty(g.shape, dtype=dtype, device=device) for g in gates]
        d_norm = torch.zeros(2, B * H, D, dtype=dtype, device=device)  # gain, bias: summed per program
        d_m0 = [buffer(None, s) if cfg["to_init"] else None for s in shapes]
        d_base = [torch.zeros_like(b) for b in base]
        launches = _launches(cfg, T)
        for idx in reversed(range(len(launches))):
            name, t0, t_len, csz = launches[idx]
            d_ob = []
            if name == "body" and cfg["ends_mid_chunk"] and any(g is not None for g in d_out_base):
                d_ob = [buffer(g, s) for g, s in zip(d_out_base, shapes, strict=True)]
            span = slice(t0, t0 + t_len)
            tensors = [t[:, :, span] for t in (q, k, v, dy, dq, dk, dv)]
            gates_ = [(g[:, :, :, span], dg[:, :, :, span]) for g, dg in zip(gates, d_gates, strict=True)]
            _launch_backward(kern, cfg, B * H, H, tensors, gates_, gain, bias, m0s, d_norm, d_m0, ckpts[idx],
                             base if name == "head" else [], lam_w, lam_m,
                             d_base if name == "head" else [], d_ob, t_len, csz)  # fmt: skip
        # initial weights [H, d_out, d_in] were broadcast over the batch: their gradient sums over it
        d_w = [lam.view(B, *s).sum(0) if dim == 3 else lam.view(B, *s)
               for lam, s, dim in zip(lam_w, shapes, w_dims, strict=True)]  # fmt: skip
        d_m = [lam.view(B, *s) if keep else None for lam, s, keep in zip(lam_m, shapes, has_m, strict=True)]
        d_b = [d.view(B, *s) for d, s in zip(d_base, shapes[:n_base], strict=True)]
        d_gain, d_bias = d_norm.view(2, B, H, D).sum(1)
        d_init = [None if d is None else d.view(B, *s).sum(0) for d, s in zip(d_m0, shapes, strict=True)]
        return (None, dq.to(q_dtype), dk.to(k_dtype), dv.to(v_dtype), *d_gates, d_gain, d_bias, *d_init,
                *d_w, *d_m, *d_b)  # fmt: skip


def _buffer(t: Tensor | None, shape: tuple[int, ...], batch: int, dtype: torch.dtype, device) -> Tensor:
    """A fresh [batch * H, d_out, d_in] copy of a state tensor ([B, H, ...], or [H, ...] broadcast over the
    batch; None for zeros), which the kernels update in place."""
    if t is None:
        return torch.zeros(batch * shape[0], *shape[1:], dtype=dtype, device=device)
    buf = torch.empty(batch * shape[0], *shape[1:], dtype=dtype, device=device)
    buf.view(batch, *shape).copy_(t)
    return buf


def _launches(cfg: dict, T: int) -> list[tuple]:
    """(name, first token, tokens, chunk size) of each launch."""
    head_len, size = cfg["head_len"], cfg["chunk_size"]
    out = []
    if head_len:
        out.append(("head", 0, head_len, head_len))
    if T > head_len:
        out.append(("body", head_len, T - head_len, size))
    return out


def _launch(kernel, n_programs: int):
    """kernel[grid] inside a profiler mark (bench.measure.launches counts a marked launch as one dispatch,
    whatever the interpreter does inside it on the CPU)."""
    launcher = kernel[(n_programs,)]

    def run(*args, **kwargs):
        with torch.profiler.record_function(f"triton::{kernel.fn.__name__}"):
            return launcher(*args, **kwargs)

    return run


def _gate_args(gates) -> list:
    """Per layer its gates tensor [3, B, H, T, C] and its five strides."""
    return [a for g in gates for a in (g, *_strides(g))]


def _coef_scratch(BH: int, conf: dict, depth: int, dtype, device) -> Tensor:
    """The gates' recurrences' scratch of the backward (triton_gates.py): per program the rows of the first
    layer's recurrences and chains, then of the second layer's tile."""
    width = conf["BLOCK_D"] + (conf["BLOCK_H"] if depth == 2 else 0)
    return torch.empty(BH, (2 * conf["BLOCK_N"] + 3) * conf["BLOCK_N"] * width, dtype=dtype, device=device)


def _launch_forward(kern, cfg, BH, H, q, k, v, y, gates, gain, bias, m0s, work_w, work_m, base, ckpt,
                    out_base, t_len, csz):  # fmt: skip
    D, depth = q.shape[-1], cfg["depth"]
    dummy = work_w[0]
    common = dict(ACT=cfg["act"], NORM=cfg["norm"], RESIDUAL=cfg["residual"], HAS_BASE=bool(base),
                  SAVE=bool(ckpt), WRITE_BASE=bool(out_base), TO_INIT=cfg["to_init"],
                  PRECISION=cfg["precision"])  # fmt: skip
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(y)[:3])
    m0s = [dummy if m is None else m for m in m0s]
    if depth == 1:
        conf = launch_config(cfg["chunk_size"], D, D)
        _launch(kern.titans_fwd_d1_kernel, BH)(
            q, k, v, y, *strides, *_gate_args(gates), gain, bias, m0s[0], work_w[0], work_m[0],
            base[0] if base else dummy, *(ckpt or [dummy, dummy]), out_base[0] if out_base else dummy,
            H, t_len, csz, D, LN_EPS, BLOCK_N=conf["BLOCK_N"], BLOCK_D=conf["BLOCK_D"],
            **_options(conf), **common,
        )  # fmt: skip
        return
    hidden = work_w[0].shape[1]
    conf = launch_config(cfg["chunk_size"], D, hidden)
    _launch(kern.titans_fwd_d2_kernel, BH)(
        q, k, v, y, *strides, *_gate_args(gates), gain, bias, *m0s, work_w[0], work_m[0], work_w[1],
        work_m[1], *(base or [dummy, dummy]), *(ckpt or [dummy] * 4), *(out_base or [dummy, dummy]),
        H, t_len, csz, D, hidden, LN_EPS, BLOCK_N=conf["BLOCK_N"], BLOCK_D=conf["BLOCK_D"],
        BLOCK_H=conf["BLOCK_H"], **_options(conf), **common,
    )  # fmt: skip


def _launch_backward(kern, cfg, BH, H, tensors, gates, gain, bias, m0s, d_norm, d_m0, ckpt, base, lam_w,
                     lam_m, d_base, d_ob, t_len, csz):  # fmt: skip
    q, k, v, dy, dq, dk, dv = tensors
    D, depth = q.shape[-1], cfg["depth"]
    dummy = lam_w[0]
    common = dict(ACT=cfg["act"], NORM=cfg["norm"], RESIDUAL=cfg["residual"], HAS_BASE=bool(base),
                  ADD_BASE_GRAD=bool(d_ob), TO_INIT=cfg["to_init"], PRECISION=cfg["precision"])  # fmt: skip
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(dq)[:3])
    gate_args = _gate_args([g for g, _ in gates]) + _gate_args([dg for _, dg in gates])
    m0s = [dummy if m is None else m for m in m0s]
    d_m0 = [dummy if d is None else d for d in d_m0]
    if depth == 1:
        conf = launch_config(cfg["chunk_size"], D, D)
        cscr = _coef_scratch(BH, conf, 1, dummy.dtype, q.device)
        _launch(kern.titans_bwd_d1_kernel, BH)(
            q, k, v, dy, dq, dk, dv, *strides, *gate_args, gain, bias, m0s[0], d_norm[0], d_norm[1], d_m0[0],
            *ckpt, base[0] if base else dummy, lam_w[0], lam_m[0], d_base[0] if d_base else dummy,
            d_ob[0] if d_ob else dummy, cscr, H, t_len, csz, D, LN_EPS, BLOCK_N=conf["BLOCK_N"],
            BLOCK_D=conf["BLOCK_D"], **_options(conf, D1_BACKWARD_MAXNREG), **common,
        )  # fmt: skip
        return
    hidden = lam_w[0].shape[1]
    conf = launch_config(cfg["chunk_size"], D, hidden)
    scratch = torch.empty(BH, conf["BLOCK_N"], hidden, dtype=lam_w[0].dtype, device=q.device)
    cscr = _coef_scratch(BH, conf, 2, dummy.dtype, q.device)
    _launch(kern.titans_bwd_d2_kernel, BH)(
        q, k, v, dy, dq, dk, dv, *strides, *gate_args, gain, bias, *m0s, d_norm[0], d_norm[1], *d_m0,
        *ckpt, *(base or [dummy, dummy]), lam_w[0], lam_m[0], lam_w[1], lam_m[1],
        *(d_base or [dummy, dummy]), *(d_ob or [dummy, dummy]), scratch, cscr,
        H, t_len, csz, D, hidden, LN_EPS, BLOCK_N=conf["BLOCK_N"], BLOCK_D=conf["BLOCK_D"],
        BLOCK_H=conf["BLOCK_H"], **_options(conf), **common,
    )  # fmt: skip


def _layer_gates(gates: list[list[Tensor]], d_ins: list[int], dtype: torch.dtype) -> list[Tensor]:
    """Per memory layer its gates as one tensor [3, B, H, T, d_in] (theta, eta, alpha), in dtype. Gates of
    one value per head or layer are stacked as [3, B, H, T, 1] and broadcast over the channels (stride 0:
    the kernels read one value for every channel, and autograd sums the channels' gradients); a layer with
    a gate per channel gets the others expanded beside it. Layers that share their gates share the stack."""
    stacks: dict[tuple[int, ...], Tensor] = {}
    out = []
    for i, d in enumerate(d_ins):
        layer = [g[i] for g in gates]
        key = tuple(map(id, layer))
        if key not in stacks:
            width = max(t.shape[-1] for t in layer)
            stacks[key] = torch.stack([t.to(dtype).expand(*t.shape[:-1], width) for t in layer])
        out.append(stacks[key].expand(*stacks[key].shape[:-1], d))
    return out


def triton_chunk_titans_memory(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Gate,
    eta: Gate,
    alpha: Gate,
    params: tuple[Tensor, ...],
    chunk_size: int = 16,
    activation: str = "gelu",
    residual: bool = True,
    state: MemoryState | None = None,
    norm: bool = False,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    forget_to_init: bool = False,
) -> tuple[Tensor, MemoryState]:
    """Titans memory by Triton kernels: same contract and results as chunk_titans_memory (memories of depth
    1 or 2).

    Args:
        q: [B, H, T, D] queries, read from the memory after each token's update.
        k: [B, H, T, D] keys the memory is written with.
        v: [B, H, T, D] values the memory learns to map the keys to.
        theta: inner learning rate per token (the step size of the surprise): [B, H, T], shared by the
            memory layers, or one tensor per layer, each [B, H, T] or [B, H, T, d_in] (per input channel).
        eta: momentum decay per token (past surprise kept), shaped as theta.
        alpha: forgetting gate per token (weight decay of the memory), shaped as theta.
        params: per memory layer [H, d_out, d_in], the memory's initial weights M_0; 1 or 2 layers.
        chunk_size: tokens per chunk; inside a chunk every gradient is taken at the chunk-base weights.
        activation: "gelu" or "silu", between the memory's layers.
        residual: M(x) = x + MLP(x) when True, MLP(x) otherwise.
        state: a MemoryState to continue from (None: the initial weights, zero momentum).
        norm: M(x) = x + LN(MLP(x)), the LayerNorm on the last layer's output.
        norm_weight: [H, D] the LayerNorm's gain per head, or None (no gain); only with ``norm``.
        norm_bias: [H, D] the LayerNorm's bias per head, or None; only with ``norm``.
        forget_to_init: forget toward M_0 (M_t - M_0 = (1 - alpha_t)(M_{t-1} - M_0) + S_t), not toward 0.

    Returns:
        y: [B, H, T, D] retrievals M_t(q_t), in the dtype of q.
        state: the MemoryState after the last token, to continue the sequence exactly.
    """
    get_activation(activation)  # validates the name
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
    d_ins = [p.shape[-1] for p in params]
    per_layer = [layer_gates(g, d_ins, name) for g, name in zip((theta, eta, alpha), GATE_NAMES, strict=True)]
    if T == 0:
        return q.new_zeros(B, H, 0, D), state or initial_state(params, B, dtype)
    pos = 0 if state is None else state.pos
    head_len = min(T, chunk_size - pos) if pos > 0 else 0
    end_pos = (pos + T) % chunk_size
    depth = len(params)
    cfg = dict(depth=depth, act=ACT_CODES[activation], norm=norm, residual=residual, to_init=forget_to_init,
               chunk_size=chunk_size, head_len=head_len, dtype=dtype, precision=_precision(dtype),
               ends_mid_chunk=end_pos > 0 and T > head_len)  # fmt: skip
    # a sequence's start: the initial weights broadcast over the batch by the kernels' buffers, no momentum
    weights = tuple(params) if state is None else tuple(state.weights)
    momenta = (None,) * depth if state is None else tuple(state.momentum)
    base = tuple(state.base) if head_len else ()
    with torch.autocast(q.device.type, enabled=False):
        gates = _layer_gates(per_layer, d_ins, dtype)
        # the LN's gain and bias, 1 and 0 where absent (or without the LN: the kernels then read neither)
        norm_params = []
        for p, fill in ((norm_weight, 1.0), (norm_bias, 0.0)):
            given = norm and p is not None
            norm_params.append(p.to(dtype).contiguous() if given else q.new_full((H, D), fill, dtype=dtype))
        m0s = tuple(p.to(dtype).contiguous() for p in params) if forget_to_init else (None,) * depth
        inputs = (q, k, v, *gates, *norm_params, *weights, *(m for m in momenta if m is not None), *base,
                  *(m for m in m0s if m is not None))  # fmt: skip
        # the chunks' starting memory is kept only for a backward
        cfg["save"] = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        args = (*gates, *norm_params, *m0s, *weights, *momenta, *base)
        y, *outs = TritonChunkMemory.apply(cfg, q, k, v, *args)
    weights, momentum = tuple(outs[:depth]), tuple(outs[depth : 2 * depth])
    if end_pos == 0:
        new_base = weights
    elif cfg["ends_mid_chunk"]:
        new_base = tuple(outs[2 * depth :])
    else:  # the call ended inside the chunk an earlier call began
        new_base = base
    return y, MemoryState(weights, momentum, new_base, end_pos)
