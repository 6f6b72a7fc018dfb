"""Timing cells measure what their labels say: memory net of the runtime, decode memory after the prompt,
prefill as inference does it, training with its optimizer, warm-up until steady, FLOPs of what ran."""

import time

import pytest
import torch

from bench.measure.allocations import AllocationTrace, live_totals
from bench.measure.cell import make_model, measure_cell, model_flops_per_token, step_callable
from bench.measure.flops import peak_flops
from bench.measure.memory import PeakMemory
from bench.measure.timing import drift, settled, summarize, warm_up
from bench.spec.cells import TimingCell

CPU = torch.device("cpu")


def cell(mode, **fields):
    base = dict(model="transformer", label="transformer", vocab_size=512, d_model=64, n_layers=2,
                seq_len=64, batch_size=1, dtype="float32", mode=mode, device="cpu", repeats=2, warmup=1,
                threads=1)  # fmt: skip
    return TimingCell(**{**base, **fields})


def test_the_cpu_peak_can_be_reset_and_is_net_of_the_runtime():
    memory = PeakMemory(CPU)
    assert memory.resettable and memory.baseline > 50 * 2**20  # torch's runtime alone, before any model
    big = torch.ones(40 * 2**20 // 4)  # 40 MiB
    del big
    assert memory.peak() >= 39 * 2**20
    memory.reset()
    small = torch.ones(2 * 2**20 // 4)  # 2 MiB
    del small
    assert memory.peak() < 20 * 2**20  # the 40 MiB peak before the reset is gone
    # net = gross - baseline, read twice pages apart; floored at 0 when the process returned pages to the
    # system since the baseline was read (a CI machine did: gross 13 MiB below the baseline)
    gross, net = memory.gross_peak(), memory.peak()
    assert net == 0 if gross < memory.baseline else abs(gross - memory.baseline - net) < 2**20


def test_the_cpu_peak_counts_tensor_bytes_and_keeps_the_resident_size_as_the_gross_figure():
    record = measure_cell(cell("prefill", vocab_size=32000, d_model=128))
    weights = record["n_params"] * 4
    assert weights <= record["peak_mem_bytes"] < weights + 8 * 2**20  # the weights and one prefill's work
    assert record["peak_mem_gross_bytes"] > record["mem_baseline_bytes"] > 50 * 2**20  # the runtime, in gross
    assert "allocator" in record["peak_mem_source"] and "resident" in record["peak_mem_gross_source"]


def test_a_trace_counts_what_it_saw_allocated_and_ignores_what_is_older():
    older = torch.empty(5000)  # 20000 B before the trace: neither counted nor subtracted when freed
    with AllocationTrace() as trace:
        a = torch.empty(1000)  # 4000 B
        with trace.phase("work"):
            b = torch.empty(2500, dtype=torch.float64)  # 20000 B: 24000 live, the peak
            del a, older
            c = torch.empty(100)  # 400 B: 20400 live
        with trace.phase("idle"):  # allocates nothing: its peak is what was live when it began
            pass
    assert trace.peaks == {"work": 24000, "idle": 20400} and b.numel() + c.numel() == 2600


def test_live_totals_follow_addresses():
    events = [(1, 0xA, 100), (2, 0xB, 50), (3, 0xA, -100), (4, 0xC, -70), (5, 0xA, 30)]
    assert live_totals(events) == ([1, 2, 3, 4, 5], [100, 150, 50, 50, 80])  # 0xC: older than the trace


SIZED = dict(model="tests.plugins.sized:build", label="sized", vocab_size=32, d_model=8, batch_size=2)


def test_the_allocator_count_is_exact_to_the_byte():
    """tests/plugins/sized.py allocates known tensors. B=2, T=64, vocabulary 32, width 8, float32: weights
    32*8*4 = 1024 B; the prompt ids B*T*8 = 1024 B (int64); a prompt's activation B*T*1000*4 = 512000 B,
    its logits B*32*4 = 256 B and state B*300*4 = 2400 B; a step's activation B*1000*4 = 8000 B."""
    weights, ids, activation, logits, state, step_activation = 1024, 1024, 512000, 256, 2400, 8000
    prefill = measure_cell(cell("prefill", **SIZED))
    assert prefill["peak_mem_bytes"] == weights + ids + activation + logits + state
    decode = measure_cell(cell("decode", decode_tokens=3, **SIZED))
    tokens = 3 * 2 * 8  # the decoded tokens, int64
    # the prompt's peak is the prefill's, plus the tokens to decode (the previous state is freed first)
    assert decode["prompt_peak_mem_bytes"] == prefill["peak_mem_bytes"] + tokens
    # during a step: the state kept from the prompt, the last step's logits and state, and this step's
    assert decode["peak_mem_bytes"] == (
        weights + ids + tokens + state + (logits + state) + (step_activation + logits + state)
    )


def test_the_training_peak_holds_weights_gradients_and_both_moments_and_repeats_exactly():
    first, second = (measure_cell(cell("train", **SIZED)) for _ in range(2))
    params = 32 * 8 * 4
    assert first["peak_mem_bytes"] >= 4 * params  # weights, gradients and AdamW's two moments
    assert first["peak_mem_bytes"] == second["peak_mem_bytes"]  # counted, not sampled: the same bytes


def test_decode_memory_is_the_state_not_the_prompt():
    """A 1024-token prompt at vocabulary 32000: all-position logits would be 125 MiB. The decode peak is
    measured after the prompt (weights, KV cache, a step), and the prompt's peak is recorded beside it."""
    record = measure_cell(cell("decode", vocab_size=32000, seq_len=1024, decode_tokens=4))
    weights, logits_all = record["n_params"] * 4, 1024 * 32000 * 4
    # the cache held from the prompt and the one a step returns, the logits of a step (and of the last)
    assert record["peak_mem_bytes"] < weights + 2 * record["state_bytes"] + 2 * 32000 * 4 + 2**20
    assert record["prompt_peak_mem_bytes"] < logits_all / 2  # prefill made the last position's logits only


def test_a_recurrent_models_decode_peak_does_not_grow_with_the_prompt():
    """DeltaNet's state is constant in T, so the decode peak (weights, the state, a step) must be too: a
    state that kept a view into the prompt's activations (its short convolution's input, say) would
    hold them all, and the count would grow with T. The prompt's peak does grow."""
    short, long = (
        measure_cell(cell("decode", model="deltanet", label="deltanet", seq_len=t, decode_tokens=2))
        for t in (128, 2048)
    )
    assert long["peak_mem_bytes"] < 1.05 * short["peak_mem_bytes"]
    assert long["prompt_peak_mem_bytes"] > 2 * short["prompt_peak_mem_bytes"]


def test_prefill_computes_the_last_logits_and_the_state():
    model, autocast = make_model(cell("prefill"), CPU)
    ids = torch.randint(0, 512, (2, 10))
    logits, state = model.prefill(ids)
    assert logits.shape == (2, 512) and len(state) == 2
    torch.testing.assert_close(logits, model(ids)[:, -1], rtol=1e-5, atol=1e-5)


def test_a_train_call_is_a_whole_optimizer_step():
    c = cell("train", vocab_size=32000, seq_len=16)
    model, autocast = make_model(c, CPU)
    fn, tokens, setup = step_callable(c, model, CPU, autocast)
    before = [p.detach().clone() for p in model.parameters()]
    fn()
    assert tokens == 16 and setup is None
    assert all(
        not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)
    )  # AdamW stepped
    record = measure_cell(c)
    # weights, gradients and AdamW's two moments, all float32: 16 bytes a parameter at least
    assert record["peak_mem_bytes"] >= 16 * record["n_params"] * 0.95


def test_half_precision_training_keeps_float32_master_weights():
    model, autocast = make_model(cell("train", dtype="bfloat16"), CPU)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model, _ = make_model(cell("prefill", dtype="bfloat16"), CPU)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # inference runs in the cell's dtype


def test_warm_up_continues_until_the_timings_stop_improving():
    durations = iter([0.25, 0.2, 0.15, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])  # long enough to time under load
    warm = warm_up(lambda: time.sleep(next(durations)), CPU, min_calls=2, max_calls=9)
    assert warm.settled and warm.calls == 6  # the last two (0.1 s) no faster than the best before them
    getting_faster = iter([0.2 * 0.8**i for i in range(20)])  # never settles: the cap ends it
    never = warm_up(lambda: time.sleep(next(getting_faster)), CPU, min_calls=2, max_calls=5)
    assert never.calls == 5 and not never.settled
    assert settled([1.0, 0.8, 0.81, 1.5, 0.79])  # a slow outlier is noise, not a trend
    assert not settled([1.0, 0.9, 0.8, 0.7])  # still getting faster


def test_drift_is_flagged():
    assert drift([0.737, 0.713, 0.612, 0.483, 0.483]) == pytest.approx(0.7250 / 0.483 - 1)
    assert summarize([0.737, 0.713, 0.612, 0.483, 0.483], 1024)["drifting"]
    assert not summarize([0.5, 0.51, 0.49, 0.5, 0.5], 1024)["drifting"]


def test_mfu_uses_the_peak_of_what_ran():
    assert peak_flops("NVIDIA H100 80GB HBM3", "float32", tf32=False) == pytest.approx(66.9e12)
    assert peak_flops("NVIDIA H100 80GB HBM3", "float32", tf32=True) == pytest.approx(494.7e12)
    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(989.4e12)
    assert peak_flops(None, "float32") is None


def test_decode_flops_are_a_step_at_context_t_not_the_prompt_average():
    model, _ = make_model(cell("decode", seq_len=4096, decode_tokens=1), CPU)
    step = model_flops_per_token(cell("decode", seq_len=4096, decode_tokens=1), model)
    average = model.flops_per_token(4096)
    assert step > average  # attention over all 4096 keys, not the causal average of ~2048
    head = 2.0 * 64 * 512
    prefill = model_flops_per_token(cell("prefill", seq_len=4096), model)
    assert prefill == pytest.approx(average - head * (1 - 1 / 4096))  # the head at one position only


@pytest.mark.parametrize("mode", ["train", "prefill", "decode"])
def test_every_cell_counts_its_dispatches_per_token(mode):
    record = measure_cell(cell(mode, seq_len=32, decode_tokens=2))
    tokens = 32 if mode != "decode" else 2
    assert record["dispatches_per_token"] * tokens == int(round(record["dispatches_per_token"] * tokens))
    assert record["dispatches_per_token"] > 0


def test_isolated_cells_wait_passively_for_their_threads(monkeypatch):
    """The forkserver starts with OMP_WAIT_POLICY=PASSIVE unless the user set a policy, so a busy core
    slows a cell's parallel regions instead of leaving a partner thread spinning."""
    from bench.running import isolation

    isolation.shutdown()  # a server started before this test kept the environment it started with
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    try:
        record = isolation.run_isolated(cell("prefill", seq_len=16, threads=2), timeout_s=300)
        assert record["status"] == "ok" and record["thread_wait_policy"] == "PASSIVE"
    finally:
        isolation.shutdown()


def test_each_decoding_call_starts_from_a_fresh_copy_of_one_prompts_state():
    c = cell("decode", model="deltanet", label="deltanet", seq_len=64, decode_tokens=2)
    model, autocast = make_model(c, CPU)
    calls = []
    prefill = model.prefill
    model.prefill = lambda ids: calls.append(ids.shape) or prefill(ids)
    fn, tokens, setup = step_callable(c, model, CPU, autocast)
    setup()
    first = setup.holder["state"]
    fn()
    setup()
    again = setup.holder["state"]
    assert calls == [(1, 64)]  # the prompt ran once; the second call got a copy
    assert again is not first and all(
        torch.equal(a, b)
        for a, b in zip(first[0].__dict__.values(), again[0].__dict__.values(), strict=True)
        if isinstance(a, torch.Tensor)
    )
    setup.prompt()  # the memory trace's prompt phase runs the prompt itself
    assert len(calls) == 2
