"""The ledger's OOM skip rule: a group's longer lengths are skipped after an OOM in the same round, never
across rounds, and ``--retry-failed`` learns the boundary again from its retries."""

from __future__ import annotations

from bench import results
from bench.running.ledger import Ledger
from bench.spec.cells import TimingCell

BASE = dict(
    model="transformer", label="transformer", vocab_size=512, d_model=128, n_layers=2, batch_size=1,
    dtype="float32", mode="prefill", device="cpu",
)  # fmt: skip


def cells() -> list[TimingCell]:
    return [TimingCell(**BASE, seq_len=n) for n in (1024, 2048, 4096)]


def test_an_oom_skips_longer_lengths_in_its_round_only(tmp_path):
    short, mid, long = cells()
    ledger = Ledger([short, mid, long], tmp_path / results.RESULTS, resume=False, retry_failed=False)
    for cell in (short, mid, long):
        assert ledger.settle(cell, 0)
        ledger.record(cell, {"status": "ok", "wall_s": 1.0}, 0)
    # round 1: a transient OOM at 2048 leaves 4096 unmeasured in round 1, with no record that would stand
    # over its round-0 measurement as the latest
    assert ledger.settle(short, 1)
    ledger.record(short, {"status": "ok", "wall_s": 1.0}, 1)
    assert ledger.settle(mid, 1)
    ledger.record(mid, {"status": "oom", "wall_s": 1.0}, 1)
    assert not ledger.settle(long, 1)
    latest = {r["key"]: r["status"] for r in results.read_records(tmp_path / results.RESULTS)}
    assert latest[long.key] == "ok"
    # round 2 is a round of its own: the OOM of round 1 does not rule 4096 out there
    assert ledger.settle(long, 2)


def test_retry_failed_learns_the_boundary_again(tmp_path):
    short, mid, long = cells()
    path = tmp_path / results.RESULTS
    first = Ledger([short, mid, long], path, resume=False, retry_failed=False)
    first.record(short, {"status": "ok", "wall_s": 1.0})
    first.record(mid, {"status": "oom", "wall_s": 1.0})  # another job held the memory
    assert not first.settle(long)  # recorded as skipped
    other = tmp_path / "other"
    other.mkdir()
    (other / results.RESULTS).write_text(path.read_text())
    # a plain resume keeps the boundary: nothing to run
    again = Ledger([short, mid, long], path, resume=True, retry_failed=False)
    assert not any(again.settle(c) for c in (short, mid, long))
    # --retry-failed retries 2048, and once it fits, 4096 is measured too
    retry = Ledger([short, mid, long], path, resume=True, retry_failed=True)
    assert not retry.settle(short) and retry.settle(mid)
    retry.record(mid, {"status": "ok", "wall_s": 1.0})
    assert retry.settle(long)
    # and when the retry runs out of memory again, the longer length is skipped again
    retry = Ledger([short, mid, long], other / results.RESULTS, resume=True, retry_failed=True)
    assert retry.settle(mid)
    retry.record(mid, {"status": "oom", "wall_s": 1.0})
    assert not retry.settle(long)
