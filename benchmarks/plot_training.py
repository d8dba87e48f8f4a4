"""Plot a ``train-shapes`` run's loss curve: ``python benchmarks/plot_training.py RUN_DIR OUT.png``.

Reads ``RUN_DIR/loss.jsonl`` (one record every 10 steps) and draws each stage's loss against its steps, raw and
smoothed (a running mean over 20 records), with wall-clock minutes on a second axis.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run folder (holds loss.jsonl)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args()
    records = [json.loads(line) for line in (args.run / "loss.jsonl").read_text().splitlines() if line.strip()]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [("vae", "VAE: L1 + MSE + KL"), ("unet", "text encoder + UNet: min-SNR-weighted noise MSE")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (stage, title) in zip(axes, stages, strict=True):
        rows = [r for r in records if r["stage"] == stage]
        if not rows:
            ax.set_title(f"{title}\n(no records yet)", fontsize=9)
            continue
        steps = np.array([r["step"] for r in rows])
        loss = np.array([r["loss"] for r in rows])
        ax.plot(steps, loss, color="0.8", linewidth=0.8, label="every 10th step")
        k = min(20, len(loss))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="C0", label=f"running mean of {k}")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        minutes = rows[-1]["minutes"] - rows[0]["minutes"]
        ax.set_title(f"{title}\n{steps[-1]} steps, {minutes:.0f} min of wall time", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
