"""Test-only plug-ins that get the model interface wrong, each in one way a real plug-in does: a factory
that raises, calls that raise, logits of the wrong shape, no reference to validate against, and one that
is right but reads a tensor's value while it is built (so it cannot be built on the meta device)."""

import torch
from torch import nn

from models.modules import LanguageModel
from tests.plugins.gru import GRUMixer
from tests.plugins.gru import build as build_gru


def factory_raises(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
    raise RuntimeError("the plug-in's own bug")


class _Raises(GRUMixer):
    def __init__(self, d_model, call):
        super().__init__(d_model)
        self.call = call

    def forward(self, x):
        if self.call == "forward":
            raise KeyError("no such weight")
        return super().forward(x)

    def prefill(self, x):
        if self.call == "prefill":
            raise ZeroDivisionError("division by zero")
        return super().prefill(x)

    def step(self, x, h):
        if self.call == "step":
            raise IndexError("state index out of range")
        return super().step(x, h)


def _raising(call):
    def build(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
        return LanguageModel(vocab_size, d_model, n_layers, lambda i: _Raises(d_model, call))

    return build


forward_raises = _raising("forward")
prefill_raises = _raising("prefill")
step_raises = _raising("step")
forward_raises.available_backends = lambda: {"torch": True}
forward_raises.reference_backend = "torch"


class _Shaped(nn.Module):
    """A whole model that returns logits of a wrong shape from one call."""

    backend = "torch"

    def __init__(self, vocab_size, d_model, wrong):
        super().__init__()
        self.inner = build_gru(vocab_size, d_model, 1)
        self.wrong, self.vocab_size = wrong, vocab_size

    def forward(self, ids):
        logits = self.inner(ids)
        return logits[:, :-1] if self.wrong == "forward" else logits

    def prefill(self, ids):
        logits, state = self.inner.prefill(ids)
        if self.wrong == "prefill":  # every position's logits instead of the last one's
            logits = logits.unsqueeze(1).expand(-1, ids.shape[1], -1)
        return logits, state

    def init_state(self, batch_size):
        return self.inner.init_state(batch_size)

    def step(self, token_ids, state):
        logits, state = self.inner.step(token_ids, state)
        return (logits[:, :1] if self.wrong == "step" else logits), state

    def state_bytes(self, batch_size, seq_len):
        return self.inner.state_bytes(batch_size, seq_len)

    def flops_per_token(self, seq_len):
        return self.inner.flops_per_token(seq_len)

    def n_params(self):
        return self.inner.n_params()


def _shaped(wrong):
    def build(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
        return _Shaped(vocab_size, d_model, wrong)

    return build


wrong_forward = _shaped("forward")
wrong_prefill = _shaped("prefill")
wrong_step = _shaped("step")


def reads_a_value(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
    """A valid model whose construction reads a tensor's value, as a data-dependent initialisation does."""
    scale = torch.ones(1).item()
    model = build_gru(vocab_size, d_model, n_layers)
    model.scale = scale
    return model


def no_reference(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
    return build_gru(vocab_size, d_model, n_layers)


no_reference.available_backends = lambda: {"torch": True}


def no_backends(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
    return build_gru(vocab_size, d_model, n_layers)


no_backends.reference_backend = "torch"


def reference_factory_raises(vocab_size=32, d_model=16, n_layers=1, backend="auto"):
    raise RuntimeError("the plug-in's own bug")


reference_factory_raises.available_backends = lambda: {"torch": True}
reference_factory_raises.reference_backend = "torch"
