"""The language-model shell every family shares, and the mixer interface families implement.

    embedding -> N x [RMSNorm -> mixer -> residual, RMSNorm -> SwiGLU -> residual] -> RMSNorm -> tied head

Families differ only in the mixer (attention, Titans memory, Mamba, DeltaNet, ...), which is the
comparison the Titans and Gated DeltaNet papers make.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from models.modules.mlp import SwiGLU, swiglu_hidden
from models.modules.norm import RMSNorm


class Mixer(nn.Module):
    """A causal sequence mixer over [B, T, d_model]. Subclasses set ``backend`` to the kernels they
    really run and implement the methods below."""

    backend: str = "torch"
    # How the decoding state grows with the tokens seen: "linear" (a KV cache), "bounded" (a window)
    # or "constant" (a recurrent state). The conformance tests hold every model to what it declares.
    state_growth: str = "constant"

    # True where ``forward_from`` is implemented: a recurrent mixer that can continue a sequence from a
    # state with gradients (state-passing training carries it from one training window to the next).
    supports_state_passing: bool = False
    # True where the mixer learns at test time and ``set_test_time_writes`` can switch that off (Titans:
    # the memory's step size theta forced to 0), so that an evaluation can say what the writes are worth.
    has_test_time_writes: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_from(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Continue a sequence with gradients: x [B, T, d] after ``state`` (None: the initial state) ->
        (y [B, T, d], the state after x). Unlike ``prefill`` it is differentiable and runs in training mode;
        the caller detaches the returned state (``models.modules.state.detach_state``) before the next
        window, so gradients stop at the window boundary. ``forward_from(x, None)[0]`` equals
        ``forward(x)``, and a sequence split in two with the state carried gives the outputs of the whole."""
        raise NotImplementedError(f"{type(self).__name__} does not support state passing")

    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Diagnostics by position for x [B, T, d]: name -> tensor [B, T] (float32; NaN where a position is
        not measured). Every recurrent mixer reports ``state_norm`` (the Frobenius norm of its recurrent
        state after each token, summed over heads) and, where its initial state is not zero,
        ``state_norm_ratio`` (that norm over the initial state's); mixers may add their own (Titans: gates
        per memory layer, the fraction of the initial memory left). Slow paths are fine: reports call it
        on a few held-out examples, not in training. The default reports nothing."""
        return {}

    def set_test_time_writes(self, enabled: bool) -> None:
        """Switch the mixer's test-time learning on or off (only where ``has_test_time_writes``)."""
        raise NotImplementedError(f"{type(self).__name__} has no test-time writes")

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Process a prompt: (output [B, T, d], decoding state after it). The default runs ``step``
        token by token, which is correct but slow; families override it with their parallel form."""
        state = self.init_state(x.shape[0], x.device, x.dtype)
        outs = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            outs.append(y)
        return torch.stack(outs, 1), state

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One token: x [B, d] -> (y [B, d], new state). The given state may be updated in place (KV caches
        are, to avoid a copy per token): deep-copy a state before stepping it if it is needed again."""
        raise NotImplementedError

    def state_bytes(self, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        """Bytes of decoding state after ``seq_len`` tokens."""
        raise NotImplementedError

    def flops_per_token(self, seq_len: int) -> float:
        """Analytical forward FLOPs per token, averaged over a causal sequence of ``seq_len``."""
        raise NotImplementedError


class Block(nn.Module):
    def __init__(self, d_model: int, mixer: Mixer, mlp_hidden: int):
        super().__init__()
        self.mixer_norm = RMSNorm(d_model)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x))
        return x + self.mlp(self.mlp_norm(x))

    def forward_from(self, x: torch.Tensor, state):
        y, state = self.mixer.forward_from(self.mixer_norm(x), state)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), state

    def prefill(self, x: torch.Tensor):
        y, state = self.mixer.prefill(self.mixer_norm(x))
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), state

    def step(self, x: torch.Tensor, state):
        y, state = self.mixer.step(self.mixer_norm(x), state)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), state


