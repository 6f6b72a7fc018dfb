"""A test-only family with a reference backend and a deliberately wrong "fast" one, for `validate`."""

from models.modules import LanguageModel
from tests.plugins.gru import GRUMixer


class _Wrong(GRUMixer):
    def forward(self, x):
        return super().forward(x) * 1.01  # a 1% error: what a broken kernel looks like


def build(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
    mixer = _Wrong if backend == "wrong" else GRUMixer
    return LanguageModel(vocab_size, d_model, n_layers, lambda i: mixer(d_model))


build.available_backends = lambda: {"auto": True, "torch": True, "wrong": True, "cuda-only": "needs CUDA"}
build.reference_backend = "torch"
