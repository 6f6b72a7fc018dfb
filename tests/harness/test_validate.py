import torch

from bench.cli import main
from bench.measure.backend_check import check_model as validate_model


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
