"""Compile the Titans memory's Triton kernels for a GPU without one: a GPU-side check on any machine.

    python scripts/gpu/compile_titans_kernels.py [--arch 90] [--head-dim 64] [--hidden 256] [--chunk-size 16]
                                                 [--precision ieee|tf32]

Triton's NVIDIA backend (with the ptxas it ships) compiles for a named architecture without a driver, so
what the CPU interpreter cannot show is checked here: that every kernel compiles (dot shapes, layouts,
types of loop-carried values), and what it costs in registers, spills and shared memory at the launch
configuration models/titans/triton_chunk.py would use. One line per kernel; exit status 1 if one fails to
compile. The flags that switch code paths on (base, saved memory, written base, base gradient, forgetting
toward the initial memory) are all on.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compiled, not interpreted, before the kernels are imported
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from models.titans import triton_kernels as kernels  # noqa: E402
from models.titans.triton_chunk import ACT_CODES, D1_BACKWARD_MAXNREG, launch_config  # noqa: E402


def signature(fn, constants: dict, dtype: str) -> dict:
    """Triton's signature of a kernel: pointers to ``dtype``, eps a float, the other arguments int32."""
    sig = {}
    for name in fn.arg_names:
        if name in constants:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = f"*{dtype}"
        else:
            sig[name] = "fp32" if name == "eps" else "i32"
    return sig


def resource_usage(cubin: bytes) -> str:
    """REG, STACK (spilled bytes per thread), SHARED from the cuobjdump that Triton ships."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True)
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", out.stdout)
    return f"registers {found[1]}, spilled {found[2]} B/thread, static shared {found[3]} B" if found else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256, help="the depth-2 memory's hidden width")
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--precision", default="ieee", choices=["ieee", "tf32"])
    args = parser.parse_args()
    common = dict(
        ACT=ACT_CODES["gelu"], NORM=True, RESIDUAL=True, HAS_BASE=True, TO_INIT=True, PRECISION=args.precision
    )
    failed = 0
    for depth in (1, 2):
        hidden = args.head_dim if depth == 1 else args.hidden
        conf = launch_config(args.chunk_size, args.head_dim, hidden)
        num_warps = conf.pop("num_warps")
        if depth == 1:
            conf.pop("BLOCK_H")
        for fn, extra in (
            (getattr(kernels, f"titans_fwd_d{depth}_kernel"), dict(SAVE=True, WRITE_BASE=True)),
            (getattr(kernels, f"titans_bwd_d{depth}_kernel"), dict(ADD_BASE_GRAD=True)),
        ):
            constants = {**conf, **common, **extra}
            maxnreg = D1_BACKWARD_MAXNREG if fn is kernels.titans_bwd_d1_kernel else None
            src = triton.compiler.ASTSource(
                fn=fn, signature=signature(fn, constants, "fp32"), constexprs=constants
            )
            try:
                compiled = triton.compile(
                    src,
                    target=GPUTarget("cuda", args.arch, 32),
                    options=dict(num_warps=num_warps, num_stages=1, maxnreg=maxnreg),
                )
            except Exception as err:  # noqa: BLE001 - report every kernel, then fail
                print(f"{fn.__name__}: FAILED: {type(err).__name__}: {str(err)[:2000]}")
                failed += 1
                continue
            print(
                f"{fn.__name__}: sm_{args.arch}, {num_warps} warps, {conf}: "
                f"{resource_usage(compiled.asm['cubin'])}, shared {compiled.metadata.shared} B"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
