"""Prior benchmark: denoiser calls per second and peak memory of each shipped prior on this
CPU, and the wrapper overhead of ``denoise`` over the bare network forward, side by side.

Run: ``python -m experiments.benchmarks.priors`` (or ``dipswarm bench priors``).
Target (issue 3): wrapper overhead under 5%.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from experiments.cli_help import bench_parser


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(name: str, batch: int, repeats: int) -> dict[str, float]:
    """Figures for one prior, measured in this process (run it in a fresh one for memory)."""
    from solvers.priors import load

    prior = load(name)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *prior.shape, generator=gen)
    sigma = torch.full((batch,), 0.5)
    scale = 1.0 / torch.sqrt(1.0 + sigma**2).view(-1, *([1] * len(prior.shape)))
    t = prior.timestep(sigma).to(x.dtype)
    loaded_rss = _rss_mb()
    with torch.no_grad():
        for _ in range(3):  # warm-up both paths
            prior.denoise(x, sigma)
            prior.network(x * scale, t)
        wrapped, bare = [], []
        for _ in range(repeats):  # interleaved, so both see the same machine state
            start = time.perf_counter()
            prior.denoise(x, sigma)
            wrapped.append(time.perf_counter() - start)
            start = time.perf_counter()
            prior.network(x * scale, t)
            bare.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wrapped.sort()
    bare.sort()
    median_wrapped, median_bare = wrapped[len(wrapped) // 2], bare[len(bare) // 2]
    return {
        "calls_per_second": 1.0 / median_wrapped,
        "samples_per_second": batch / median_wrapped,
        "overhead_percent": 100.0 * (median_wrapped / median_bare - 1.0),
        "peak_rss_mb": peak_rss,
        "loaded_rss_mb": loaded_rss,
        "parameters": sum(p.numel() for p in prior.parameters()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("priors", __doc__)
    parser.add_argument("--batch", type=int, default=16, help="rows per denoiser call")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per prior (median)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one prior
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.repeats)))
        return
    from solvers.priors import available

    names = [n for n in available() if n != "gmm"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, float32, batch "
        f"{args.batch}, sigma 0.5, median of {args.repeats} interleaved calls\n"
    )
    print(
        "| prior | params | denoise calls/s | samples/s | wrapper overhead | peak RSS MB "
        "(after load) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        command = [
            sys.executable,
            "-m",
            "experiments.benchmarks.priors",
            "--one",
            name,
            "--batch",
            str(args.batch),
            "--repeats",
            str(args.repeats),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"| {name} | {r['parameters']:,} | {r['calls_per_second']:.1f} | "
            f"{r['samples_per_second']:.0f} | {r['overhead_percent']:+.1f}% | "
            f"{r['peak_rss_mb']:.0f} ({r['loaded_rss_mb']:.0f}) |"
        )


if __name__ == "__main__":
    main()
