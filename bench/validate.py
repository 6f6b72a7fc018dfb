"""``python -m bench validate``: every backend of every model against its family's slow reference.

For each model, the reference backend (a plain PyTorch path, obviously correct) runs in float64 and
gives the ground truth; every backend available here (the fast pure-PyTorch path, and on CUDA the
upstream kernels) runs with the same weights in float32 and bfloat16. Reported: the relative error
||x - ref|| / ||ref|| of the logits and of all parameter gradients.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import math
from pathlib import Path

import torch

from bench import environment
from bench.errors import BenchError
from bench.registry import build, describe_backends, get_factory, list_models

# Relative-error bounds a healthy backend stays within, per dtype.
TOLERANCE = {"float32": 1e-3, "bfloat16": 6e-2}
SHAPE = dict(vocab_size=256, d_model=128, n_layers=2)


def _short_context_args(params, seq_len: int) -> dict:
    """A window or segment shorter than the sequence for the families that have one by default, so that the
    blocked sliding-window and segment code runs (a 512-token default would never bind at T=100)."""
    return {
        arg: max(1, seq_len // 3)
        for arg in ("window", "segment")
        if arg in params and params[arg].default is not None
    }


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


def validate_model(
    name: str, device: torch.device, seq_len: int, dtypes: list[str], seed: int = 0
) -> list[dict]:
    factory = get_factory(name)
    reference = getattr(factory, "reference_backend", None)
    available = [b for b, ok in describe_backends(name).items() if ok is True and b != "auto"]
    rows = []
    if reference is None or not available:
        return [{"model": name, "backend": "-", "dtype": "-", "status": "no reference backend declared"}]

    params = inspect.signature(factory).parameters
    args = {**SHAPE, **_short_context_args(params, seq_len)}
    # Hybrids (Titans with attention) take the explicit attention reference too: it is the ground truth,
    # and on CUDA no SDPA kernel but the math one takes float64.
    ref_args = {"attention_backend": "torch"} if "attention_backend" in params else {}
    torch.manual_seed(seed)
    ref_model = build(name, backend=reference, **args, **ref_args).to(device=device, dtype=torch.float64)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, seq_len), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(device)
    probe = torch.randn(
        2,
        seq_len,
        SHAPE["vocab_size"],
        generator=torch.Generator().manual_seed(seed + 1),
        dtype=torch.float64,
    ).to(device)
    ref_logits, ref_grads = _run(ref_model, ids, probe)
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
                row.update(status="error", error=f"{type(err).__name__}: {err}"[:300])
            rows.append(row)
    return rows


def _markdown(rows: list[dict], manifest: dict) -> str:
    lines = [
        "# Backend validation",
        "",
        f"Device: {manifest.get('gpu_name') or manifest.get('cpu')} · torch "
        f"{manifest['packages'].get('torch')} · git {manifest.get('git_commit')}"
        f"{' (dirty)' if manifest.get('git_dirty') else ''} · {manifest['created_at']}",
        "",
        f"Each backend runs with the weights of its family's reference backend; errors are relative to "
        f"that reference in float64 (model: {SHAPE}, batch 2; a window or segment default is cut to T // 3 "
        f"so that it binds). Tolerances: {TOLERANCE}.",
        "",
        "| model | args | backend | dtype | T | forward rel. err | gradient rel. err | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fe, ge = r.get("forward_rel_err"), r.get("grad_rel_err")
        status = r["status"] + (f": {r['error']}" if r.get("error") else "")
        lines.append(
            f"| {r['model']} | {_args_text(r.get('args'))} | {r.get('backend_used', r['backend'])} "
            f"| {r['dtype']} | {r.get('seq_len', '')} "
            f"| {'' if fe is None else f'{fe:.2e}'} | {'' if ge is None else f'{ge:.2e}'} | {status} |"
        )
    return "\n".join(lines) + "\n"


def _args_text(args: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (args or {}).items())


def run_validation(models: list[str] | None, device: str, seq_len: int, out: str | None) -> tuple[Path, bool]:
    from bench.sweep import resolve_device

    dev = torch.device(resolve_device(device))
    names = models or list_models()
    rows = []
    for name in names:
        rows += validate_model(name, dev, seq_len, ["float32", "bfloat16"])
    manifest = environment.collect()
    manifest["device"] = dev.type
    run_dir = Path(out) if out else Path("runs") / f"validate-{dt.datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "validate.json").write_text(
        json.dumps({"manifest": manifest, "rows": rows}, indent=2, default=str)
    )
    text = _markdown(rows, manifest)
    (run_dir / "VALIDATE.md").write_text(text)
    print(text)
    if not rows:
        raise BenchError("nothing to validate")
    return run_dir, all(r["status"] in ("ok", "no reference backend declared") for r in rows)
