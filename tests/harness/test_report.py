from bench import results
from bench.analysis.report import write_report


def record(label, mode, seq_len, tps, status="ok"):
    rec = {
        "key": f"{label}/{mode}/{seq_len}",
        "label": label,
        "model": label,
        "mode": mode,
        "seq_len": seq_len,
        "batch_size": 1,
        "dtype": "float32",
        "device": "cpu",
        "d_model": 16,
        "n_layers": 1,
        "vocab_size": 32,
        "status": status,
        "wall_s": 30.0,
    }
    if status == "ok":
        rec.update(
            tokens_per_s=tps,
            median_s=1 / tps,
            iqr_s=0.1 / tps,
            peak_mem_bytes=2**20 * seq_len,
            state_bytes=64 * seq_len if label == "attn" else 4096,
            backend="torch",
            samples_s=[1 / tps],
        )
    else:
        rec.update(error="simulated: cannot allocate")
    return rec


def test_report_from_a_small_results_file(tmp_path):
    path = tmp_path / results.RESULTS
    for label in ("attn", "rnn"):
        for mode in ("train", "prefill", "decode"):
            for t, tps in ((128, 2000.0), (512, 1500.0)):
                results.append(path, record(label, mode, t, tps))
    results.append(path, record("rnn", "train", 4096, 0, status="oom"))
    results.write_manifest(tmp_path, {"name": "unit", "device": "cpu", "packages": {"torch": "x"}})
    text = write_report(tmp_path).read_text()
    assert text.startswith("# Benchmark report: unit")
    assert "| attn | **2k ±5%** | **1.5k ±5%** |" in text  # tied with rnn: the first is marked fastest
    assert "| rnn | train | 4096 | 1 | oom | simulated: cannot allocate |" in text
    assert "Cell wall clock, summed over 13 cells: 6.5 minutes." in text  # what the run cost
    assert "## Inference state size (KiB)" in text  # small states in a unit that shows them
    assert "| attn | 8.0 | 32.0 |" in text and "| rnn | 4.0 | 4.0 |" in text
    for png in ("throughput.png", "memory.png", "state_size.png"):
        assert (tmp_path / png).exists()


def test_cells_another_run_measured_are_named_as_such(tmp_path):
    """Records copied in from another run keep that run's id; the report says they are not this run's, and
    says nothing when every record is this run's or one of its resumptions'."""
    path = tmp_path / results.RESULTS
    for run_id, t in (("first", 128), ("later", 256), ("other", 512), ("other", 1024)):
        results.append(path, {**record("rnn", "train", t, 1000.0), "run_id": run_id})
    manifest = {"name": "unit", "device": "cpu", "packages": {}, "run_id": "first"}
    results.write_manifest(tmp_path, {**manifest, "resumed": [{"run_id": "later"}]})
    text = write_report(tmp_path).read_text()
    assert (
        "**2 of 4 cells were measured by another run** and copied into this one (run id and cells: other (2))"
        in text
    )
    results.write_manifest(tmp_path, {**manifest, "resumed": [{"run_id": "later"}, {"run_id": "other"}]})
    assert "measured by another run" not in write_report(tmp_path).read_text()
