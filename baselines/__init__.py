"""Baseline sequence models the Titans memory is compared with: a Transformer, DeltaNet / Gated DeltaNet
and Mamba / Mamba2.

The ``deltanet`` and ``mamba`` subpackages hold their sequence-mixing operators in pure PyTorch (a
per-token reference and a fast chunked form each), so every baseline runs on a CPU without fla or
mamba-ssm installed; those packages are only used by the tests as independent references.
"""
