"""Operator benchmark: forward and adjoint/VJP time of every operator at 256x256x3, batch 4,
and FFT vs direct convolution for the 61x61 blurs, measured side by side in one run.

Run: ``python -m experiments.benchmarks.operators`` (or ``dipswarm bench operators``).
Target (issue 2): FFT at least 5x faster than direct convolution for the 61x61 kernels.
"""

from __future__ import annotations

import functools

import torch

import operators
from experiments.benchmarks.timing import median_seconds
from experiments.cli_help import bench_parser

SHAPE = (3, 256, 256)


def _build(name: str) -> operators.Operator:
    if name == "matrix":
        a = torch.randn(4096, 196_608 // 48, generator=torch.Generator().manual_seed(0))
        return operators.build("matrix", A=a)
    if name == "nonlinear_blur":  # random weights: the timing is that of the real network
        return operators.build("nonlinear_blur", shape=SHAPE, random_init=True)
    return operators.build(name, shape=SHAPE)


def _input(op: operators.Operator, batch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(batch, *op.input_shape, generator=gen) * 2 - 1


def time_operator(op: operators.Operator, batch: int, repeats: int) -> tuple[float, float, str]:
    """(forward seconds, adjoint-or-VJP seconds, which of the two was timed)."""
    x = _input(op, batch)
    with torch.no_grad():
        forward = median_seconds(lambda: op(x), repeats)
        if op.is_linear:
            v = op(x)
            return forward, median_seconds(lambda: op.adjoint(v), repeats), "adjoint"
    x.requires_grad_(True)

    def vjp() -> None:
        y = op(x)
        torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y))

    return forward, median_seconds(vjp, repeats), "VJP"


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("operators", __doc__)
    parser.add_argument("--batch", type=int, default=4, help="images per operator call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per operator (median)")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, float32")
    print(f"images {SHAPE}, batch {args.batch} (matrix: d = 4096 -> 4096, same batch)\n")
    print("| operator | forward ms | adjoint/VJP ms | |")
    print("|---|---:|---:|---|")
    for name in operators.available():
        op = _build(name)
        repeats = 1 if name == "nonlinear_blur" else args.repeats
        forward, backward, kind = time_operator(op, args.batch, repeats)
        note = f"{kind}; method {op.method}" if hasattr(op, "method") else kind
        if name == "nonlinear_blur":
            note += "; random weights, 1 repeat"
        print(f"| {name} | {forward * 1e3:.1f} | {backward * 1e3:.1f} | {note} |")

    print("\nFFT vs direct convolution, 61x61 kernels, reflection padding 30 (forward, adjoint):")
    print("| kernel | direct ms | FFT ms | speed-up |")
    print("|---|---:|---:|---:|")
    for name in ("gaussian_blur", "motion_blur"):
        ops = {m: operators.build(name, shape=SHAPE, method=m) for m in ("direct", "fft")}
        x = _input(ops["fft"], args.batch)
        with torch.no_grad():
            for label in ("forward", "adjoint"):
                times = {
                    method: median_seconds(
                        functools.partial(op if label == "forward" else op.adjoint, x),
                        args.repeats,
                    )
                    for method, op in ops.items()
                }
                ratio = times["direct"] / times["fft"]
                print(
                    f"| {name} {label} | {times['direct'] * 1e3:.1f} | {times['fft'] * 1e3:.1f} "
                    f"| {ratio:.1f}x |"
                )


if __name__ == "__main__":
    main()
