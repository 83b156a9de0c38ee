"""The one MinAtar preset, tuned and reported in one run, as the paper used one setting for all
Atari games. Every point of a small grid (discount x entropy bonus) trains on --tune_seeds seeds
from the tuning key 0 on the games where trpo.py is below the published PPO figure; the point with
the best score (mean deterministic return / published return, averaged over those games) is
chosen by that rule alone; then every MinAtar game trains with it on --seeds seeds from the
held-out key 1 and becomes its row of gymnax's table (bench/gymnax_table.py, bench/RESULTS.md).
Results are written to --out after each game, so a stopped run keeps what it finished.

--joint trains, per game, every point on the tuning seeds *and* the held-out seeds in one vmapped
program (a GPU runs 76 runs about as fast as 12); the choice still reads the tuning seeds alone,
and the rows are the chosen point's held-out seeds. --grid FIELD=v1,v2 (repeatable) replaces the
grid.

    python bench/minatar_preset.py --seeds 16 --deadline 560         # a GPU
    python bench/minatar_preset.py --chosen gamma=0.999,entropy_coef=0.01 --games Seaquest-MinAtar
    python bench/minatar_preset.py --joint --grid cg_damping=0.01,0.001 \
        --grid entropy_coef=0.01,0.03 --tune_seeds 3 --seeds 16 --deadline 540   # a GPU
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


def train_grid(config, fields, points, keys):
    """One vmapped program over points x keys; returns (state, metrics, seconds)."""
    def train(point, key):
        return trpo.make_train(dataclasses.replace(config, **dict(zip(fields, point))))(key)

    run = jax.jit(jax.vmap(jax.vmap(train, in_axes=(None, 0)), in_axes=(0, None)))
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(run(jnp.asarray(points, jnp.float32), keys))
    return state, metrics, time.perf_counter() - start


def tune(env_name, fields, points, tune_seeds, episodes):
    """Mean deterministic return of each grid point on tune_seeds seeds from key 0: one vmapped
    program over points x seeds."""
    config = trpo.make_config(env_name, total_timesteps=table.budget(env_name),
                              seed=table.TUNING_SEED)
    keys = jax.random.split(jax.random.PRNGKey(table.TUNING_SEED), tune_seeds)
    state, _, train_s = train_grid(config, fields, points, keys)
    returns = table.evaluate_runs(config, state, episodes, lead=2).reshape(len(points), -1)
    return {"env": env_name, "fields": fields, "points": points, "returns": returns.tolist(),
            "train_s": round(train_s, 1), "device": jax.devices()[0].device_kind}


def joint(env_name, fields, points, tune_seeds, seeds, episodes):
    """Every point on tune_seeds seeds from key 0 and seeds seeds from key 1, one program."""
    config = trpo.make_config(env_name, total_timesteps=table.budget(env_name),
                              seed=table.HELDOUT_SEED)
    keys = jnp.concatenate([jax.random.split(jax.random.PRNGKey(table.TUNING_SEED), tune_seeds),
                            jax.random.split(jax.random.PRNGKey(table.HELDOUT_SEED), seeds)])
    state, metrics, train_s = train_grid(config, fields, points, keys)
    per_run = table.evaluate_runs(config, state, episodes, lead=2).reshape(len(points), -1)
    random = table.random_returns(config, table.eval_keys(seeds), episodes)
    return {"env": env_name, "fields": fields, "points": points,
            "returns": per_run[:, :tune_seeds].tolist(),
            "heldout": per_run[:, tune_seeds:].tolist(), "random": random.tolist(),
            "train_s": round(train_s, 1), "device": jax.devices()[0].device_kind,
            "jax": jax.__version__, "episodes": episodes,
            "curves": [table.curve(jax.tree.map(lambda x: x[i], metrics))
                       for i in range(len(points))]}


def choose(tuning, fields, points):
    """The point with the best score: mean tuning return / published, averaged over the games
    of TUNE_GAMES that were tuned (or, if none was, over every tuned game with a figure)."""
    games = ([e for e in TUNE_GAMES if e in tuning]
             or [e for e in tuning if table.PUBLISHED[e][0]])
    if not games:
        raise SystemExit("no tuned game has a published figure to score the grid against")
    scores = [np.mean([np.mean(tuning[e]["returns"][i]) / table.PUBLISHED[e][0] for e in games])
              for i in range(len(points))]
    return dict(zip(fields, points[int(np.argmax(scores))])), scores, games


def within_deadline(games, deadline, start):
    """Yield each game unless the time so far plus 1.1x the longest game yet would pass the
    deadline."""
    longest = 0.0
    for env_name in games:
        if time.perf_counter() - start + 1.1 * longest > deadline:
            print(f"{env_name}: skipped, the deadline would pass", flush=True)
            continue
        began = time.perf_counter()
        yield env_name
        longest = max(longest, time.perf_counter() - began)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tune_seeds", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--games", default=",".join(table.MINATAR))
    parser.add_argument("--chosen", metavar="FIELD=V,...", help="skip tuning, use this point")
    parser.add_argument("--grid", action="append", metavar="FIELD=v1,v2",
                        help="a grid axis (repeatable); default: gamma x entropy_coef")
    parser.add_argument("--joint", action="store_true",
                        help="tuning and held-out seeds of every point in one program per game")
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
    grid = ({f: tuple(float(v) for v in vs.split(",")) for f, vs in
             (g.split("=", 1) for g in args.grid)} if args.grid else GRID)
    fields, points = list(grid), [list(p) for p in itertools.product(*grid.values())]
    if args.joint:
        return run_joint(args, results, save, fields, points, start)
    if args.chosen:
        chosen = table.parse_overrides(args.chosen.split(","))
    else:
        tuning = results["minatar_tuning"] = {}
        for env_name in TUNE_GAMES:
            t = tuning[env_name] = tune(env_name, fields, points, args.tune_seeds, args.episodes)
            save()
            print(f"tune {env_name}: {t['train_s']} s; " + ", ".join(
                f"{p}: {np.mean(r):.2f}" for p, r in zip(points, t["returns"])), flush=True)
        chosen, scores, _ = choose(tuning, fields, points)
        results["minatar_choice"] = {"scores": scores, "chosen": chosen}
        save()
        print(f"scores {[round(s, 4) for s in scores]} -> {chosen}", flush=True)
    for env_name in within_deadline(args.games.split(","), args.deadline, start):
        r = table.run_env(env_name, args.seeds, args.episodes, chosen)
        results["rows"][env_name] = {**r, "chosen": chosen}
        save()
        print(f"{env_name}: IQM {r['iqm']:.2f} [{r['iqm_ci'][0]:.2f}, {r['iqm_ci'][1]:.2f}], "
              f"mean {r['mean']:.2f}, worst {r['worst']:.2f}, random {r['random']:.2f}, "
              f"published {r['published']}; {r['train_s']} s", flush=True)


def run_joint(args, results, save, fields, points, start):
    """--joint: one program per game over points x (tuning + held-out seeds); after each game,
    choose on the tuning seeds of the games done so far and write every done game's row."""
    tuning = results["minatar_joint"] = {}
    for env_name in within_deadline(args.games.split(","), args.deadline, start):
        t = tuning[env_name] = joint(env_name, fields, points, args.tune_seeds, args.seeds,
                                     args.episodes)
        print(f"{env_name}: {t['train_s']} s; tuning / held-out means " + ", ".join(
            f"{p}: {np.mean(r):.2f} / {np.mean(h):.2f}"
            for p, r, h in zip(points, t["returns"], t["heldout"])), flush=True)
        chosen, scores, games = choose(tuning, fields, points)
        best = int(np.argmax(scores))
        results["minatar_choice"] = {"scores": scores, "chosen": chosen, "games": games}
        for e, g in tuning.items():
            config = trpo.make_config(e, total_timesteps=table.budget(e))
            results["rows"][e] = {
                **table.row(e, config, g["heldout"][best], g["random"], g["train_s"],
                            g["episodes"]),
                "device": g["device"], "jax": g["jax"], "curve": g["curves"][best],
                "chosen": chosen, "train_s_note": f"all {len(points)} points x "
                f"{args.tune_seeds + args.seeds} seeds in one program"}
        save()
        print(f"scores {[round(s, 4) for s in scores]} over {games} -> {chosen}", flush=True)


if __name__ == "__main__":
    main()
