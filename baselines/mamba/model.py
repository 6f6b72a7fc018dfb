"""Mamba (Gu & Dao 2023) and Mamba2 (Dao & Gu 2024) as mixers in the shared language-model shell.

- ``mamba``: in_proj -> (x, z); x through a causal depthwise conv and SiLU; x_proj -> (dt, B, C), dt through
  dt_proj; the selective scan with A = -exp(A_log), softplus(dt + dt_bias), the D skip and the SiLU(z) gate;
  out_proj.
- ``mamba2``: in_proj -> (z, xBC, dt); xBC through the conv and SiLU and split into x, B, C; the SSD scan
  with a scalar decay per head, A = -exp(A_log), dt = softplus(dt + dt_bias), the D skip; the gated RMSNorm
  norm(y * SiLU(z)); out_proj.

Backends: "mamba_ssm" runs the field's own layers (CUDA selective scan, Triton SSD kernels); "torch-chunked"
is our pure-PyTorch form (a blocked scan / chunked SSD, fast on the CPU); "torch-recurrent" the per-token
reference. Our mixers name and shape every parameter as mamba_ssm's ``Mamba`` and ``Mamba2`` do, so a
state_dict moves between backends.

Our mixers (both torch backends) support state passing: ``forward_from`` continues from a state (the conv
window and the SSM state, as ``prefill`` returns it) with gradients into it. mamba_ssm's layers do not: its
selective scan takes no initial state (and passes no gradient back from its last one), and Mamba2's fused
kernel takes no conv window. ``trace`` reports by position the state's norm, and the step size and decay
that set how fast the state forgets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import nn

from baselines.mamba.chunk import ssd_chunked
from baselines.mamba.naive import selective_scan_recurrent, selective_state_update, ssd_recurrent, ssd_step
from baselines.mamba.scan import selective_scan
from models.modules.backends import (
    TORCH_BACKENDS,
    UpstreamMixer,
    resolve_backend,
    torch_or_upstream_backends,
    upstream_problem,
)
from models.modules.catalog import ModelFamily
from models.modules.config import ModelConfig
from models.modules.conv import CausalConv1d
from models.modules.dtypes import compute_dtype, dtype_bytes
from models.modules.init import init_projections, inverse_softplus_dt
from models.modules.lm import LanguageModel, Mixer
from models.modules.norm import GatedRMSNorm


@dataclass
class SSMState:
    """Decoding state of one Mamba / Mamba2 mixer: the conv window and the SSM state."""

    conv: torch.Tensor
    ssm: torch.Tensor


# -- FLOPs --------------------------------------------------------------------------------------------------
# Multiply-adds count 2: projections, the conv taps and the recurrence's contractions; elementwise
# activations, gates and norms are left out.


def mamba_flops(d_model: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int) -> float:
    projections = 2.0 * d_model * 2 * d_inner + 2.0 * d_inner * (dt_rank + 2 * d_state)
    projections += 2.0 * dt_rank * d_inner + 2.0 * d_inner * d_model
    scan = 6.0 * d_inner * d_state  # decay the state, write dt B u into it, read it with C
    return projections + 2.0 * d_conv * d_inner + scan


def mamba2_flops(
    d_model: int,
    d_inner: int,
    d_state: int,
    n_groups: int,
    n_heads: int,
    d_conv: int,
    chunk: int,
    seq_len: int,
) -> float:
    conv_dim = d_inner + 2 * n_groups * d_state
    projections = 2.0 * d_model * (d_inner + conv_dim + n_heads) + 2.0 * d_inner * d_model
    c = min(chunk, seq_len)
    head_dim = d_inner // n_heads
    # per head: C.B scores and their weighted sum of x over the chunk, the chunk's state and the state read
    ssd = n_heads * (2.0 * c * (d_state + head_dim) + 4.0 * head_dim * d_state)
    return projections + 2.0 * d_conv * conv_dim + ssd


# -- our pure-PyTorch mixers --------------------------------------------------------------------------------


class Mamba(Mixer):
    """Mamba's mixer in pure PyTorch, with mamba_ssm ``Mamba``'s parameter names and shapes."""

    state_growth = "constant"
    supports_state_passing = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        backend: str = "torch-chunked",
    ):
        super().__init__()
        if backend not in TORCH_BACKENDS:
            raise ValueError(f"Mamba's torch mixer runs {', '.join(TORCH_BACKENDS)}, not {backend!r}")
        self.backend = backend
        self.scan = selective_scan if backend == "torch-chunked" else selective_scan_recurrent
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = CausalConv1d(self.d_inner, d_conv, bias=True, activation="silu")
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # S4D-real init: A[d, n] = -(n + 1) for every channel
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(A.log())
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

        init_projections(self, skip=("dt_proj",))
        with torch.no_grad():
            bound = self.dt_rank**-0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(inverse_softplus_dt(self.d_inner))

    def _ssm_params(self, dtype: torch.dtype):
        wide = compute_dtype(dtype)
        return -self.A_log.to(wide).exp(), self.D.to(wide), self.dt_proj.bias.to(wide)

    def _run(self, x: torch.Tensor, state: SSMState | None) -> tuple[torch.Tensor, SSMState]:
        """The whole mixer on x [B, T, d] from a state (None: the empty one) -> (y [B, T, d], new state)."""
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u, conv_state = self.conv1d(u, None if state is None else state.conv)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # its bias is added inside the scan, in float32, as upstream
        A, D, dt_bias = self._ssm_params(x.dtype)
        y, ssm_state = self.scan(
            u.mT,
            dt.mT,
            A,
            B.mT,
            C.mT,
            D,
            z=z.mT,
            delta_bias=dt_bias,
            delta_softplus=True,
            return_last_state=True,
            initial_state=None if state is None else state.ssm,
        )
        return self.out_proj(y.mT), SSMState(conv_state, ssm_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None)[0]

    def forward_from(self, x: torch.Tensor, state: SSMState | None) -> tuple[torch.Tensor, SSMState]:
        return self._run(x, state)

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, SSMState]:
        return self._run(x, None)

    @torch.no_grad()
    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Diagnostics by position for x [B, T, d], each [B, T] in float32:

        - ``state_norm``: the Frobenius norm of the SSM state [d_inner, d_state] after each token (Mamba has
          no heads: one norm over the whole state; the conv window is not part of it);
        - ``dt``: the step size softplus(dt + dt_bias), averaged over channels;
        - ``decay``: the factor exp(dt A) by which the token multiplies each state entry, averaged over
          channels and state indices (1 keeps the state, 0 erases it).

        The states come from the decoding step, token by token: those ``prefill`` returns, to rounding."""
        u, _ = self.in_proj(x).chunk(2, dim=-1)
        u, _ = self.conv1d(u)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        A, _, dt_bias = self._ssm_params(x.dtype)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight).to(A.dtype) + dt_bias)
        state = self.init_state(x.shape[0], x.device, x.dtype).ssm
        norms, decays = [], []
        for t in range(x.shape[1]):
            _, state = selective_state_update(state, u[:, t], dt[:, t], A, B[:, t], C[:, t])
            norms.append(torch.linalg.matrix_norm(state))
            decays.append(torch.exp(dt[:, t, :, None] * A).mean((-2, -1)))
        trace = {"state_norm": torch.stack(norms, 1), "dt": dt.mean(-1), "decay": torch.stack(decays, 1)}
        return {name: values.float() for name, values in trace.items()}

    def init_state(self, batch_size: int, device, dtype) -> SSMState:
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=compute_dtype(dtype))
        return SSMState(self.conv1d.init_state(batch_size, device, dtype), ssm)

    def step(self, x: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u, conv_state = self.conv1d.step(u, state.conv)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        A, D, dt_bias = self._ssm_params(x.dtype)
        dt = F.linear(dt, self.dt_proj.weight)
        y, ssm_state = selective_state_update(state.ssm, u, dt, A, B, C, D, z, dt_bias, dt_softplus=True)
        return self.out_proj(y), SSMState(conv_state, ssm_state)

    def state_bytes(self, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        conv = (self.d_conv - 1) * self.d_inner * dtype_bytes(dtype)
        ssm = self.d_inner * self.d_state * dtype_bytes(compute_dtype(dtype))
        return batch_size * (conv + ssm)

    def flops_per_token(self, seq_len: int) -> float:
        return mamba_flops(self.d_model, self.d_inner, self.d_state, self.dt_rank, self.d_conv)


class Mamba2(Mixer):
    """Mamba2's mixer in pure PyTorch, with mamba_ssm ``Mamba2``'s parameter names and shapes (its defaults:
    no MLP part, D per head, the gated RMSNorm applied as norm(y * silu(z)) per group, no dt limit)."""

    state_growth = "constant"
    supports_state_passing = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 64,
        backend: str = "torch-chunked",
    ):
        super().__init__()
        if backend not in TORCH_BACKENDS:
            raise ValueError(f"Mamba2's torch mixer runs {', '.join(TORCH_BACKENDS)}, not {backend!r}")
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"expand * d_model = {self.d_inner} is not divisible by headdim {headdim}")
        self.n_heads = self.d_inner // headdim
        if self.n_heads % ngroups:
            raise ValueError(f"{self.n_heads} heads do not split into ngroups = {ngroups} groups")
        self.backend = backend
        chunked = partial(ssd_chunked, chunk_size=chunk_size)
        self.ssd = chunked if backend == "torch-chunked" else ssd_recurrent
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.headdim, self.ngroups, self.chunk_size = headdim, ngroups, chunk_size
        conv_dim = self.d_inner + 2 * ngroups * d_state

        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + self.n_heads, bias=False)  # z, xBC, dt
        self.conv1d = CausalConv1d(conv_dim, d_conv, bias=True, activation="silu")
        self.dt_bias = nn.Parameter(inverse_softplus_dt(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        init_projections(self)

    def _split(self, zxbcdt: torch.Tensor):
        """in_proj's output -> z, xBC (before the conv) and dt (before softplus), on the last dim."""
        return zxbcdt.split([self.d_inner, self.conv1d.in_channels, self.n_heads], dim=-1)

    def _dt(self, dt: torch.Tensor) -> torch.Tensor:
        """in_proj's dt [.., H] -> the step size softplus(dt + dt_bias), in float32 or wider."""
        wide = compute_dtype(dt.dtype)
        return F.softplus(dt.to(wide) + self.dt_bias.to(wide))

    def _ssm_inputs(self, xBC: torch.Tensor, dt: torch.Tensor):
        """After the conv: x [.., H, P] and the SSD's inputs, x * dt and A * dt, both in float32 or wider."""
        wide = compute_dtype(xBC.dtype)
        x, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = x.unflatten(-1, (self.n_heads, self.headdim))
        dt = self._dt(dt)
        A = -self.A_log.to(wide).exp()
        B, C = B.unflatten(-1, (self.ngroups, self.d_state)), C.unflatten(-1, (self.ngroups, self.d_state))
        return x, x.to(wide) * dt[..., None], A * dt, B, C

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y + x.to(y.dtype) * self.D.to(y.dtype)[:, None]  # the D skip, per head
        return self.out_proj(self.norm(y.flatten(-2), z).to(z.dtype))

    def _run(self, u: torch.Tensor, state: SSMState | None) -> tuple[torch.Tensor, SSMState]:
        z, xBC, dt = self._split(self.in_proj(u))
        xBC, conv_state = self.conv1d(xBC, None if state is None else state.conv)
        x, x_dt, A_dt, B, C = self._ssm_inputs(xBC, dt)
        y, ssm_state = self.ssd(x_dt, A_dt, B, C, initial_states=None if state is None else state.ssm)
        return self._output(y, x, z), SSMState(conv_state, ssm_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None)[0]

    def forward_from(self, x: torch.Tensor, state: SSMState | None) -> tuple[torch.Tensor, SSMState]:
        return self._run(x, state)

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, SSMState]:
        return self._run(x, None)

    @torch.no_grad()
    def trace(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Diagnostics by position for u [B, T, d], each [B, T] in float32:

        - ``state_norm``: the Frobenius norm of each head's SSM state [headdim, d_state] after each token,
          summed over heads (the conv window is not part of it);
        - ``dt``: the step size softplus(dt + dt_bias), averaged over heads;
        - ``decay``: the factor exp(dt A) by which the token multiplies a head's state, averaged over heads
          (1 keeps the state, 0 erases it).

        The states come from the decoding step, token by token: those ``prefill`` returns, to rounding."""
        _, xBC, dt = self._split(self.in_proj(u))
        xBC, _ = self.conv1d(xBC)
        _, x_dt, A_dt, B, C = self._ssm_inputs(xBC, dt)
        state = self.init_state(u.shape[0], u.device, u.dtype).ssm
        norms = []
        for t in range(u.shape[1]):
            _, state = ssd_step(state, x_dt[:, t], A_dt[:, t], B[:, t], C[:, t])
            norms.append(torch.linalg.matrix_norm(state).sum(-1))
        trace = {
            "state_norm": torch.stack(norms, 1),
            "dt": self._dt(dt).mean(-1),
            "decay": A_dt.exp().mean(-1),
        }
        return {name: values.float() for name, values in trace.items()}

    def init_state(self, batch_size: int, device, dtype) -> SSMState:
        shape = (batch_size, self.n_heads, self.headdim, self.d_state)
        ssm = torch.zeros(shape, device=device, dtype=compute_dtype(dtype))
        return SSMState(self.conv1d.init_state(batch_size, device, dtype), ssm)

    def step(self, u: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        z, xBC, dt = self._split(self.in_proj(u))
        xBC, conv_state = self.conv1d.step(xBC, state.conv)
        x, x_dt, A_dt, B, C = self._ssm_inputs(xBC, dt)
        y, ssm_state = ssd_step(state.ssm, x_dt, A_dt, B, C)
        return self._output(y, x, z), SSMState(conv_state, ssm_state)

    def state_bytes(self, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        conv = (self.d_conv - 1) * self.conv1d.in_channels * dtype_bytes(dtype)
        ssm = self.n_heads * self.headdim * self.d_state * dtype_bytes(compute_dtype(dtype))
        return batch_size * (conv + ssm)

    def flops_per_token(self, seq_len: int) -> float:
        return mamba2_flops(
            self.d_model,
            self.d_inner,
            self.d_state,
            self.ngroups,
            self.n_heads,
            self.d_conv,
            self.chunk_size,
            seq_len,
        )


# -- mamba_ssm's own layers ---------------------------------------------------------------------------------


class UpstreamMamba(UpstreamMixer):
    """mamba_ssm's ``Mamba`` or ``Mamba2`` layer (built with ``layer_idx=0``), decoding through its own
    inference cache: ``allocate_inference_cache``, a forward with ``inference_params`` for the prompt (the
    parallel kernels, filling the cache in place), then ``step`` per token (also in place)."""

    state_growth = "constant"

    def __init__(self, layer: nn.Module):
        super().__init__(layer, "mamba_ssm")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, SSMState]:
        from mamba_ssm.utils.generation import InferenceParams

        state = self.init_state(x.shape[0], x.device, x.dtype)
        params = InferenceParams(max_seqlen=x.shape[1], max_batch_size=x.shape[0])
        params.key_value_memory_dict[self.layer.layer_idx] = (state.conv, state.ssm)
        return self.layer(x, inference_params=params), state

    def init_state(self, batch_size: int, device, dtype) -> SSMState:
        conv, ssm = self.layer.allocate_inference_cache(batch_size, 1, dtype=dtype)
        return SSMState(conv, ssm)

    def step(self, x: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        y, _, _ = self.layer.step(x[:, None], state.conv, state.ssm)
        return y[:, 0], state

    def _is_mamba2(self) -> bool:
        return hasattr(self.layer, "nheads")

    def state_bytes(self, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        layer = self.layer
        # mamba_ssm keeps the whole conv window, d_conv wide, and its SSM state in the model's dtype
        ssm = layer.nheads * layer.headdim if self._is_mamba2() else layer.d_inner
        conv = layer.conv1d.weight.shape[0] * layer.d_conv
        return batch_size * (conv + ssm * layer.d_state) * dtype_bytes(dtype)

    def flops_per_token(self, seq_len: int) -> float:
        layer = self.layer
        if self._is_mamba2():
            return mamba2_flops(
                layer.d_model,
                layer.d_inner,
                layer.d_state,
                layer.ngroups,
                layer.nheads,
                layer.d_conv,
                layer.chunk_size,
                seq_len,
            )
        return mamba_flops(layer.d_model, layer.d_inner, layer.d_state, layer.dt_rank, layer.d_conv)


def mamba_ssm_problem() -> str | None:
    """Why mamba_ssm cannot run here, or None. Importing mamba_ssm loads its compiled selective scan;
    causal_conv1d is its conv kernel (both in the "gpu" extra)."""
    return upstream_problem("mamba_ssm", ("mamba_ssm", "causal_conv1d"))


def mamba_backends() -> dict[str, bool | str]:
    return torch_or_upstream_backends("mamba_ssm", mamba_ssm_problem)


def _upstream_mamba(version: int, d_model: int, **config) -> UpstreamMamba:
    from mamba_ssm.modules.mamba2 import Mamba2 as UpstreamMamba2Layer
    from mamba_ssm.modules.mamba_simple import Mamba as UpstreamMambaLayer

    layer_class = UpstreamMambaLayer if version == 1 else UpstreamMamba2Layer
    layer = layer_class(d_model, layer_idx=0, **config)
    init_projections(layer, skip=("dt_proj",))  # the shell's init, as for our mixers
    return UpstreamMamba(layer)


class MambaConfig(ModelConfig):
    """``backend``: "auto" (mamba_ssm on CUDA when installed, else "torch-chunked"), "mamba_ssm",
    "torch-chunked" or "torch-recurrent"."""

    d_state: PositiveInt = 16
    d_conv: PositiveInt = 4
    expand: PositiveInt = 2
    dt_rank: PositiveInt | None = None  # None: ceil(d_model / 16)


class Mamba2Config(ModelConfig):
    """Backends as for Mamba. ``n_heads`` None means heads of 64 channels (expand * d_model // 64), the
    paper's; ``chunk_size`` None means each kernel's own default: 256 for mamba_ssm's Triton SSD, 64 for
    ours (smaller chunks suit the CPU)."""

    d_state: PositiveInt = 128
    d_conv: PositiveInt = 4
    expand: PositiveInt = 2
    n_heads: PositiveInt | None = None
    ngroups: PositiveInt = 1
    chunk_size: PositiveInt | None = None


def build_mamba(config: MambaConfig) -> LanguageModel:
    """Mamba in every block."""
    c = config
    resolved = resolve_backend(c.backend, "mamba_ssm", mamba_ssm_problem)

    def make(i: int) -> Mixer:
        if resolved == "mamba_ssm":
            return _upstream_mamba(
                1, c.d_model, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, dt_rank=c.dt_rank or "auto"
            )
        return Mamba(c.d_model, c.d_state, c.d_conv, c.expand, c.dt_rank, backend=resolved)

    return LanguageModel(c.vocab_size, c.d_model, c.n_layers, make, mlp_hidden=c.mlp_hidden)


def mamba2_head_dim(config: Mamba2Config) -> int:
    d_inner = config.expand * config.d_model
    heads = config.n_heads or max(1, d_inner // 64)
    if d_inner % heads:
        raise ValueError(f"expand * d_model = {d_inner} is not divisible by n_heads = {heads}")
    return d_inner // heads


def build_mamba2(config: Mamba2Config) -> LanguageModel:
    """Mamba2 in every block."""
    c = config
    resolved = resolve_backend(c.backend, "mamba_ssm", mamba_ssm_problem)
    head_dim = mamba2_head_dim(c)

    def make(i: int) -> Mixer:
        if resolved == "mamba_ssm":
            return _upstream_mamba(
                2,
                c.d_model,
                d_state=c.d_state,
                d_conv=c.d_conv,
                expand=c.expand,
                headdim=head_dim,
                ngroups=c.ngroups,
                chunk_size=c.chunk_size or 256,
            )
        return Mamba2(
            c.d_model,
            c.d_state,
            c.d_conv,
            c.expand,
            head_dim,
            c.ngroups,
            c.chunk_size or 64,
            backend=resolved,
        )

    return LanguageModel(c.vocab_size, c.d_model, c.n_layers, make, mlp_hidden=c.mlp_hidden)


MAMBA = ModelFamily("mamba", build_mamba, MambaConfig, mamba_backends, reference="torch-recurrent")
MAMBA2 = ModelFamily("mamba2", build_mamba2, Mamba2Config, mamba_backends, reference="torch-recurrent")
