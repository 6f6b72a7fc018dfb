"""REPORT.md and its plots, generated from a run's stored results only: the header (environment, cells,
cost), the timing section, one section per kind of accuracy scoring (the section each record's scorer
names: bench/analysis/sections), and the cells that did not finish."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench import results
from bench.analysis.configs import config_lines
from bench.analysis.sections import get_section
from bench.analysis.selection import scorer_of
from bench.analysis.text import cell_text
from bench.results import AccuracyRow, TimingRow
from bench.results.outputs import REPORT_FILES, Folder


def _environment(manifest: dict) -> str:
    pkgs = ", ".join(f"{k} {v}" for k, v in sorted(manifest.get("packages", {}).items()))
    rows = [
        ("device", manifest.get("device")),
        (
            "GPU",
            f"{manifest.get('gpu_name')} (driver {manifest.get('driver_version')}, CUDA "
            f"{manifest.get('cuda_version')})"
            if manifest.get("gpu_name")
            else "none",
        ),
        (
            "CPU",
            f"{manifest.get('cpu')} ({manifest.get('cpu_count')} cores, "
            f"{manifest.get('torch_threads')} torch threads)",
        ),
        ("python", manifest.get("python")),
        ("packages", pkgs),
        ("TF32 (matmul / cuDNN)", f"{manifest.get('tf32_matmul')} / {manifest.get('tf32_cudnn')}"),
        ("git commit", f"{manifest.get('git_commit')}{' (dirty)' if manifest.get('git_dirty') else ''}"),
        ("command", f"`{manifest.get('command')}`"),
        ("started", manifest.get("created_at")),
        *(("resumed", f"{m.get('created_at')}: `{m.get('command')}`") for m in invocations(manifest)[1:]),
        ("seed", manifest.get("seed")),
        ("rounds", manifest.get("rounds", 1)),
    ]
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def cost_lines(rows: list[TimingRow | AccuracyRow]) -> list[str]:
    """What the run cost: each cell's process wall clock summed (the run's length when its cells ran one
    after another, as a local run does), and the CPU time of the accuracy cells' training and evaluation,
    which a shared machine does not inflate."""
    walls = [r.wall_s for r in rows if r.wall_s is not None]
    if not walls:
        return []
    text = f"Cell wall clock, summed over {len(walls)} cells: {sum(walls) / 60:.1f} minutes"
    accuracy = [r for r in rows if isinstance(r, AccuracyRow)]
    if accuracy:
        cpu = sum((r.train_cpu_seconds or 0) + (r.eval_cpu_seconds or 0) for r in accuracy)
        text += f" (training and evaluation CPU time: {cpu / 60:.1f} minutes)"
    return [text + ".", ""]


BUSY_CORES = 0.5  # other work using more than half a core when a run starts makes its timings suspect


def invocations(manifest: dict) -> list[dict]:
    """The run's invocations, each its manifest entry: the first, then each resumption in order."""
    return [manifest, *(m for m in manifest.get("resumed", []) if isinstance(m, dict))]


def provenance_lines(manifest: dict, rows: Sequence[TimingRow | AccuracyRow] = ()) -> list[str]:
    """What a reader must know before trusting the numbers: a dirty tree, invocations of one run on
    different commits, and a machine that was busy, for the first invocation and each resumption (with
    the cells each measured, by its run id in ``rows``)."""
    runs = invocations(manifest)
    measured = Counter(row.run_id for row in rows if row.run_id)
    out = []
    for i, entry in enumerate(runs):
        if entry.get("git_dirty"):
            who = "" if i == 0 else f" (the resumption of {entry.get('created_at')})"
            out.append(
                f"**Generated from a dirty tree**{who} (commit {entry.get('git_commit')} with uncommitted "
                "changes): the code that measured these numbers is not a commit anyone can check out."
            )
    commits = list(dict.fromkeys(str(e.get("git_commit")) for e in runs if e.get("git_commit")))
    if len(commits) > 1:
        out.append(
            f"**Its invocations ran different commits** ({', '.join(commits)}, in order): cells measured "
            "by one and by another may differ by the code between them."
        )
    for i, entry in enumerate(runs):
        line = _load_line(entry, manifest.get("cpu_count") or 1, None if i == 0 else entry.get("created_at"))
        if line and len(runs) > 1 and entry.get("run_id"):
            line += f" It measured {measured[entry['run_id']]} of the {len(rows)} cells."
        if line:
            out.append(line)
    return [x for line in out for x in (line, "")]


def _load_line(entry: dict, cores: int, resumed_at: str | None) -> str | None:
    """The machine's load when one invocation started (and ended), with a verdict on it; None without a
    sample."""
    start, end = entry.get("load_average_start"), entry.get("load_average_end")
    busy_start, busy_end = entry.get("busy_cores_start"), entry.get("busy_cores_end")
    if start is None:
        return None
    when = "before the run" if resumed_at is None else f"when the run was resumed ({resumed_at})"
    text = f"Machine load {when}: 1-minute average {start[0]:.2f} on {cores} cores"
    if busy_start is not None:
        text += f", {busy_start:.2f} cores busy in the second before it started"
    if end:
        text += f"; at its end: {end[0]:.2f}"
        text += f" ({busy_end:.2f} cores busy)" if busy_end is not None else ""
    which = "the run" if resumed_at is None else "this invocation"
    # the 1-second sample decides where there is one: the average still counts work that just ended
    if busy_start is not None:
        return text + (
            f". **The machine was busy with other work when {which} started**: timings and wall clocks "
            "are slower than on a quiet machine, and noisier."
            if busy_start > BUSY_CORES
            else "."
        )
    return text + (
        f". **Other work loaded the machine in the minute before {which} started** (the average "
        "cannot tell whether it was still running): timings and wall clocks may be slower than on "
        "a quiet machine, and noisier."
        if start[0] > BUSY_CORES
        else "."
    )


