"""Forward+backward throughput of our chunked Titans memory vs lucidrains' titans-pytorch NeuralMemory.

Both sides get the same input x: [batch, seq, d_model] and run x -> memory output, then .backward() of its
sum. Our side includes what the peer's module does around its memory (an RMSNorm, q/k/v projections and the
step-size / momentum / decay gate projections), so the ratio compares whole memory layers. Note the peer
takes every chunk's gradient at the initial weights by default, while ours takes it at the previous chunk's
memory as in the paper (§3.2).

The CPU is shared and noisy, so the sides alternate within one process (the order flips every repeat) and
the median of the repeats is reported, as wall-clock tokens/s and as process CPU time. Unless told otherwise
(--spin-wait, or OMP_WAIT_POLICY already set), OpenMP threads sleep instead of spinning while they wait:
on an oversubscribed CPU a spinning thread waits on a partner that is not running, which made both sides'
2-thread timings vary tenfold from run to run here. Both sides share the process and so the setting.

    pip install --no-deps titans-pytorch   # plus its small pure-python deps, never another torch
    python scripts/bench_titans_memory_vs_peer.py --seq 4096 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# must happen before torch (and its OpenMP runtime) loads
if "--spin-wait" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.titans import chunk_titans_memory  # noqa: E402


class OurMemoryLayer(nn.Module):
    """x: [B, T, d_model] -> [B, T, d_model]: projections, gates and the chunked memory op."""

    def __init__(self, dim: int, depth: int, expansion: int, chunk_size: int, max_lr: float = 0.1):
        super().__init__()
        self.chunk_size, self.max_lr = chunk_size, max_lr
        self.norm = nn.RMSNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_gates = nn.Linear(dim, 3)  # theta, eta, alpha logits (one head)
        sizes = [dim] + [dim * expansion] * (depth - 1) + [dim]
        self.params = nn.ParameterList(
            nn.Parameter(torch.randn(1, d_out, d_in) / d_in**0.5)
            for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x).unsqueeze(1)  # [B, 1, T, D]: one head
        q = F.normalize(self.to_q(h), dim=-1)
        k = F.normalize(self.to_k(h), dim=-1)
        v = self.to_v(h)
        theta, eta, alpha = torch.sigmoid(self.to_gates(h)).unbind(-1)
        # norm=True: x + LN(MLP(x)), the peer's default memory too (its ResidualNorm wrapper)
        y, _ = chunk_titans_memory(
            q, k, v, theta * self.max_lr, eta, alpha, tuple(self.params), self.chunk_size, norm=True
        )
        return y.squeeze(1)


def time_fwd_bwd(module: nn.Module, x: Tensor, returns_tuple: bool) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward + backward."""
    module.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter(), time.process_time()
    out = module(x)
    if returns_tuple:
        out = out[0]  # NeuralMemory returns (retrieved, next_state)
    out.sum().backward()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only-ours", action="store_true", help="skip the peer (no titans-pytorch needed)")
    parser.add_argument("--spin-wait", action="store_true", help="keep OpenMP's default busy waiting")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.seq, args.dim)
    sides: dict[str, tuple[nn.Module, bool]] = {
        "ours": (OurMemoryLayer(args.dim, args.depth, args.expansion, args.chunk), False)
    }
    if not args.only_ours:
        from titans_pytorch import NeuralMemory

        peer = NeuralMemory(
            dim=args.dim,
            chunk_size=args.chunk,
            heads=1,
            default_model_kwargs=dict(depth=args.depth, expansion_factor=args.expansion),
        )
        sides["titans-pytorch"] = (peer, True)

    walls: dict[str, list[float]] = {name: [] for name in sides}
    cpus: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(args.warmup + args.repeats):
        order = list(sides) if rep % 2 == 0 else list(reversed(sides))
        for name in order:
            module, returns_tuple = sides[name]
            wall, cpu = time_fwd_bwd(module, x, returns_tuple)
            if rep >= args.warmup:
                walls[name].append(wall)
                cpus[name].append(cpu)

    tokens = args.batch * args.seq
    print(
        f"d_model={args.dim} heads=1 depth={args.depth} expansion={args.expansion} chunk={args.chunk} "
        f"batch={args.batch} seq={args.seq} threads={args.threads} repeats={args.repeats} "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')} torch={torch.__version__}"
    )
    for name in sides:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        runs = ", ".join(f"{t:.2f}" for t in walls[name])
        print(f"{name:>15}: {tokens / wall:8.1f} tok/s (median {wall:.3f} s, cpu {cpu:.3f} s; runs {runs})")
    if len(sides) == 2:
        ours, peer = walls["ours"], walls["titans-pytorch"]
        ratio = statistics.median(peer) / statistics.median(ours)
        cpu_ratio = statistics.median(cpus["titans-pytorch"]) / statistics.median(cpus["ours"])
        # runs of the same repeat saw similar load, so their ratios are steadier than the ratio of medians
        paired = statistics.median(p / o for p, o in zip(peer, ours, strict=True))
        print(
            f"ours vs titans-pytorch: {ratio:.2f}x tokens/s (ratio of medians); {paired:.2f}x (median of "
            f"per-repeat ratios); {min(peer) / min(ours):.2f}x (best runs); {cpu_ratio:.2f}x by CPU time"
        )


if __name__ == "__main__":
    main()
