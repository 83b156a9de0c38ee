"""Learning curves from bench/vs_sb3.json: mean ± std over seeds of episode return against env
steps.

    python bench/plot_curves.py   # writes bench/curves.png
"""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
results = json.load(open(os.path.join(HERE, "vs_sb3.json")))
fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
for ax, (env_name, sides) in zip(axes[0], results.items()):
    steps = np.asarray(sides["trpo"]["steps"])
    returns = np.asarray(sides["trpo"]["returns"], np.float64)
    # Before a seed's first finished episode its logged return is NaN (a placeholder 0 in
    # files written before trpo.py logged NaN): not drawn.
    returns[np.cumsum(returns != 0, 1) == 0] = np.nan
    mean, std = np.nanmean(returns, 0), np.nanstd(returns, 0)
    ax.plot(steps, mean, label="trpo.py")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
    grid = np.linspace(steps[0], steps[-1], 25)
    # sb3: each seed's episode returns, carried forward onto a common step grid.
    per_seed = []
    for points in sides["sb3"]["curves"]:
        if points:
            t, r = np.asarray(points).T
            per_seed.append(np.interp(grid, t, r))
    if per_seed:
        sb3 = np.asarray(per_seed)
        ax.plot(grid, sb3.mean(0), label="sb3-contrib")
        ax.fill_between(grid, sb3.mean(0) - sb3.std(0), sb3.mean(0) + sb3.std(0), alpha=0.25)
    ax.set(title=env_name, xlabel="env steps", ylabel="episode return")
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(HERE, "curves.png"), dpi=110)
print("wrote", os.path.join(HERE, "curves.png"))
