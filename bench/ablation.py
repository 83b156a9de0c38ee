"""Every departure from the paper, measured: held-out seeds of each classic-control env with
trpo.py's defaults, with --paper, and with each departure alone set back to the paper's value.

32 held-out seeds (key 1, which no tuning saw) per row, all vmapped in one jit, 20 deterministic
episodes each; a row reports the IQM with its 95% bootstrap interval, the mean and the seeds
below the env's solved line. Rows whose flip changes nothing for an env are left out. Each row
is written to --out as it ends.

    python bench/ablation.py --seeds 32
    python bench/ablation.py --table bench/ablation.json     # the markdown table only
"""
import argparse
import dataclasses
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import jax  # noqa: E402

import trpo  # noqa: E402

HELDOUT_SEED = 1
BUDGETS = {"CartPole-v1": 100_000, "Acrobot-v1": 100_000, "MountainCar-v0": 100_000,
           "Pendulum-v1": 100_000, "MountainCarContinuous-v0": 50_000}  # rl-baselines3-zoo


def rows(env_name: str) -> dict[str, trpo.Config]:
    """The row label -> its Config; a flip that leaves the default unchanged is dropped."""
    budget = dict(total_timesteps=BUDGETS[env_name], seed=HELDOUT_SEED)
    default = trpo.make_config(env_name, **budget)
    preset = trpo.PRESETS.get(env_name, {})
    no_preset = {k: v for k, v in preset.items() if k not in trpo.BATCH}
    flips = {"paper (--paper)": trpo.make_config(env_name, paper=True, **budget),
             "constant delta": trpo.make_config(env_name, anneal_max_kl=False, **budget),
             "raw rewards": trpo.make_config(env_name, normalize_rewards=False, **budget),
             "raw observations": trpo.make_config(env_name, normalize_observations=False,
                                                  **budget),
             "no entropy bonus": trpo.make_config(env_name, entropy_coef=0.0, **budget),
             "no preset (defaults)": trpo.Config(env_name=env_name, **{
                 **{k: v for k, v in preset.items() if k in trpo.BATCH}, **budget}),
             "raw advantages (not a departure)": trpo.make_config(
                 env_name, normalize_advantages=False, **budget)}
    if not no_preset:
        del flips["no preset (defaults)"]
    return {"default": default, **{k: c for k, c in flips.items() if c != default}}


def run(config: trpo.Config, seeds: int, episodes: int) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    start = time.perf_counter()
    state, _ = jax.block_until_ready(jax.jit(jax.vmap(trpo.make_train(config)))(keys))
    returns = trpo.evaluate_seeds(trpo.make_agent(config), config, state.policy_params,
                                  state.obs_stats, episodes)
    summary = trpo.summarize_seeds(returns, trpo.SOLVED.get(config.env_name))
    return {**summary, "per_seed": returns.tolist(), "train_s": time.perf_counter() - start,
            "config": dataclasses.asdict(config)}


def table(results: dict) -> str:
    lines = ["| env | row | IQM [95% CI] | mean | worst seed | seeds below the line |",
             "|---|---|---|---|---|---|"]
    for env_name in BUDGETS:
        for label, s in results.get(env_name, {}).items():
            lines.append(f"| {env_name} | {label} | {s['iqm']:.1f} [{s['iqm_ci'][0]:.1f}, "
                         f"{s['iqm_ci'][1]:.1f}] | {s['mean']:.1f} | {s['worst']:.1f} | "
                         f"{s['failed']} of {s['seeds']} (< {s['solved_line']:g}) |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--envs", default=",".join(BUDGETS))
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(HERE, "ablation.json"))
    parser.add_argument("--table", metavar="JSON", help="print the table of a results file")
    args = parser.parse_args()
    if args.table:
        print(table(json.load(open(args.table))))
        return
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    for env_name in args.envs.split(","):
        for label, config in rows(env_name).items():
            s = run(config, args.seeds, args.episodes)
            results.setdefault(env_name, {})[label] = s
            print(f"{env_name} {label}: {trpo.format_summary(s)} ({s['train_s']:.0f} s)",
                  flush=True)
            with open(args.out, "w") as f:
                json.dump(results, f)
    print(table(results))


if __name__ == "__main__":
    main()
