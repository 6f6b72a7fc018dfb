"""Building blocks every model family shares, Titans and baselines alike: the language-model shell and the
mixer interface, norms, the MLP, rotary embeddings, attention with its KV cache, the short convolution,
the backend choice, dtypes and the base of every family's config."""

from models.modules.attention import Attention, KVCache
from models.modules.config import ModelConfig
from models.modules.conv import CausalConv1d
from models.modules.dtypes import compute_dtype, dtype_bytes, tensor_bytes
from models.modules.lm import Block, LanguageModel, Mixer
from models.modules.mlp import SwiGLU, swiglu_hidden
from models.modules.norm import GatedRMSNorm, RMSNorm
from models.modules.rotary import Rotary

__all__ = [
    "Attention",
    "Block",
    "CausalConv1d",
    "GatedRMSNorm",
    "KVCache",
    "LanguageModel",
    "Mixer",
    "ModelConfig",
    "RMSNorm",
    "Rotary",
    "SwiGLU",
    "compute_dtype",
    "dtype_bytes",
    "swiglu_hidden",
    "tensor_bytes",
]
