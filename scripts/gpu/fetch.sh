#!/usr/bin/env bash
# Download (here, with registry access) everything the GPU kit carries to a GPU machine without network:
# the Python 3.12 manylinux x86-64 wheels pinned in scripts/gpu/wheels.txt (pydantic and its dependencies,
# fla) and the sdists pinned in scripts/gpu/sdists.txt (causal-conv1d, mamba-ssm: they ship no wheels
# and are compiled there). Then checks, offline, that the wheels resolve for that Python together with
# what the GPU image already has (scripts/gpu/image.txt), prints each file's size and the total, and
# fails if the total is over 60 MiB (the checkout and what it carries must stay under 64 MiB).
#
# usage: scripts/gpu/fetch.sh [DEST]      DEST defaults to .gpu-wheels at the repository root (ignored by
#                                         git); other versions of the pinned packages in DEST are removed,
#                                         and a file of a package that is not pinned fails the check.
# Environment: PYTHON (default python3; needs pip, and torch: pip runs the sdists' setup.py to read their
# metadata), MAX_MIB (default 60).
set -euo pipefail

usage() { echo "usage: $0 [DEST]" >&2; exit 2; }
[[ $# -le 1 ]] || usage
[[ ${1:-} != -h && ${1:-} != --help ]] || usage

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KIT=$ROOT/scripts/gpu
DEST=${1:-$ROOT/.gpu-wheels}
PYTHON=${PYTHON:-python3}
MAX_MIB=${MAX_MIB:-60}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)

pins() {  # the `name==version` lines of a kit list, comments and `!name` lines dropped
    sed -e 's/#.*//' -e 's/[[:space:]]//g' "$1" | grep -v -e '^$' -e '^!'
}
mapfile -t WHEELS < <(pins "$KIT/wheels.txt")
mapfile -t SDISTS < <(pins "$KIT/sdists.txt")

PLATFORM_ARGS=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    PLATFORM_ARGS+=(--platform "$p")
done

echo "wheels for CPython 3.12 on manylinux x86-64 (no dependencies: wheels.txt lists them all): ${WHEELS[*]}"
"$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary :all: \
    --python-version 3.12 --implementation cp --abi cp312 "${PLATFORM_ARGS[@]}" \
    -d "$DEST" "${WHEELS[@]}"

# pip runs each sdist's setup.py to read its metadata: it imports torch (hence --no-build-isolation) and,
# without FORCE_BUILD and SKIP_CUDA_BUILD, looks for a CUDA toolkit or a prebuilt wheel to download.
echo "sdists: ${SDISTS[*]}"
MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
CAUSAL_CONV1D_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
    "$PYTHON" -m pip download --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
    -d "$DEST" "${SDISTS[@]}"

# One version of each: drop other versions of the pinned packages, which an earlier fetch with other pins
# left behind. Files of packages that are not pinned at all stay, and the check below fails on them.
"$PYTHON" "$KIT/kit_tools.py" prune "$DEST"
"$PYTHON" "$KIT/kit_tools.py" check-wheels "$DEST" --max-mib "$MAX_MIB"
if [[ $DEST == "$ROOT"/* ]]; then
    echo "carry it with the checkout: a device run names \"${DEST#"$ROOT"/}\" in its carry list"
fi
