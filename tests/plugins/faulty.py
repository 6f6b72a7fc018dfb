"""Fault-injection models, registered only in tests: each fails the way real sweeps fail."""

import os
import signal
import time

from bench.lm import LanguageModel
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
