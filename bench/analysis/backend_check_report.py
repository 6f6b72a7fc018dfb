"""VALIDATE.md: the table of `bench validate`'s rows."""

from __future__ import annotations


def validation_markdown(rows: list[dict], manifest: dict, shape: dict, tolerance: dict) -> str:
    """The table, one row per (model, backend, dtype); errors are relative to the float64 reference."""
    lines = [
        "# Backend validation",
        "",
        f"Device: {manifest.get('gpu_name') or manifest.get('cpu')} · torch "
        f"{manifest['packages'].get('torch')} · git {manifest.get('git_commit')}"
        f"{' (dirty)' if manifest.get('git_dirty') else ''} · {manifest['created_at']}",
        "",
        f"Each backend runs with the weights of its family's reference backend; errors are relative to "
        f"that reference in float64 (model: {shape}, batch 2; a window or segment default is cut to T // 3 "
        f"so that it binds). Tolerances: {tolerance}.",
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
