"""The timing section says what each number is: the implementation every cell ran, the launch-bound
ceiling only as a GPU estimate from CUDA kernel counts, noisy cells greyed and never ranked, the batch
size, and exact tensor memory beside the resident size."""

import pandas as pd

from bench.analysis.sections.timing import implementation, models_table, ranked_cells, timing_section
from bench.results import TimingRow


def row(
    label, mode="prefill", seq_len=256, tps=1000.0, spread=0.05, device="cpu", backend="torch-chunked", **kw
):
    fields = dict(
        key=f"{label}/{mode}/{seq_len}/{device}", label=label, model=label, mode=mode, seq_len=seq_len,
        batch_size=4, dtype="float32", device=device, d_model=16, n_layers=1, vocab_size=32, status="ok",
        tokens_per_s=tps, median_s=1 / tps, iqr_s=spread / tps, samples_s=[1 / tps], backend=backend,
        peak_mem_bytes=2**20, peak_mem_gross_bytes=300 * 2**20, mem_baseline_bytes=290 * 2**20,
        state_bytes=4096, dispatches_per_token=100.0, n_params=1000, repeats=5, rounds=2,
    )  # fmt: skip
    return {**fields, **kw}


def frame(*rows):
    return pd.DataFrame([TimingRow(**r).model_dump() for r in rows])


def test_cpu_operator_counts_set_no_ceiling_and_cuda_kernel_counts_a_gpu_estimate():
    cpu_only = models_table(frame(row("a"), row("b")))
    assert "ceiling" not in cpu_only and "dispatches/token prefill T=256" in cpu_only
    mixed = models_table(frame(row("a", device="cuda", backend="fla"), row("b")))
    assert "launch-bound ceiling prefill, GPU estimate (tokens/s)" in mixed
    a, b = (line for line in mixed.splitlines() if line.startswith(("| a ", "| b ")))
    assert a.endswith("| 100 | 2k |")  # 1 / (100 launches x 5 us)
    assert b.endswith("| 100 | not a cap here |")


def test_the_models_table_names_whose_code_ran():
    assert implementation("torch-chunked") == "this project's PyTorch (chunk-parallel)"
    assert implementation("torch-chunked+sdpa-flash").endswith("+ PyTorch SDPA (flash kernel)")
    assert implementation("fla") == "upstream fla kernels (Triton)"
    assert implementation("my-kernel") == "`my-kernel`"  # a plug-in's own name, as it gives it
    table = models_table(frame(row("m", mode="train"), row("m", backend="mamba_ssm")))
    line = next(line for line in table.splitlines() if line.startswith("| m "))
    assert "this project's PyTorch (chunk-parallel) (train)" in line
    assert "upstream mamba-ssm kernels (CUDA, Triton) (prefill)" in line


def test_a_noisy_cell_is_greyed_and_never_ranked_fastest():
    part = frame(row("steady", tps=1000.0), row("noisy", tps=5000.0, spread=0.9), row("slow", tps=500.0))
    cells = dict(zip(part["label"], ranked_cells(part), strict=True))
    assert cells["steady"].startswith("**1k ±2%")  # the fastest cell that is not flagged
    assert cells["noisy"].startswith('<span style="color:gray">*(5k ±45%⚠')
    assert not cells["slow"].startswith("**")


def test_the_section_prints_the_batch_size_rounds_and_both_memory_figures(tmp_path):
    rows = [
        TimingRow(**row(m, mode, t))
        for m in ("a", "b")
        for mode in ("prefill", "decode")
        for t in (256, 1024)
    ]
    text = "\n".join(timing_section(rows, tmp_path))
    assert "batch size 4" in text and "5 repeats in each of 2 rounds" in text
    assert "## Peak memory: tensor bytes live at the peak of one call (MiB)" in text
    assert "CPU resident size at its peak over the timed calls, gross (MiB)" in text
    assert "| a | 300.0 | 300.0 |" in text
    header = next(line for line in text.splitlines() if line.startswith("| model | backend |"))
    assert "ceiling" not in header  # CPU cells only: no launch-bound column


def test_each_modes_dispatches_are_shown_at_its_own_longest_length():
    table = models_table(frame(row("a", mode="train", seq_len=256), row("a", mode="prefill", seq_len=4096)))
    header, _, line = table.splitlines()[:3]
    assert "dispatches/token train T=256" in header and "dispatches/token prefill T=4096" in header
    assert line.endswith("| 100 | 100 |")
