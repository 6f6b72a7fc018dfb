"""`--compile`: one compiled prefill cell per family (half the compile time of a training cell; the Titans
memory's compiled training step is tested in tests/ops) runs through the real sweep path at small shapes,
its compile time recorded and its dispatches counted from the compiled kernels."""

import pytest

from bench import results
from bench.cli import main
from tests.helpers import tiny_sweep

pytestmark = pytest.mark.slow

FAMILIES = "transformer,mamba2,gated-deltanet,titans-lmm"
SWEEP = ["--models", FAMILIES, "--modes", "prefill", "--seq-lens", "32", *tiny_sweep("--d-model", "32"),
         "--no-report", "--timeout", "600"]  # fmt: skip


def test_one_compiled_cell_per_family(tmp_path):
    assert main(["run", *SWEEP, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    frame = results.load(tmp_path / "compiled").set_index("label")
    assert set(frame.index) == set(FAMILIES.split(","))
    assert (frame["status"] == "ok").all(), frame.get("error")
    assert frame["compile"].all() and (frame["compile_s"] > 0).all()
    assert (frame["dispatches_per_token"] > 0).all()
    # the same cells eager have other keys: a compiled run is never compared with an eager one
    assert main(["run", *SWEEP, "--out", str(tmp_path / "eager")]) == 0
    assert not set(results.load(tmp_path / "eager")["key"]) & set(frame["key"])
