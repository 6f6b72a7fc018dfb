#!/usr/bin/env bash
# Make the upstream reference implementations importable on a CPU-only machine, for the tests marked
# `upstream` (tests/upstream.py loads them):
#   fla        flash-linear-attention[cpu] 0.6.0 (pure Python; the [cpu] extra brings an import-only triton)
#   mamba-ssm  2.3.2.post1 from its sdist with the CUDA build skipped (only the pure-PyTorch files are used)
#
# torch must already be installed; it is never replaced: the exact installed version is passed to pip as
# a requirement, so a dependency asking for another torch makes pip fail instead of pulling a multi-GB
# CUDA build, and the version is checked again at the end. Idempotent: what is already installed at the
# right version is left alone. Usage: scripts/install_cpu_references.sh  (PYTHON=... to pick the interpreter)
set -euo pipefail

PYTHON=${PYTHON:-python}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FLA_VERSION=0.6.0
MAMBA_VERSION=2.3.2.post1

version_of() {  # installed version of a distribution, or nothing
    "$PYTHON" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1"
}

TORCH_VERSION=$("$PYTHON" -c 'import torch; print(torch.__version__)') || {
    echo "torch is not installed: install it first (CI uses torch==2.13.0, CPU build)" >&2
    exit 1
}
echo "torch $TORCH_VERSION"

if [[ $(version_of flash-linear-attention) == "$FLA_VERSION" && $(version_of fla-core) == "$FLA_VERSION" \
      && -n $(version_of triton) ]]; then
    echo "fla $FLA_VERSION already installed"
else
    "$PYTHON" -m pip install "torch==$TORCH_VERSION" "flash-linear-attention[cpu]==$FLA_VERSION"
fi

if [[ $(version_of mamba-ssm) == "$MAMBA_VERSION" ]]; then
    echo "mamba-ssm $MAMBA_VERSION already installed"
else
    # --no-build-isolation builds against the installed torch, so its build requirements must be here
    "$PYTHON" -c 'import setuptools, wheel, packaging' 2>/dev/null \
        || "$PYTHON" -m pip install "setuptools>=61" wheel packaging
    # FORCE_BUILD: without it setup.py tries to download a prebuilt CUDA wheel and fails;
    # SKIP_CUDA_BUILD: no selective_scan_cuda extension (there is no nvcc here)
    MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
        "$PYTHON" -m pip install --no-build-isolation "torch==$TORCH_VERSION" "mamba-ssm==$MAMBA_VERSION"
fi

AFTER=$("$PYTHON" -c 'import torch; print(torch.__version__)')
if [[ $AFTER != "$TORCH_VERSION" ]]; then
    echo "torch changed from $TORCH_VERSION to $AFTER: reinstall torch==$TORCH_VERSION" >&2
    exit 1
fi

cd "$ROOT"
"$PYTHON" -c 'import sys; sys.path.insert(0, "tests"); import upstream; upstream.check_all()'
echo "references ready; torch still $AFTER"