def carried_over(manifest: dict, rows: list) -> dict[str, int]:
    """Cells whose records another run measured, by that run's id: a run id that is neither this run's nor
    one of its resumptions'. Empty for an older manifest, whose invocations cannot be told apart."""
    if not manifest.get("run_id"):
        return {}
    ours = {m.get("run_id") for m in invocations(manifest)}
    return Counter(row.run_id for row in rows if row.run_id and row.run_id not in ours)


def carried_over_lines(manifest: dict, rows: list) -> list[str]:
    """The report's warning that some cells were copied in: the environment table is not theirs."""
    theirs = carried_over(manifest, rows)
    if not theirs:
        return []
    runs = ", ".join(f"{run} ({n})" for run, n in sorted(theirs.items()))
    return [
        f"**{sum(theirs.values())} of {len(rows)} cells were measured by another run** and copied into this "
        f"one (run id and cells: {runs}): the commit, command and environment below are this run's, not "
        "theirs.",
        "",
    ]


def section_of(row: AccuracyRow) -> str:
    """The report section of an accuracy record: the one its scorer named, else (an older record, or a
    cell that never finished) the one the scorer it names, or its task's scorer, names now."""
    if row.section:
        return row.section
    scorer = scorer_of(row)
    return scorer.section if scorer is not None else "recall"


def accuracy_sections(rows: list[AccuracyRow], run_dir: Path) -> list[str]:
    """The sections of the accuracy records, each rendered by the section its scorer names, in the order
    their first records appear; their plots go into ``run_dir``."""
    sections: dict[str, list[AccuracyRow]] = {}
    for row in rows:
        sections.setdefault(section_of(row), []).append(row)
    out = []
    for section, members in sections.items():
        out += get_section(section)(members, run_dir)
    return out


def write_report(
    run_dir: str | Path,
    source: str | Path | None = None,
    folder: Folder | None = None,
    rows: list[TimingRow | AccuracyRow] | None = None,
) -> Path:
    """Write REPORT.md (and PNG plots beside it) into ``run_dir`` from the results file ``source`` (default:
    the run's own; ``rows``: its rows, when read already), under the write policy (``folder``: ``run_dir``
    as the command claimed it); returns its path. The report is rendered aside and moved in whole, so
    that nothing is left half-written."""
    run_dir = Path(run_dir)
    source = Path(source) if source is not None else run_dir / results.RESULTS
    rows = results.load_rows(source) if rows is None else rows
    # The manifest describes a run: read beside a run's results file only, never beside any other file.
    own = source.name == results.RESULTS
    manifest = results.read_manifest(source) if own else {}
    # Called as a library, the caller answers for the folder; still, no file it did not write is replaced.
    folder = folder or Folder(run_dir, "report")
    folder.check_replaceable(REPORT_FILES)
    folder.create()
    try:
        with folder.staging() as stage:
            _render(rows, manifest, manifest.get("name", run_dir.name if own else source.stem), source, stage)
            folder.install(stage)
    except BaseException:
        folder.discard()  # a folder made for this report goes again; an existing one keeps what it had
        raise
    return run_dir / "REPORT.md"


def _render(
    rows: list[TimingRow | AccuracyRow], manifest: dict, name: str, source: Path, run_dir: Path
) -> None:
    out = [
        f"# Benchmark report: {name}",
        "",
        *provenance_lines(manifest, rows),
        *carried_over_lines(manifest, rows),
    ]
    out += [
        f"Generated from `{source.name}` ({len(rows)} cells).",
        "",
        "## Environment",
        "",
        _environment(manifest),
        "",
    ]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    out += ["## Cells", "", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), ""]
    out += cost_lines(rows)

    timing = [r for r in rows if isinstance(r, TimingRow) and r.ok]
    if timing:
        out += get_section("timing")(timing, run_dir)
    out += accuracy_sections([r for r in rows if isinstance(r, AccuracyRow)], run_dir)

    failed = [r for r in rows if not r.ok]
    if failed:
        out += [
            "## Cells that did not finish",
            "",
            "| model | mode | T | B | status | reason |",
            "|---|---|---|---|---|---|",
        ]
        for row in failed:
            reason = cell_text(row.error or "")[:160]
            mode = f"accuracy: {row.task_label}" if isinstance(row, AccuracyRow) else row.mode
            length = row.train_len if isinstance(row, AccuracyRow) else row.seq_len
            out.append(f"| {row.label} | {mode} | {length} | {row.batch_size} | {row.status} | {reason} |")
        out.append("")

    out += config_lines(rows)
    (run_dir / "REPORT.md").write_text("\n".join(out))
