"""The config every model family's own config extends: the shape all models in a sweep share.

A family's factory takes its config object; ``bench.build(name, **kwargs)`` validates the keyword
arguments against it first, so an unknown argument or a wrong type is named before anything is built.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, PositiveInt


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: PositiveInt = 256
    d_model: PositiveInt = 256
    n_layers: PositiveInt = 2
    backend: str = "auto"  # the kernels to run; each family says which it has
    mlp_hidden: PositiveInt | None = None  # the SwiGLU's width; None: about 8/3 d_model
