"""Imported once by the cells' forkserver (``isolation._fork_context``): the built-in models, tasks and
scorers.

Every cell is forked from that server, so what it imports here no cell imports again. The Titans module
alone pulls in ``torch._dynamo`` (about 1.4 s on the 2-core machine), which a default run would otherwise
pay in each of its ~70 cells. Importing runs no torch kernels, so the server still forks no thread pool.
"""

from bench.registry import MODELS, SCORERS, TASKS

MODELS.names()
TASKS.names()
SCORERS.names()