class LanguageModel(nn.Module):
    """The public model interface used by the harness, the tests and plug-ins.

    ``make_mixer(layer_index)`` returns the mixer of each block.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        make_mixer: Callable[[int], Mixer],
        mlp_hidden: int | None = None,
    ):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.embed = nn.Embedding(vocab_size, d_model)
        hidden = mlp_hidden or swiglu_hidden(d_model)
        self.blocks = nn.ModuleList(Block(d_model, make_mixer(i), hidden) for i in range(n_layers))
        self.norm = RMSNorm(d_model)
        for block in self.blocks:  # mixers initialise themselves; only the shell's own layers here
            block.mlp.apply(_init_weights)
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)

    @property
    def backend(self) -> str:
        """The kernels that really run: each distinct mixer backend, in block order, joined by '+'."""
        names: list[str] = []
        for block in self.blocks:
            for name in block.mixer.backend.split("+"):
                if name not in names:
                    names.append(name)
        return "+".join(names)

    @property
    def state_growth(self) -> str:
        kinds = {block.mixer.state_growth for block in self.blocks}
        for kind in ("linear", "bounded", "constant"):
            if kind in kinds:
                return kind
        raise ValueError(f"unknown state growth {kinds}")

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h) @ self.embed.weight.t()  # tied output head

    def forward(self, input_ids: torch.Tensor, state: list | None = None, return_state: bool = False):
        """input_ids LongTensor [B, T] -> logits [B, T, vocab]. With ``return_state`` (state passing, see
        ``Mixer.forward_from``): continue from ``state`` (one entry per block; None: the initial state) and
        return (logits, the state after input_ids), with gradients through the window."""
        h = self.embed(input_ids)
        if not return_state:
            if state is not None:
                raise ValueError("a state to continue from needs return_state=True")
            for block in self.blocks:
                h = block(h)
            return self.head(h)
        if not self.supports_state_passing:
            kinds = sorted(
                {type(b.mixer).__name__ for b in self.blocks if not b.mixer.supports_state_passing}
            )
            raise ValueError(f"state passing is not supported by {', '.join(kinds)}")
        states = state if state is not None else [None] * len(self.blocks)
        new_states = []
        for block, s in zip(self.blocks, states, strict=True):
            h, s = block.forward_from(h, s)
            new_states.append(s)
        return self.head(h), new_states

    @property
    def supports_state_passing(self) -> bool:
        return all(block.mixer.supports_state_passing for block in self.blocks)

    @property
    def has_test_time_writes(self) -> bool:
        return any(block.mixer.has_test_time_writes for block in self.blocks)

    @contextlib.contextmanager
    def test_time_writes_off(self) -> Iterator[None]:
        """Within the block, every mixer that learns at test time runs without writing (then restored)."""
        mixers = [b.mixer for b in self.blocks if b.mixer.has_test_time_writes]
        for mixer in mixers:
            mixer.set_test_time_writes(False)
        try:
            yield
        finally:
            for mixer in mixers:
                mixer.set_test_time_writes(True)

    @torch.no_grad()
    def trace(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every mixer's diagnostics by position (``Mixer.trace``), keyed "block{i}.{name}", each [B, T]."""
        h = self.embed(input_ids)
        out: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            for name, values in block.mixer.trace(block.mixer_norm(h)).items():
                out[f"block{i}.{name}"] = values.float()
            h = block(h)
        return out

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor):
        """Process a prompt in parallel, as inference does: (logits [B, vocab] of the last position, the
        decoding state after the prompt). Only the last position goes through the output head: a serving
        stack needs nothing else, and at a large vocabulary the head of every position would dominate."""
        h = self.embed(input_ids)
        states = []
        for block in self.blocks:
            h, state = block.prefill(h)
            states.append(state)
        return self.head(h[:, -1]), states

    def init_state(self, batch_size: int) -> list:
        """Empty decoding state, one entry per block."""
        p = self.embed.weight
        return [b.mixer.init_state(batch_size, p.device, p.dtype) for b in self.blocks]

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state: list):
        """One decoding step: token_ids LongTensor [B] -> (logits [B, vocab], new state)."""
        h = self.embed(token_ids)
        new_state = []
        for block, s in zip(self.blocks, state, strict=True):
            h, s = block.step(h, s)
            new_state.append(s)
        return self.head(h), new_state

    def state_bytes(self, batch_size: int, seq_len: int) -> int:
        """Bytes of inference state after ``seq_len`` tokens (KV cache or recurrent state)."""
        dtype = self.embed.weight.dtype
        return int(sum(b.mixer.state_bytes(batch_size, seq_len, dtype) for b in self.blocks))

    def flops_per_token(self, seq_len: int) -> float:
        """Analytical forward FLOPs per token (matmuls only), for MFU."""
        per_block = sum(b.mixer.flops_per_token(seq_len) + b.mlp.flops_per_token() for b in self.blocks)
        return float(per_block + 2.0 * self.d_model * self.vocab_size)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def n_params_non_embedding(self) -> int:
        """Parameters outside the (tied) embedding: what papers compare models at."""
        return self.n_params() - self.embed.weight.numel()


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
