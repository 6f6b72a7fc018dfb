"""titans-bench: a benchmarking and comparison harness for long-context sequence models."""

from bench.errors import BenchError
from bench.registry import build, get_factory, list_models, register

__all__ = ["BenchError", "build", "get_factory", "list_models", "register"]
__version__ = "0.1.0"
