#!/usr/bin/env bash
# Build and install the GPU kernels of the baselines on an H100/H200 machine without network access:
# causal-conv1d 1.7.0 and mamba-ssm 2.3.2.post1 compiled from their sdists for sm_90 only, plus the
# pure-Python fla wheels. Everything comes from the folder given as $1, filled beforehand by
# scripts/gpu/fetch.sh on a machine with registry access (carry it along, e.g. as .gpu-wheels/).
# scripts/gpu/run.sh runs it in the background while it validates and sweeps.
#
#   bash scripts/build_mamba_ssm_gpu.sh .gpu-wheels
#   # if a call has a time limit, run it in the background and poll the log:
#   nohup bash scripts/build_mamba_ssm_gpu.sh .gpu-wheels > build/gpu-build.log 2>&1 &
#
# Their setup.py files compile every kernel for up to 9 GPU architectures (sm_75 ... sm_121, depending
# on the nvcc version): about 20 CPU-minutes per architecture for the selective scan alone. Both are
# patched to keep only sm_90 (H100/H200). The two packages compile at the same time (mamba-ssm needs
# causal-conv1d only when it is imported, for the check at the end). The sources are unpacked into a
# persistent folder (BUILD_DIR) and built in place, so ninja resumes where an interrupted build stopped;
# a component that already imports at the right version is skipped, so the script can simply be run again.
#
# Environment: CUDA_HOME (default /usr/local/cuda), MAX_JOBS (parallel nvcc processes, default 12;
# each needs a few GB of memory), BUILD_DIR (default build/gpu-src under the repository), PYTHON.
set -euo pipefail

WHEELS=$(cd "${1:?usage: $0 FOLDER_WITH_SDISTS_AND_WHEELS}" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
BUILD_DIR=${BUILD_DIR:-$ROOT/build/gpu-src}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-12}
export TORCH_CUDA_ARCH_LIST="9.0"  # torch adds no arch flags of its own when setup.py passes some; kept for safety
FLA_VERSION=0.6.0
CONV_VERSION=1.7.0
MAMBA_VERSION=2.3.2.post1
PIP=("$PYTHON" -m pip install --no-build-isolation --no-index --no-deps)

die() { echo "error: $*" >&2; exit 1; }

version_of() {  # installed version of a distribution, or nothing
    "$PYTHON" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1"
}

# --- what the build needs, checked up front rather than half an hour in ---
[[ -x $CUDA_HOME/bin/nvcc ]] || die "no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)"
export PATH=$CUDA_HOME/bin:$PATH
"$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"' || die "torch with CUDA is needed"
"$PYTHON" -c 'import setuptools, wheel, packaging' || die "setuptools, wheel and packaging are needed (no build isolation)"
"$PYTHON" -c 'from torch.utils.cpp_extension import is_ninja_available as ok; assert ok()' \
    || die "ninja is needed (without it the kernels compile one file at a time)"
for f in "causal_conv1d-$CONV_VERSION.tar.gz" "mamba_ssm-$MAMBA_VERSION.tar.gz" \
         "fla_core-$FLA_VERSION-py3-none-any.whl" "flash_linear_attention-$FLA_VERSION-py3-none-any.whl"; do
    [[ -f $WHEELS/$f ]] || die "$WHEELS/$f is missing: run scripts/gpu/fetch.sh where there is network"
done
TORCH_BEFORE=$("$PYTHON" -c 'import torch; print(torch.__version__)')
echo "torch $TORCH_BEFORE, $("$CUDA_HOME/bin/nvcc" --version | grep release), MAX_JOBS=$MAX_JOBS"
"$PYTHON" -c 'import torch; print("GPU:", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())'

# --- fla: pure Python ---
if [[ $(version_of flash-linear-attention) == "$FLA_VERSION" && $(version_of fla-core) == "$FLA_VERSION" ]]; then
    echo "fla $FLA_VERSION already installed"
else
    "${PIP[@]}" "$WHEELS/fla_core-$FLA_VERSION-py3-none-any.whl" \
        "$WHEELS/flash_linear_attention-$FLA_VERSION-py3-none-any.whl"
fi

