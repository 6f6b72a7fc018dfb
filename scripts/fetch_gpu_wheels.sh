#!/usr/bin/env bash
# Superseded by scripts/gpu/fetch.sh (the GPU kit: scripts/gpu/README.md), which downloads a superset of
# what this script did (fla's wheels and the mamba-ssm/causal-conv1d sdists, plus pydantic and its
# dependencies, which the GPU machines lack) and checks offline that the wheels resolve there. Kept as
# a thin wrapper, with its old default folder, for the instructions that still name it; remove it once
# they point at scripts/gpu/. Usage: scripts/fetch_gpu_wheels.sh [DEST=.whl]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec bash "$ROOT/scripts/gpu/fetch.sh" "${1:-$ROOT/.whl}"
