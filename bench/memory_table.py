"""gymnax's four memory rows: examples/recurrent.py's GRU TRPO beside trpo.py's feed-forward
TRPO at the same budget, on held-out seeds (key 1), with gymnax's published return.

Both use trpo.py's preset for the env and its defaults otherwise (the GRU: --hidden_size's
default); the MetaMaze and PointRobot presets were tuned on key 0 with the GRU. Evaluation is
trpo.evaluate_seeds (the keys of bench/gymnax_table.py): deterministic episodes, the IQM of
per-seed means with a bootstrap interval and the worst seed. Each env's row is written to --out
when it ends; an env already there is skipped.

    python bench/memory_table.py --seeds 16                # every row not yet in the JSON
    python bench/memory_table.py --markdown                # the table, into RESULTS.md
    python bench/memory_table.py --envs PointRobot-misc --tune --seeds 4 --set anneal_max_kl=true
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "examples"), HERE]
import jax  # noqa: E402

import recurrent  # noqa: E402
import trpo  # noqa: E402
from gymnax_table import HELDOUT_SEED, PUBLISHED, TUNING_SEED, parse_overrides  # noqa: E402

# env: budget in env steps, chosen so that the table runs in about 100 min on 2 CPU cores
BUDGETS = {"MemoryChain-bsuite": 150_000, "BernoulliBandit-misc": 250_000,
           "PointRobot-misc": 4_000_000, "MetaMaze-misc": 1_000_000}


def run_env(env_name: str, seeds: int, episodes: int, key: int = HELDOUT_SEED,
            overrides: dict | None = None, variants: tuple = ("feed_forward", "recurrent")) -> dict:
    config = trpo.make_config(env_name, **{"total_timesteps": BUDGETS[env_name], "seed": key,
                                           **(overrides or {})})
    keys = jax.random.split(jax.random.PRNGKey(key), seeds)
    row = {"env": env_name, "published": PUBLISHED[env_name][:2], "steps": config.total_timesteps,
           "seeds": seeds, "episodes": episodes, "device": jax.devices()[0].device_kind,
           "preset": trpo.PRESETS.get(env_name, {})}
    for name in variants:
        variant = {"feed_forward": trpo, "recurrent": recurrent}[name]
        train = jax.jit(jax.vmap(variant.make_train(config))).lower(keys).compile()
        start = time.perf_counter()
        state, _ = jax.block_until_ready(train(keys))
        train_s = time.perf_counter() - start
        per_seed = trpo.evaluate_seeds(variant.make_agent(config), config, state.policy_params,
                                       state.obs_stats, episodes, variant.evaluate)
        summary = trpo.summarize_seeds(per_seed)
        row[name] = {"iqm": summary["iqm"], "iqm_ci": summary["iqm_ci"], "worst": summary["worst"],
                     "train_s": round(train_s, 1),
                     "steps_per_s": round(seeds * config.total_timesteps / train_s),
                     "per_seed": [float(x) for x in per_seed]}
        print(f"{env_name} {name}: {trpo.format_summary(summary)}; {train_s:.0f} s", flush=True)
    return row


def bandit_bayes_optimal(steps: int = 100, p: float = 0.9) -> float:
    """The most any policy can expect on BernoulliBandit-misc (arms p and 1 - p in random order,
    unseen): dynamic programming over k = (wins - losses of arm 0) - (wins - losses of arm 1),
    after which P(arm 0 is the good one) = 1 / (1 + (p / (1 - p))^-k)."""
    value = {k: 0.0 for k in range(-steps - 1, steps + 2)}  # after the last step
    for t in reversed(range(steps)):
        good = {k: 1.0 / (1.0 + (p / (1 - p)) ** -k) for k in range(-t, t + 1)}
        win0 = {k: g * p + (1 - g) * (1 - p) for k, g in good.items()}  # P(arm 0 pays)
        value = {k: max(w * (1 + value[k + 1]) + (1 - w) * value[k - 1],
                        (1 - w) * (1 + value[k - 1]) + w * value[k + 1]) for k, w in win0.items()}
    return value[0]


def markdown(rows: dict) -> str:
    lines = ["| env | published | budget | feed-forward IQM [95% CI] (worst) | recurrent IQM "
             "[95% CI] (worst) | steps/s ff / rnn |", "|---|---:|---:|---:|---:|---:|"]
    cell = lambda r: (f"{r['iqm']:.2f} [{r['iqm_ci'][0]:.2f}, {r['iqm_ci'][1]:.2f}] "
                      f"({r['worst']:.2f})")
    for r in rows.values():
        ff, rnn = r["feed_forward"], r["recurrent"]
        lines.append(f"| {r['env']} | {r['published'][0]} ({r['published'][1]}) | "
                     f"{r['steps'] / 1e6:g}M | {cell(ff)} | {cell(rnn)} | "
                     f"{ff['steps_per_s']:,} / {rnn['steps_per_s']:,} |")
    lines.append(f"\nBernoulliBandit's ceiling: the Bayes-optimal policy expects "
                 f"{bandit_bayes_optimal():.3f}; told the good arm, 90.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default=",".join(BUDGETS))
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(HERE, "memory_table.json"))
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--tune", action="store_true", help="the GRU alone on tuning seeds (key "
                        f"{TUNING_SEED}) with the --set overrides; prints, writes nothing")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a Config override for --tune")
    args = parser.parse_args()
    if args.tune:
        for env_name in args.envs.split(","):
            run_env(env_name, args.seeds, args.episodes, TUNING_SEED,
                    parse_overrides(args.set), ("recurrent",))
        return
    rows = json.load(open(args.out)) if os.path.exists(args.out) else {}
    if args.markdown:
        print(markdown(rows))
        return
    for env_name in args.envs.split(","):
        if env_name not in rows:
            rows[env_name] = run_env(env_name, args.seeds, args.episodes)
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
