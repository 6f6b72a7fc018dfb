#!/usr/bin/env bash
# Download (here, with registry access) what scripts/build_mamba_ssm_gpu.sh installs on a GPU machine
# that has no network: the sdists of mamba-ssm and causal-conv1d (they ship no wheels; the CUDA code is
# compiled there) and the pure-Python wheels of fla. Usage: scripts/fetch_gpu_wheels.sh [DEST=.whl]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$ROOT/.whl}
PYTHON=${PYTHON:-python}
mkdir -p "$DEST"

"$PYTHON" -m pip download --no-deps --only-binary :all: -d "$DEST" \
    fla-core==0.6.0 flash-linear-attention==0.6.0

# pip runs each sdist's setup.py to read its metadata: it imports torch (hence --no-build-isolation)
# and, without FORCE_BUILD / SKIP_CUDA_BUILD, looks for a CUDA toolkit or a prebuilt wheel to download
MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
CAUSAL_CONV1D_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
    "$PYTHON" -m pip download --no-deps --no-binary :all: --no-build-isolation -d "$DEST" \
    mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0

ls -l "$DEST"
