"""Plot the error of attention_from_conv(conv, alpha) against conv(x) as alpha grows.

Float64, 3x3 and 5x5 (and 1x1) convolutions with 16 -> 16 channels on a 12 x 15 input;
the relative error is ||attn(x) - conv(x)|| / ||conv(x)||. The paper's bound says it falls
like e^{-alpha} (each head leaks mass ~4 e^{-alpha} to its four nearest neighbours).

    PYTHONPATH=src python benchmarks/conv_error_vs_alpha.py

Writes docs/img/relpos_conv_error.png and benchmarks/results/conv_error_vs_alpha.json (with the
machine, torch version, threads and date).
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn

import visattn
from _record import RESULTS, save_figure, stamp, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_ALL = {
    "args": [],
    "minutes": 0.5,
    "results": ["conv_error_vs_alpha.json"],
    "check": ["log_error_slope"],
}


def main():
    torch.manual_seed(0)
    alphas = [0.5 * i for i in range(1, 71)]  # 0.5 .. 35
    x = torch.randn(2, 16, 12, 15, dtype=torch.float64)
    results = {}
    for k in (1, 3, 5):
        conv = nn.Conv2d(16, 16, k, padding=k // 2).double()
        ref = conv(x)
        errs = []
        with torch.no_grad():
            for a in alphas:
                y = visattn.attention_from_conv(conv, a)(x)
                errs.append(((y - ref).norm() / ref.norm()).item())
        results[f"{k}x{k}"] = errs
    slope = {}
    for key, errs in results.items():
        i, j = alphas.index(8.0), alphas.index(20.0)
        slope[key] = (math.log(errs[j]) - math.log(errs[i])) / (alphas[j] - alphas[i])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for key, errs in results.items():
        ax.semilogy(alphas, [max(e, 1e-17) for e in errs], label=f"{key} conv (slope {slope[key]:.2f})")
    ax.semilogy(alphas, [4 * math.exp(-a) for a in alphas], "k--", lw=1, label=r"$4e^{-\alpha}$")
    ax.axhline(1e-6, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(r"sharpness $\alpha$")
    ax.set_ylabel("relative error vs conv(x)")
    ax.set_title("attention_from_conv: error against the convolution (float64)", fontsize=9)
    ax.set_ylim(1e-17, 2)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = os.path.join(ROOT, "docs", "img", "relpos_conv_error.png")
    save_figure(fig, out)
    doc = {**stamp(), "alphas": alphas, "relative_error": results, "log_error_slope_8_to_20": slope}
    write_json(RESULTS / "conv_error_vs_alpha.json", doc)
    print(out, slope)


if __name__ == "__main__":
    main()
