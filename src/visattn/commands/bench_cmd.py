"""``visattn bench``: the command-line layer over :mod:`visattn.bench` (options, output folder, progress)."""

from __future__ import annotations

from pathlib import Path

import torch

from visattn.bench.core import DEFAULT_RESOLUTIONS, bench_case, bench_cases
from visattn.bench.report import format_slopes, format_table, write_json, write_plot
from visattn.commands._args import device_name, nonneg_float, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="latency, memory, FLOPs and scaling of mechanisms across resolutions",
        description="Benchmark registered mechanisms: median forward and forward+backward latency, peak memory, "
        "parameters, FLOPs (torch.utils.flop_counter checked against each mechanism's formula) and "
        "the log-log slope of time and memory against n = H*W.",
    )
    p.add_argument("--mechanisms", "-m", nargs="+", default=None, help="mechanism names (default: all registered)")
    p.add_argument("--variants", action="store_true", help="also run each mechanism's extra benchmark variants")
    p.add_argument(
        "--resolutions",
        "-r",
        nargs="+",
        type=positive_int,
        default=list(DEFAULT_RESOLUTIONS),
        help="square feature-map sides (default: %(default)s)",
    )
    p.add_argument("--dim", type=positive_int, default=64, help="channels C (default: %(default)s)")
    p.add_argument(
        "--batch-size",
        "--batch",
        dest="batch",
        type=positive_int,
        default=4,
        help="batch size, as in train and compare (--batch: the older spelling; default: %(default)s)",
    )
    p.add_argument("--device", default="cpu", type=device_name, help="cpu or cuda[:i] (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--no-backward", action="store_true", help="skip forward+backward measurements")
    p.add_argument("--min-time", type=nonneg_float, default=0.2, help="seconds of timed repeats per measurement")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--output", "-o", default="bench-out", help="directory for bench.json and bench.png")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def check_output_dir(path: str | Path, files: tuple[str, ...]) -> Path:
    """Make sure results can be written to directory ``path`` before any measuring: it is a
    directory (created if missing), writable, and none of ``files`` in it is a directory."""
    import errno
    import os

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"--output must be a directory (results go to {' and '.join(files)} inside it), but it is a file",
            str(out),
        )
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        if (out / f).is_dir():
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way of a result file", str(out / f))
    probe = out / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")  # raises PermissionError / OSError(ENOSPC) now rather than after the run
    probe.unlink()
    return out


def run(args) -> int:
    cases = bench_cases(args.mechanisms, args.variants)  # unknown names fail here, before any file is touched
    out = check_output_dir(args.output, ("bench.json", "bench.png"))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    total = len(cases) * len(args.resolutions)

    from tqdm.auto import tqdm

    results = []
    with tqdm(total=total, desc="bench", unit="case", disable=args.no_progress) as bar:
        for label, mech, kw in cases:
            for s in args.resolutions:
                bar.set_postfix_str(f"{label} {s}x{s}")
                results.append(
                    bench_case(
                        label,
                        mech,
                        kw,
                        dim=args.dim,
                        batch=args.batch,
                        resolution=s,
                        device=device,
                        dtype=dtype,
                        backward=not args.no_backward,
                        min_time=args.min_time,
                    )
                )
                bar.update(1)

    print(format_table(results))
    print()
    print("Log-log slope against n (1 = linear, 2 = quadratic):")
    print(format_slopes(results))
    config = {k: v for k, v in vars(args).items() if k != "func"}
    j = write_json(results, out / "bench.json", config)
    png = write_plot(results, out / "bench.png")
    print(f"\nwrote {j} and {png}")
    failed = [r for r in results if r.error]
    if failed:
        print(f"{len(failed)} case(s) failed; see the table")
    return 0
