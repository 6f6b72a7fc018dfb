"""Fault-injection models, registered only in tests: each fails the way real sweeps fail."""

import os
import signal
import time
from pathlib import Path

from models.modules import LanguageModel
from tests.plugins.gru import GRUMixer
from tests.plugins.gru import build as build_gru


class _Faulty(GRUMixer):
    def __init__(self, d_model, fault, min_len):
        super().__init__(d_model)
        self.fault, self.min_len = fault, min_len

    def _maybe_fail(self, x) -> None:
        if x.shape[1] >= self.min_len:
            if self.fault == "oom":
                raise MemoryError("simulated: cannot allocate")
            if self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.fault == "hang":
                time.sleep(3600)
            if self.fault == "raise":
                raise RuntimeError("simulated kernel failure")

    def forward(self, x):
        self._maybe_fail(x)
        return super().forward(x)

    def prefill(self, x):  # prefill cells and decoding prompts go through here
        self._maybe_fail(x)
        return super().prefill(x)


def _factory(fault):
    def build(vocab_size=32, d_model=16, n_layers=1, backend="auto", min_len=64):
        return LanguageModel(vocab_size, d_model, n_layers, lambda i: _Faulty(d_model, fault, min_len))

    return build


oom = _factory("oom")
kill = _factory("kill")
hang = _factory("hang")
fail = _factory("raise")
healthy = build_gru


class _Slow(GRUMixer):
    def forward(self, x):
        time.sleep(0.3)
        return super().forward(x)

    def prefill(self, x):
        time.sleep(0.3)
        return super().prefill(x)


def slow(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
    return LanguageModel(vocab_size, d_model, n_layers, lambda i: _Slow(d_model))


class _Sleepy(GRUMixer):
    """Slower by a delay per forward: a stand-in for a code change that makes a model slower without
    changing its configuration (so its cells keep their keys). The delay is read at every call from
    ``delay_file`` when given (so one process can change it between runs), else from the environment
    variable TITANS_BENCH_TEST_DELAY (seconds)."""

    def __init__(self, d_model, delay_file):
        super().__init__(d_model)
        self.delay_file = delay_file

    def _sleep(self) -> None:
        if self.delay_file:
            delay = float(Path(self.delay_file).read_text())
        else:
            delay = float(os.environ.get("TITANS_BENCH_TEST_DELAY", "0"))
        time.sleep(delay)

    def forward(self, x):
        self._sleep()
        return super().forward(x)

    def prefill(self, x):
        self._sleep()
        return super().prefill(x)


def sleepy(vocab_size=32, d_model=16, n_layers=1, backend="auto", delay_file=None):
    return LanguageModel(vocab_size, d_model, n_layers, lambda i: _Sleepy(d_model, delay_file))


def returns_none(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
    """A factory with a bug: it forgets to return the model."""
    LanguageModel(vocab_size, d_model, n_layers, lambda i: _Slow(d_model))