# Unpack an sdist (once) and cut its architecture list to sm_90. In both setup.py files each
# architecture is a pair of lines,
#     cc_flag.append("-gencode")
#     cc_flag.append("arch=compute_80,code=sm_80")
# some of them inside `if bare_metal_version >= ...:` blocks; every pair but sm_90's becomes `pass`,
# which keeps those blocks valid Python.
unpack_for_sm90() {  # sdist, source folder name
    local src=$BUILD_DIR/$2
    if [[ ! -d $src ]]; then
        mkdir -p "$BUILD_DIR"
        tar -xzf "$WHEELS/$1" -C "$BUILD_DIR"
        sed -i -E '/cc_flag\.append\("-gencode"\)/{N;/code=sm_90"/!s/^([[:space:]]*)cc_flag\.append.*$/\1pass/}' \
            "$src/setup.py"
    fi
    # the patch must leave exactly one architecture, sm_90, and valid Python
    [[ $(grep -c 'cc_flag.append("-gencode")' "$src/setup.py") == 1 ]] || die "$2/setup.py: unexpected -gencode lines"
    grep -q 'cc_flag.append("arch=compute_90,code=sm_90")' "$src/setup.py" || die "$2/setup.py: sm_90 line not found"
    "$PYTHON" -c 'import ast, sys; ast.parse(open(sys.argv[1]).read())' "$src/setup.py"
    echo "$src: architectures cut to sm_90"
}

build() {  # source folder name, log name; built in place so an interrupted build resumes
    local log=$BUILD_DIR/$2.log
    echo "building $1 (log: $log)"
    if ! (cd "$BUILD_DIR/$1" && "${PIP[@]}" -v . > "$log" 2>&1); then
        tail -n 60 "$log"
        die "building $1 failed"
    fi
}

# --- both compile at once: causal-conv1d has 4 files, mamba-ssm 10, so together they fit 16 cores ---
BUILDS=()  # pids of the builds running in the background
if [[ $(version_of causal-conv1d) == "$CONV_VERSION" ]] && "$PYTHON" -c 'import causal_conv1d_cuda' 2>/dev/null; then
    echo "causal-conv1d $CONV_VERSION already built"
else
    unpack_for_sm90 "causal_conv1d-$CONV_VERSION.tar.gz" "causal_conv1d-$CONV_VERSION"
    CAUSAL_CONV1D_FORCE_BUILD=TRUE build "causal_conv1d-$CONV_VERSION" causal_conv1d &
    BUILDS+=($!)
fi

# --- mamba-ssm: FORCE_BUILD, or its setup.py tries to download a prebuilt wheel ---
if [[ $(version_of mamba-ssm) == "$MAMBA_VERSION" ]] && "$PYTHON" -c 'import selective_scan_cuda' 2>/dev/null; then
    echo "mamba-ssm $MAMBA_VERSION already built"
else
    unpack_for_sm90 "mamba_ssm-$MAMBA_VERSION.tar.gz" "mamba_ssm-$MAMBA_VERSION"
    MAMBA_FORCE_BUILD=TRUE build "mamba_ssm-$MAMBA_VERSION" mamba_ssm &
    BUILDS+=($!)
fi
FAILED=0
for pid in "${BUILDS[@]}"; do
    wait "$pid" || FAILED=1
done
[[ $FAILED == 0 ]] || die "a build failed (its log's last lines are above)"
echo "builds done"

# --- check: the versions, torch untouched, and each compiled kernel against its reference on the GPU ---
TORCH_AFTER=$("$PYTHON" -c 'import torch; print(torch.__version__)')
[[ $TORCH_AFTER == "$TORCH_BEFORE" ]] || die "torch changed from $TORCH_BEFORE to $TORCH_AFTER"
"$PYTHON" - <<'PY'
import torch
import torch.nn.functional as F
from causal_conv1d import causal_conv1d_fn
from fla.layers import DeltaNet, GatedDeltaNet  # noqa: F401  (imports the Triton kernels)
from mamba_ssm import Mamba, Mamba2  # noqa: F401
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref

torch.manual_seed(0)
dev = "cuda"
b, d, n, L = 2, 64, 16, 256
u, delta, z = torch.randn(3, b, d, L, device=dev)
A = -torch.rand(d, n, device=dev)
B, C = torch.randn(2, b, n, L, device=dev)
D = torch.randn(d, device=dev)
out = selective_scan_fn(u, delta, A, B, C, D, z, delta_softplus=True)
ref = selective_scan_ref(u, delta, A, B, C, D, z, delta_softplus=True)
print("selective_scan_cuda vs reference, max abs error:", (out - ref).abs().max().item())
assert torch.allclose(out, ref, rtol=1e-3, atol=1e-3)

x = torch.randn(b, d, L, device=dev)
w, bias = torch.randn(d, 4, device=dev), torch.randn(d, device=dev)
conv = causal_conv1d_fn(x, w, bias)
conv_ref = F.conv1d(F.pad(x, (3, 0)), w[:, None], bias, groups=d)
print("causal_conv1d_cuda vs F.conv1d, max abs error:", (conv - conv_ref).abs().max().item())
assert torch.allclose(conv, conv_ref, rtol=1e-3, atol=1e-3)
print("GPU kernels ok")
PY
echo "done: torch $TORCH_AFTER, fla $(version_of fla-core), causal-conv1d $(version_of causal-conv1d), mamba-ssm $(version_of mamba-ssm)"
