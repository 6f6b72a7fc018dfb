"""Every backend of every model against its family's slow reference (``python -m bench validate``): the
numerical error of each fast path, measured.

For each model, the reference backend (a plain PyTorch path, obviously correct) runs in float64 and
gives the ground truth; every backend available here (the fast pure-PyTorch path, and on CUDA the
upstream kernels) runs with the same weights in float32 and bfloat16. Reported: the relative error
||x - ref|| / ||ref|| of the logits and of all parameter gradients.
"""

from __future__ import annotations

import math

import torch

from bench.device import resolve_device
from bench.errors import BenchError
from bench.measure.upstream_check import check_upstream, not_installed
from bench.plugins import call_of, describe_failure, model_error
from bench.registry import MODELS, build, context_argument, describe_backends, list_models, reference_backend

NO_REFERENCE = "no reference backend declared"
NO_BACKENDS = "no backends declared"
# Relative-error bounds a healthy backend stays within, per dtype.
TOLERANCE = {"float32": 1e-3, "bfloat16": 6e-2}
SHAPE = dict(vocab_size=256, d_model=128, n_layers=2)


def _short_context_args(name: str, seq_len: int) -> dict:
    """An attention context (window, segment) shorter than the sequence for the families that bound it by
    default, so that the blocked code runs (a 512-token default would never bind at T=100)."""
    declared = context_argument(name)
    if declared is None or declared[1] is None:
        return {}
    return {declared[0]: max(1, seq_len // 3)}


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def _run(model, ids, probe):
    """Logits and the flattened gradient of a fixed random projection of them."""
    model.zero_grad(set_to_none=True)
    logits = model(ids)
    (logits.double() * probe).sum().backward()
    grads = [p.grad.double().flatten() if p.grad is not None else torch.zeros(p.numel(), dtype=torch.float64,
             device=p.device) for p in model.parameters()]  # fmt: skip
    return logits.detach().double(), torch.cat(grads)


def check_model(
    name: str, device: torch.device, seq_len: int, dtypes: list[str], seed: int = 0
) -> list[dict]:
    reference = reference_backend(name)
    available = [b for b, ok in describe_backends(name).items() if ok is True and b != "auto"]
    rows = []
    if reference is None:
        return [{"model": name, "backend": "-", "dtype": "-", "status": NO_REFERENCE}]
    if not available:
        return [{"model": name, "backend": "-", "dtype": "-", "status": NO_BACKENDS}]

    args = {**SHAPE, **_short_context_args(name, seq_len)}
    # What the family's reference needs besides its backend (the hybrids' explicit attention: it is the
    # ground truth, and on CUDA no SDPA kernel but the math one takes float64).
    ref_args = MODELS.get(name).metadata.get("reference_args") or {}
    torch.manual_seed(seed)
    # The reference is the ground truth: if it fails, nothing can be validated, and the failure is the
    # model's, named with its call.
    ref_model = _reference(
        name, reference, lambda: build(name, backend=reference, **args, **ref_args), "factory"
    )
    ref_model = ref_model.to(device=device, dtype=torch.float64)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, seq_len), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(device)
    probe = torch.randn(
        2,
        seq_len,
        SHAPE["vocab_size"],
        generator=torch.Generator().manual_seed(seed + 1),
        dtype=torch.float64,
    ).to(device)
    ref_logits, ref_grads = _reference(name, reference, lambda: _run(ref_model, ids, probe), None)
    state = ref_model.state_dict()

    for backend in available:
        for dtype in dtypes:
            row = {
                "model": name,
                "backend": backend,
                "reference": reference,
                "reference_used": ref_model.backend,
                "dtype": dtype,
                "seq_len": seq_len,
                "args": {k: v for k, v in args.items() if k not in SHAPE},
            }
            try:
                model = build(name, backend=backend, **args)
                model.load_state_dict(state)
                model = model.to(device=device, dtype=getattr(torch, dtype))
                logits, grads = _run(model, ids, probe)
                row.update(
                    backend_used=model.backend,
                    forward_rel_err=_rel(logits, ref_logits),
                    grad_rel_err=_rel(grads, ref_grads),
                )
                worst = max(row["forward_rel_err"], row["grad_rel_err"])
                row["status"] = "ok" if math.isfinite(worst) and worst < TOLERANCE[dtype] else "MISMATCH"
            except Exception as err:  # noqa: BLE001 - one backend failing must not hide the others
                row.update(status="error", error=describe_failure(err, name)[:300])
            rows.append(row)
    return rows


def check_backends(models: list[str] | None, device: str, seq_len: int) -> tuple[torch.device, list[dict]]:
    """Rows for every backend of every model (default: all registered) on ``device``, then a row per
    operator of those models checked against its upstream package's reference (``kind`` "upstream")."""
    dev = torch.device(resolve_device(device))
    rows = []
    names = models or list_models()
    for name in names:
        rows += check_model(name, dev, seq_len, ["float32", "bfloat16"])
    return dev, rows + check_upstream(names, seq_len)


def validated(rows: list[dict]) -> bool:
    """Whether any backend was checked at all (the upstream operator checks do not count)."""
    return any(r["status"] not in (NO_REFERENCE, NO_BACKENDS) for r in rows if r.get("kind") != "upstream")


def all_ok(rows: list[dict]) -> bool:
    """Every backend and operator within tolerance; an upstream package that is not installed fails
    nothing (its rows say so)."""
    return all(r["status"] in ("ok", NO_REFERENCE, NO_BACKENDS) or not_installed(r) for r in rows)


def _reference(name: str, reference: str, fn, call: str | None):
    try:
        return fn()
    except BenchError:
        raise
    except Exception as err:  # noqa: BLE001 - the reference's failure is the model's: name it and the call
        where = call or call_of(err) or "forward"
        raise BenchError(f"{model_error(name, where, err)} (reference backend {reference!r})") from None
