"""Fault-injection models, registered only in tests: each fails the way real sweeps fail."""

import os
import signal
import time

from models.modules import LanguageModel
from tests.plugins.gru import GRUMixer
from tests.plugins.gru import build as build_gru


class _Faulty(GRUMixer):
    def __init__(self, d_model, fault, min_len):
        super().__init__(d_model)
        self.fault, self.min_len = fault, min_len

    def forward(self, x):
        if x.shape[1] >= self.min_len:
            if self.fault == "oom":
                raise MemoryError("simulated: cannot allocate")
            if self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.fault == "hang":
                time.sleep(3600)
            if self.fault == "raise":
                raise RuntimeError("simulated kernel failure")
        return super().forward(x)


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


def slow(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
    return LanguageModel(vocab_size, d_model, n_layers, lambda i: _Slow(d_model))


class _Sleepy(GRUMixer):
    """Slower by TITANS_BENCH_TEST_DELAY seconds per forward: a stand-in for a code change that makes a
    model slower without changing its configuration (so its cells keep their keys)."""

    def forward(self, x):
        time.sleep(float(os.environ.get("TITANS_BENCH_TEST_DELAY", "0")))
        return super().forward(x)


def sleepy(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
    return LanguageModel(vocab_size, d_model, n_layers, lambda i: _Sleepy(d_model))


def returns_none(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
    """A factory with a bug: it forgets to return the model."""
    LanguageModel(vocab_size, d_model, n_layers, lambda i: _Slow(d_model))
