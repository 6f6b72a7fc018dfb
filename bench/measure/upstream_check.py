"""This project's CPU operators against the upstream packages' own pure-PyTorch reference functions, where
the package is importable (``python -m bench validate``): fla's naive delta rules for DeltaNet and Gated
DeltaNet, mamba-ssm's ``selective_scan_ref``, ``selective_state_update_ref`` and ``ssd_minimal_discrete``
for Mamba and Mamba2.

The backend check (``backend_check.py``) holds each fast path to this project's own slow reference; this
holds the operators under both of this project's backends to the field's reference, so a reader knows
that "Mamba" here computes what mamba-ssm's Mamba computes. Each check runs the operator and the reference
on the same inputs, shaped as the layers feed them (unit-norm keys, gates in range, A < 0), in float32
(the fla and mamba-ssm references compute in float32 whatever they are given), and reports the relative
error ||ours - theirs|| / ||theirs|| of every output (the final state included) and of the gradients of a
fixed random function of the outputs with respect to every input. Which operator backs which model and
backend is this module's table: the model families declare their backends, not their upstream twins.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from baselines.deltanet import (
    delta_rule_chunked,
    delta_rule_recurrent,
    gated_delta_rule_chunked,
    gated_delta_rule_recurrent,
)
from baselines.mamba import (
    selective_scan,
    selective_scan_recurrent,
    selective_state_update,
    ssd_chunked,
    ssd_recurrent,
    ssd_step,
)
from bench.measure import upstream

TOLERANCE = 1e-4  # float32 against float32, relative to the reference's norm
BATCH, HEADS, DIM = 2, 2, 8


@dataclass(frozen=True)
class OpCheck:
    model: str
    backends: tuple[str, ...]  # the model's backends that run this operator
    op: str
    reference: str  # the upstream function, as the package names it
    package: str
    load: Callable[[], Callable | None]
    inputs: Callable[[torch.Generator, int], dict[str, torch.Tensor]]
    ours: Callable[..., tuple[torch.Tensor, ...]]
    theirs: Callable[..., tuple[torch.Tensor, ...]]  # (reference, **inputs) -> the same outputs as ours
    step: bool = False  # one decoding step: one token, whatever the length validated


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _delta_inputs(gen: torch.Generator, length: int, gated: bool = False) -> dict[str, torch.Tensor]:
    inputs = {
        "q": _randn(gen, BATCH, HEADS, length, DIM),
        "k": F.normalize(_randn(gen, BATCH, HEADS, length, DIM), dim=-1),
        "v": _randn(gen, BATCH, HEADS, length, DIM),
        "beta": _randn(gen, BATCH, HEADS, length).sigmoid(),
        "initial_state": _randn(gen, BATCH, HEADS, DIM, DIM),
    }
    if gated:
        inputs["g"] = F.logsigmoid(_randn(gen, BATCH, HEADS, length) + 2.0)
    return inputs


def _time_major(x: torch.Tensor) -> torch.Tensor:  # [B, H, T, ...] <-> [B, T, H, ...]
    return x.transpose(1, 2)


def _fla_gated(reference, q, k, v, g, beta, initial_state):
    o, state = reference(
        *(_time_major(x) for x in (q, k, v, beta, g)), initial_state=initial_state, output_final_state=True
    )
    return _time_major(o), state


def _fla_gated_chunk(reference, q, k, v, g, beta, initial_state):
    o, state = reference(
        *(_time_major(x) for x in (q, k, v, g, beta)),
        chunk_size=16,
        initial_state=initial_state,
        output_final_state=True,
    )
    return _time_major(o), state


def _scan_inputs(gen: torch.Generator, length: int) -> dict[str, torch.Tensor]:
    d, n = 2 * DIM, 4
    return {
        "u": _randn(gen, BATCH, d, length),
        "delta": _randn(gen, BATCH, d, length) - 1.0,
        "A": -torch.exp(_randn(gen, d, n)),
        "B": _randn(gen, BATCH, n, length),
        "C": _randn(gen, BATCH, n, length),
        "D": _randn(gen, d),
        "z": _randn(gen, BATCH, d, length),
        "delta_bias": 0.5 * _randn(gen, d),
    }


SCAN = dict(delta_softplus=True, return_last_state=True)


def _state_update_inputs(gen: torch.Generator, length: int) -> dict[str, torch.Tensor]:
    d, n = 2 * DIM, 4
    return {
        "state": _randn(gen, BATCH, d, n),
        "x": _randn(gen, BATCH, d),
        "dt": _randn(gen, BATCH, d),
        "A": -torch.exp(_randn(gen, d, n)),
        "B": _randn(gen, BATCH, n),
        "C": _randn(gen, BATCH, n),
        "D": _randn(gen, d),
        "z": _randn(gen, BATCH, d),
        "dt_bias": _randn(gen, d),
    }


def _mamba_step_reference(reference, state, **inputs):
    state = state.clone()  # updated in place by the reference, which returns y only
    y = reference(state, **inputs, dt_softplus=True)
    return y, state


def ssd_block(length: int) -> int:
    """ssd_minimal_discrete needs the length divisible by its block: the largest divisor up to 32."""
    return max(b for b in range(1, min(length, 32) + 1) if length % b == 0)


def _ssd_inputs(gen: torch.Generator, length: int) -> dict[str, torch.Tensor]:
    heads, head_dim, n, groups = 4, 3, 5, 2
    dt = F.softplus(_randn(gen, BATCH, length, heads) - 1.0)
    return {
        "X": _randn(gen, BATCH, length, heads, head_dim) * dt[..., None],
        "A": -torch.exp(_randn(gen, heads)) * dt,
        "B": _randn(gen, BATCH, length, groups, n),
        "C": _randn(gen, BATCH, length, groups, n),
        "initial_states": _randn(gen, BATCH, heads, head_dim, n),
    }


def _ssd_reference(reference, X, A, B, C, initial_states):
    heads = X.shape[2]  # the minimal reference takes B and C per head
    B, C = (M.repeat_interleave(heads // M.shape[2], dim=2) for M in (B, C))
    return reference(X, A, B, C, ssd_block(X.shape[1]), initial_states=initial_states[:, None])


def _ssd_step_inputs(gen: torch.Generator, length: int) -> dict[str, torch.Tensor]:
    heads, head_dim, n, groups = 4, 3, 5, 2
    return {
        "state": _randn(gen, BATCH, heads, head_dim, n),
        "x": _randn(gen, BATCH, heads, head_dim),
        "dt": F.softplus(_randn(gen, BATCH, heads)),
        "A": -torch.exp(_randn(gen, heads)),
        "B": _randn(gen, BATCH, groups, n),
        "C": _randn(gen, BATCH, groups, n),
    }


def _ssd_step_ours(state, x, dt, A, B, C):
    return ssd_step(state, x * dt[..., None], A * dt, B, C)


def _ssd_step_reference(reference, state, x, dt, A, B, C):
    """Mamba2's step is the selective state update in its head form: dt and A shared by a head's channels."""
    head_dim, n = state.shape[-2:]
    state = state.clone()
    y = reference(
        state, x, dt[..., None].expand(-1, -1, head_dim), A[:, None, None].expand(-1, head_dim, n), B, C
    )
    return y, state


CHUNKED, RECURRENT, BOTH = ("torch-chunked",), ("torch-recurrent",), ("torch-chunked", "torch-recurrent")
FLA_DELTA, FLA_GATED = "fla.ops.delta_rule.naive", "fla.ops.gated_delta_rule.naive"
MAMBA_SCAN, MAMBA_STEP = (
    "mamba_ssm.ops.selective_scan_interface",
    "mamba_ssm.ops.triton.selective_state_update",
)

CHECKS = [
    OpCheck("deltanet", CHUNKED, "delta_rule_chunked", f"{FLA_DELTA}.delta_rule_recurrence", "fla",
            upstream.fla_delta_rule_recurrence, _delta_inputs,
            lambda **x: delta_rule_chunked(**x, chunk_size=16),
            lambda ref, q, k, v, beta, initial_state: ref(q, k, v, beta, initial_state=initial_state)),
    OpCheck("deltanet", RECURRENT, "delta_rule_recurrent", f"{FLA_DELTA}.delta_rule_recurrence", "fla",
            upstream.fla_delta_rule_recurrence, _delta_inputs, delta_rule_recurrent,
            lambda ref, q, k, v, beta, initial_state: ref(q, k, v, beta, initial_state=initial_state)),
    OpCheck("gated-deltanet", CHUNKED, "gated_delta_rule_chunked",
            f"{FLA_GATED}.naive_recurrent_gated_delta_rule", "fla", upstream.fla_gated_delta_rule_recurrence,
            lambda gen, t: _delta_inputs(gen, t, gated=True),
            lambda **x: gated_delta_rule_chunked(**x, chunk_size=16), _fla_gated),
    OpCheck("gated-deltanet", RECURRENT, "gated_delta_rule_recurrent",
            f"{FLA_GATED}.naive_recurrent_gated_delta_rule", "fla", upstream.fla_gated_delta_rule_recurrence,
            lambda gen, t: _delta_inputs(gen, t, gated=True), gated_delta_rule_recurrent, _fla_gated),
    OpCheck("gated-deltanet", CHUNKED, "gated_delta_rule_chunked",
            f"{FLA_GATED}.naive_chunk_gated_delta_rule", "fla", upstream.fla_naive_chunk_gated_delta_rule,
            lambda gen, t: _delta_inputs(gen, t, gated=True),
            lambda **x: gated_delta_rule_chunked(**x, chunk_size=16),
            _fla_gated_chunk),
    OpCheck("mamba", CHUNKED, "selective_scan", f"{MAMBA_SCAN}.selective_scan_ref", "mamba-ssm",
            upstream.mamba_selective_scan_ref, _scan_inputs, lambda **x: selective_scan(**x, **SCAN),
            lambda ref, **x: ref(**x, **SCAN)),
    OpCheck("mamba", RECURRENT, "selective_scan_recurrent", f"{MAMBA_SCAN}.selective_scan_ref", "mamba-ssm",
            upstream.mamba_selective_scan_ref, _scan_inputs,
            lambda **x: selective_scan_recurrent(**x, **SCAN),
            lambda ref, **x: ref(**x, **SCAN)),
    OpCheck("mamba", BOTH, "selective_state_update (a decoding step)",
            f"{MAMBA_STEP}.selective_state_update_ref", "mamba-ssm",
            upstream.mamba_selective_state_update_ref,
            _state_update_inputs, lambda **x: selective_state_update(**x, dt_softplus=True),
            _mamba_step_reference, step=True),
    OpCheck("mamba2", CHUNKED, "ssd_chunked", "mamba_ssm.modules.ssd_minimal.ssd_minimal_discrete",
            "mamba-ssm", upstream.mamba_ssd_minimal_discrete, _ssd_inputs,
            lambda **x: ssd_chunked(**x, chunk_size=16), _ssd_reference),
    OpCheck("mamba2", RECURRENT, "ssd_recurrent", "mamba_ssm.modules.ssd_minimal.ssd_minimal_discrete",
            "mamba-ssm", upstream.mamba_ssd_minimal_discrete, _ssd_inputs, ssd_recurrent, _ssd_reference),
    OpCheck("mamba2", BOTH, "ssd_step (a decoding step)", f"{MAMBA_STEP}.selective_state_update_ref (heads)",
            "mamba-ssm", upstream.mamba_selective_state_update_ref, _ssd_step_inputs, _ssd_step_ours,
            _ssd_step_reference, step=True),
]  # fmt: skip


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


def _outputs_and_grads(fn: Callable, inputs: dict[str, torch.Tensor], seed: int):
    """The outputs of ``fn(**inputs)`` and the gradients, with respect to every input, of a fixed random
    function of all of them (None when ``fn`` cannot be differentiated)."""
    leaves = {name: x.detach().clone().requires_grad_() for name, x in inputs.items()}
    outputs = fn(**leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum(
        (out.double() * torch.randn(out.shape, generator=gen, dtype=torch.float64)).sum() for out in outputs
    )
    try:
        loss.backward()
    except RuntimeError:
        return [o.detach() for o in outputs], None
    grads = [x.grad if x.grad is not None else torch.zeros_like(x) for x in leaves.values()]
    return [o.detach() for o in outputs], grads


def run_check(check: OpCheck, seq_len: int, seed: int = 0) -> dict:
    seq_len = 1 if check.step else seq_len
    row = {
        "kind": "upstream",
        "model": check.model,
        "backend": ", ".join(check.backends),
        "op": check.op,
        "reference": check.reference,
        "dtype": "float32",
        "seq_len": seq_len,
        "tolerance": TOLERANCE,
    }
    reference = check.load()
    if reference is None:
        return {**row, "status": f"{check.package} not installed: {upstream.INSTALL_HINT}"}
    try:
        inputs = check.inputs(torch.Generator().manual_seed(seed), seq_len)
        ours, our_grads = _outputs_and_grads(check.ours, inputs, seed + 1)
        theirs, their_grads = _outputs_and_grads(lambda **x: check.theirs(reference, **x), inputs, seed + 1)
        if len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours, theirs, strict=True)):
            raise ValueError(
                f"outputs {[tuple(o.shape) for o in ours]} vs {[tuple(o.shape) for o in theirs]}"
            )
        row["forward_rel_err"] = max(_rel(a, b) for a, b in zip(ours, theirs, strict=True))
        if our_grads is not None and their_grads is not None:
            row["grad_rel_err"] = max(_rel(a, b) for a, b in zip(our_grads, their_grads, strict=True))
        errors = [row["forward_rel_err"], row.get("grad_rel_err", 0.0)]
        row["status"] = "ok" if all(math.isfinite(e) and e < TOLERANCE for e in errors) else "MISMATCH"
        if their_grads is None:
            row["note"] = "the reference has no backward: outputs only"
    except Exception as err:  # noqa: BLE001 - one check failing must not hide the others
        row.update(status="error", error=f"{type(err).__name__}: {err}"[:300])
    return row


def check_upstream(models: list[str], seq_len: int) -> list[dict]:
    """A row per operator check of the models named (on the CPU, whatever the validated device)."""
    return [run_check(check, seq_len) for check in CHECKS if check.model in models]


def not_installed(row: dict) -> bool:
    return row.get("kind") == "upstream" and "not installed" in row["status"]
