"""Held-out learning: many vmapped seeds per env at the zoo budget, 20 deterministic episodes each.

Presets were tuned on seeds split from key 0 (TUNING_SEED); the figures we report come from key 1
(HELDOUT_SEED), which no tuning ever saw. Each env's summary (mean, IQM with a 95% bootstrap
interval, worst seed, seeds below the solved line) is written to --out as soon as that env ends,
and per-update metrics of every seed go to an .npz beside it for diagnosis.

    python bench/heldout.py --seeds 64 --label after
    python bench/heldout.py --envs CartPole-v1 --seeds 64 --key tuning --set cg_damping=0.001
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import jax  # noqa: E402

import trpo  # noqa: E402

TUNING_SEED, HELDOUT_SEED, SECOND_HELDOUT_SEED = 0, 1, 3  # key 2 seeds the learning tests
BUDGETS = {"CartPole-v1": 100_000, "Acrobot-v1": 100_000, "MountainCar-v0": 100_000,
           "Pendulum-v1": 100_000, "MountainCarContinuous-v0": 50_000}  # rl-baselines3-zoo


def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def run_env(env_name: str, seeds: int, seed: int, episodes: int,
            overrides: dict) -> tuple[dict, dict]:
    config = trpo.make_config(env_name, **{"total_timesteps": BUDGETS.get(env_name, 100_000),
                                           "seed": seed, **overrides})
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(jax.jit(jax.vmap(trpo.make_train(config)))(keys))
    train_s = time.perf_counter() - start
    returns = trpo.evaluate_seeds(trpo.make_agent(config), config, state.policy_params,
                                  state.obs_stats, episodes)
    summary = trpo.summarize_seeds(returns, trpo.SOLVED.get(env_name))
    summary.update(env=env_name, steps=config.total_timesteps, seed=seed, episodes=episodes,
                   train_s=round(train_s, 1), overrides=overrides, per_seed=returns.tolist())
    return summary, {name: np.asarray(value) for name, value in metrics._asdict().items()}


def print_table(results: dict, labels: list, key: str) -> None:
    print("| env (budget) | run | seeds | IQM [95% CI] | mean | worst seed | below solved line |")
    print("|---|---|---|---|---|---|---|")
    for env_name, budget in BUDGETS.items():
        for label in labels:
            s = results.get(f"{label}/{key}/{env_name}")
            if s:
                low, high = s["iqm_ci"]
                print(f"| {env_name} ({budget // 1000}k) | {label} | {s['seeds']} | "
                      f"{s['iqm']:.1f} [{low:.1f}, {high:.1f}] | {s['mean']:.1f} | "
                      f"{s['worst']:.1f} | {s['failed']} (< {s['solved_line']:g}) |")


def false_failure(per_seed: list, seeds: int, threshold: float, draws: int = 200_000) -> float:
    """P(IQM of `seeds` seeds < threshold), drawing seeds from the held-out per-seed returns: the
    chance that a learning test with that threshold fails on a correct build."""
    values = np.asarray(per_seed)[np.random.default_rng(0).integers(0, len(per_seed),
                                                                    (draws, seeds))]
    iqm = trpo.interquartile_mean(values)
    return float((iqm < threshold).mean())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--envs", default=",".join(BUDGETS))
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--key", choices=["tuning", "heldout", "heldout2"], default="heldout")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--label", default="current")
    parser.add_argument("--out", default=os.path.join(HERE, "heldout.json"))
    parser.add_argument("--thresholds", metavar="LABEL", help="print learning-test thresholds "
                        "(IQM of 8 seeds) and their false-failure odds from LABEL's runs")
    parser.add_argument("--table", metavar="LABEL,...", help="print the markdown table of LABELs")
    args = parser.parse_args()
    if args.table:
        print_table(json.load(open(args.out)), args.table.split(","), args.key)
        return
    if args.thresholds:
        for tag, summary in json.load(open(args.out)).items():
            if tag.startswith(args.thresholds + "/"):
                odds = {t: false_failure(summary["per_seed"], 8, t) for t in np.quantile(
                    summary["per_seed"], [0.0, 0.05, 0.1, 0.25])}
                print(tag, ", ".join(f"IQM8 < {t:.1f}: {p:.2%}" for t, p in odds.items()))
        return
    overrides = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    seed = {"tuning": TUNING_SEED, "heldout": HELDOUT_SEED,
            "heldout2": SECOND_HELDOUT_SEED}[args.key]
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    for env_name in args.envs.split(","):
        summary, metrics = run_env(env_name, args.seeds, seed, args.episodes, overrides)
        tag = f"{args.label}/{args.key}/{env_name}"
        results[tag] = summary
        stem = args.out.replace(".json", "")
        np.savez_compressed(f"{stem}-{tag.replace('/', '-')}.npz", **metrics)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        low, high = summary["iqm_ci"]
        print(f"{tag:50} IQM {summary['iqm']:8.1f} [{low:7.1f}, {high:7.1f}]  "
              f"mean {summary['mean']:8.1f}  worst {summary['worst']:8.1f}  "
              f"failed {summary['failed']}/{args.seeds}  train {summary['train_s']} s", flush=True)


if __name__ == "__main__":
    main()
