"""The one MinAtar preset, tuned and reported in one run, as the paper used one setting for all
Atari games. Every point of a small grid (discount x entropy bonus) trains on --tune_seeds seeds
from the tuning key 0 on the games where trpo.py is below the published PPO figure; the point with
the best score (mean deterministic return / published return, averaged over those games) is
chosen by that rule alone; then every MinAtar game trains with it on --seeds seeds from the
held-out key 1 and becomes its row of gymnax's table (bench/gymnax_table.py, bench/RESULTS.md).
Results are written to --out after each game, so a stopped run keeps what it finished.

    python bench/minatar_preset.py --seeds 16 --deadline 560         # a GPU
    python bench/minatar_preset.py --chosen gamma=0.999,entropy_coef=0.01 --games Seaquest-MinAtar
"""
import argparse
import dataclasses
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import gymnax_table as table
import trpo

TUNE_GAMES = ("Breakout-MinAtar", "Freeway-MinAtar", "Asterix-MinAtar")
GRID = {"gamma": (0.99, 0.999), "entropy_coef": (0.0, 0.01)}  # gymnax-blines' PPO: 0.999, 0.01


def tune(env_name, points, tune_seeds, episodes):
    """Mean deterministic return of each grid point on tune_seeds seeds from key 0: one vmapped
    program over points x seeds."""
    config = trpo.make_config(env_name, total_timesteps=table.budget(env_name),
                              seed=table.TUNING_SEED)
    fields = list(GRID)

    def train(point, key):
        return trpo.make_train(dataclasses.replace(config, **dict(zip(fields, point))))(key)

    keys = jax.random.split(jax.random.PRNGKey(table.TUNING_SEED), tune_seeds)
    run = jax.jit(jax.vmap(jax.vmap(train, in_axes=(None, 0)), in_axes=(0, None)))
    start = time.perf_counter()
    state, _ = jax.block_until_ready(run(jnp.asarray(points, jnp.float32), keys))
    train_s = time.perf_counter() - start
    returns = table.evaluate_runs(config, state, episodes, lead=2).reshape(len(points), -1)
    return {"env": env_name, "fields": fields, "points": points, "returns": returns.tolist(),
            "train_s": round(train_s, 1), "device": jax.devices()[0].device_kind}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tune_seeds", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--games", default=",".join(table.MINATAR))
    parser.add_argument("--chosen", metavar="FIELD=V,...", help="skip tuning, use this point")
    parser.add_argument("--deadline", type=float, default=float("inf"))
    parser.add_argument("--steps", type=int, help="one budget for every game (smoke runs)")
    parser.add_argument("--out", default=os.path.join(table.HERE, "gymnax_table.json"))
    args = parser.parse_args()
    if args.steps:
        table.STEPS_OVERRIDE["all"] = args.steps
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    results.setdefault("rows", {})
    save = lambda: json.dump(results, open(args.out, "w"), indent=1)
    start = time.perf_counter()
    if args.chosen:
        chosen = table.parse_overrides(args.chosen.split(","))
    else:
        points = [list(p) for p in itertools.product(*GRID.values())]
        tuning = results["minatar_tuning"] = {}
        for env_name in TUNE_GAMES:
            t = tuning[env_name] = tune(env_name, points, args.tune_seeds, args.episodes)
            save()
            print(f"tune {env_name}: {t['train_s']} s; " + ", ".join(
                f"{p}: {np.mean(r):.2f}" for p, r in zip(points, t["returns"])), flush=True)
        scores = [np.mean([np.mean(tuning[e]["returns"][i]) / table.PUBLISHED[e][0]
                           for e in TUNE_GAMES]) for i in range(len(points))]
        chosen = dict(zip(GRID, points[int(np.argmax(scores))]))
        results["minatar_choice"] = {"scores": scores, "chosen": chosen}
        save()
        print(f"scores {[round(s, 4) for s in scores]} -> {chosen}", flush=True)
    longest = 0.0
    for env_name in args.games.split(","):
        if time.perf_counter() - start + 1.1 * longest > args.deadline:
            print(f"{env_name}: skipped, the deadline would pass", flush=True)
            continue
        began = time.perf_counter()
        r = table.run_env(env_name, args.seeds, args.episodes, chosen)
        results["rows"][env_name] = {**r, "chosen": chosen}
        save()
        longest = max(longest, time.perf_counter() - began)
        print(f"{env_name}: IQM {r['iqm']:.2f} [{r['iqm_ci'][0]:.2f}, {r['iqm_ci'][1]:.2f}], "
              f"mean {r['mean']:.2f}, worst {r['worst']:.2f}, random {r['random']:.2f}, "
              f"published {r['published']}; {r['train_s']} s", flush=True)


if __name__ == "__main__":
    main()
