"""Training models: the optimizer and its schedule, the precision recipe, the training loop, and the
accuracy cell that trains a model on a task and has its scorer score it. Timing cells' train mode uses
the same optimizer and precision (``make_optimizer``, ``precision``), through this package's exports."""

from bench.train.amp import precision
from bench.train.optim import lr_at, make_optimizer, non_embedding

__all__ = ["lr_at", "make_optimizer", "non_embedding", "precision"]
