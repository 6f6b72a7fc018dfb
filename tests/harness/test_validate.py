"""bench validate: every backend against its family's reference, and every CPU operator of the baselines
against its upstream package's own reference function."""

import dataclasses
import json

import torch

from bench.cli import main
from bench.measure.backend_check import all_ok
from bench.measure.backend_check import check_model as validate_model
from bench.measure.upstream_check import CHECKS, check_upstream, run_check


def test_transformer_backends_agree_with_the_reference():
    rows = validate_model("transformer", torch.device("cpu"), 24, ["float32", "bfloat16"])
    assert {r["backend"] for r in rows} == {"sdpa-flash", "sdpa-math", "torch"}
    assert all(r["status"] == "ok" for r in rows), rows
    assert all(r["forward_rel_err"] < 1e-5 for r in rows if r["dtype"] == "float32")


def test_a_wrong_backend_is_caught_and_fails_the_command(tmp_path, capsys):
    rows = validate_model("tests.plugins.two_backends:build", torch.device("cpu"), 16, ["float32"])
    status = {r["backend"]: r["status"] for r in rows}
    assert status == {"torch": "ok", "wrong": "MISMATCH"}  # the unavailable backend is not attempted
    assert (
        main(
            [
                "validate",
                "--models",
                "tests.plugins.two_backends:build",
                "--seq-len",
                "16",
                "--out",
                str(tmp_path),
            ]
        )
        == 1
    )
    assert "MISMATCH" in (tmp_path / "VALIDATE.md").read_text()


def test_windows_and_segments_bind_and_hybrids_use_the_explicit_attention_reference():
    rows = validate_model("titans-mac", torch.device("cpu"), 30, ["float32"])
    assert {r["backend"] for r in rows} == {"torch-chunked", "torch-recurrent"}
    assert all(r["args"] == {"segment": 10} and r["status"] == "ok" for r in rows), rows
    assert all(r["reference_used"] == "torch-recurrent+torch" for r in rows)
    assert validate_model("titans-mal", torch.device("cpu"), 30, ["float32"])[0]["args"] == {"window": 10}
    assert validate_model("transformer", torch.device("cpu"), 30, ["float32"])[0]["args"] == {}


def test_every_cpu_op_of_the_baselines_matches_its_upstream_reference():
    """fla's naive delta rules and mamba-ssm's references, loaded as the tests load them: outputs, final
    states and gradients within 1e-4 for both of this project's backends of every baseline."""
    rows = check_upstream(["deltanet", "gated-deltanet", "mamba", "mamba2"], 40)
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    covered = {(r["model"], b) for r in rows for b in r["backend"].split(", ")}
    assert covered == {
        (m, b)
        for m in ("deltanet", "gated-deltanet", "mamba", "mamba2")
        for b in ("torch-chunked", "torch-recurrent")
    }
    assert all(r["grad_rel_err"] < 1e-4 for r in rows if "note" not in r)  # gradients too, where they exist


def test_a_wrong_operator_is_caught_against_the_upstream_reference():
    check = next(c for c in CHECKS if c.op == "delta_rule_chunked")

    def off_by_a_percent(**inputs):
        o, state = check.ours(**inputs)
        return o * 1.01, state

    row = run_check(dataclasses.replace(check, ours=off_by_a_percent), 40)
    assert row["status"] == "MISMATCH" and 5e-3 < row["forward_rel_err"] < 2e-2


def test_an_upstream_package_that_is_not_installed_is_named_not_failed():
    check = dataclasses.replace(CHECKS[0], load=lambda: None)
    row = run_check(check, 40)
    assert "fla not installed" in row["status"] and all_ok([row])


def test_validate_reports_the_upstream_rows(tmp_path):
    assert main(["validate", "--models", "mamba2", "--seq-len", "32", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "VALIDATE.md").read_text()
    assert "Against the upstream packages' references" in text and "ssd_minimal_discrete" in text
    rows = json.loads((tmp_path / "validate.json").read_text())["rows"]
    assert {r["op"] for r in rows if r.get("kind") == "upstream"} == {
        "ssd_chunked",
        "ssd_recurrent",
        "ssd_step (a decoding step)",
    }
