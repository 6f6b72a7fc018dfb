"""Baseline sequence models the Titans memory is compared with: a Transformer (``transformer``), DeltaNet /
Gated DeltaNet (``deltanet``) and Mamba / Mamba2 (``mamba``), each with its operators in pure PyTorch (a
per-token reference and a fast chunked form) and, on CUDA, the field's own kernels. ``titans_pytorch`` is
the peer implementation of the Titans memory, loaded by path as a plug-in, never registered.
"""
