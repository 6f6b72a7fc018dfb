"""VALIDATE.md: the table of `bench validate`'s rows."""

from __future__ import annotations


def validation_markdown(rows: list[dict], manifest: dict, shape: dict, tolerance: dict) -> str:
    """The backends' table, one row per (model, backend, dtype), errors relative to the float64 reference;
    then the operators' table against the upstream packages' references."""
    upstream = [r for r in rows if r.get("kind") == "upstream"]
    rows = [r for r in rows if r.get("kind") != "upstream"]
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
    return "\n".join(lines + upstream_lines(upstream)) + "\n"


def upstream_lines(rows: list[dict]) -> list[str]:
    """This project's operators against the upstream packages' own reference functions."""
    if not rows:
        return []
    lines = [
        "",
        "## Against the upstream packages' references",
        "",
        "Each operator behind this project's CPU backends, on the CPU in float32, against the upstream "
        "package's own pure-PyTorch reference function (fla's naive delta rules; mamba-ssm's "
        "`selective_scan_ref`, `selective_state_update_ref`, `ssd_minimal_discrete`) on the same inputs, "
        "shaped as the layers feed them: the relative error of every output (the final state included) "
        "and of the gradients, with respect to every input, of a fixed random function of the outputs. "
        f"Tolerance {rows[0].get('tolerance')}. A package that is not installed is named, not failed.",
        "",
        "| model | backend | operator | upstream reference | T | output rel. err | gradient rel. err "
        "| status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fe, ge = r.get("forward_rel_err"), r.get("grad_rel_err")
        status = (
            r["status"]
            + (f": {r['error']}" if r.get("error") else "")
            + (f" ({r['note']})" if r.get("note") else "")
        )
        lines.append(
            f"| {r['model']} | {r['backend']} | `{r['op']}` | `{r['reference']}` | {r.get('seq_len', '')} "
            f"| {'' if fe is None else f'{fe:.2e}'} | {'' if ge is None else f'{ge:.2e}'} | {status} |"
        )
    return lines


def _args_text(args: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (args or {}).items())
