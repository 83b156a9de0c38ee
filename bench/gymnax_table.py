"""TRPO's column in gymnax's own table: every registered env (MNISTBandit aside, it downloads MNIST)
trained at the budget of the published gymnax-blines agent, evaluated on held-out seeds beside a
random policy with the same evaluation.

Published returns are the gymnax README's "Ckpt (Return)"; budgets are gymnax-blines'
`agents/<env>/ppo.yaml` num_train_steps, or 1M steps where nothing is published. Every env uses
its trpo.py preset. Seeds come from key 1 (bench/heldout.py's HELDOUT_SEED); presets were chosen
on key 0. Each row is written to --out as soon as its env ends, and an env already there is
skipped unless --force, so the long rows (MinAtar at 10M steps, ~8 min per seed on 2 CPU cores)
fill over several runs. --screen trains, in one vmapped program per env, every value of one field
on --tune_seeds seeds from key 0 and --seeds seeds from key 1; --choose then picks the value
with the best tuning-seed score (mean return / published, averaged over the screened envs) and
writes the held-out seeds of that value as the table rows.

    python bench/gymnax_table.py                              # every env not yet in the JSON
    python bench/gymnax_table.py --envs Breakout-MinAtar --seeds 2
    python bench/gymnax_table.py --envs Breakout-MinAtar,... --seeds 16 --screen max_kl=0.01,0.03
    python bench/gymnax_table.py --choose max_kl              # rows from a --screen run
    python bench/gymnax_table.py --markdown                   # the table, into RESULTS.md
"""
import argparse
import dataclasses
import json
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import gymnax  # noqa: E402
import trpo  # noqa: E402

TUNING_SEED, HELDOUT_SEED = 0, 1
MINATAR = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar",
           "Seaquest-MinAtar")
# env: (published return, its agent, budget in env steps)
PUBLISHED = {
    "CartPole-v1": (500, "PPO", 150_000), "Acrobot-v1": (-80, "PPO", 500_000),
    "MountainCar-v0": (-118, "PPO", 250_000), "Pendulum-v1": (-130, "PPO", 1_000_000),
    "MountainCarContinuous-v0": (92, "PPO", 1_000_000),
    "Asterix-MinAtar": (15, "PPO", 10_000_000), "Breakout-MinAtar": (28, "PPO", 10_000_000),
    "Freeway-MinAtar": (58, "PPO", 10_000_000), "SpaceInvaders-MinAtar": (131, "PPO", 10_000_000),
    "Seaquest-MinAtar": (None, None, 10_000_000),
    "Catch-bsuite": (1, "PPO", 100_000), "DeepSea-bsuite": (0, "PPO", 150_000),
    "MemoryChain-bsuite": (0.1, "PPO", 150_000), "UmbrellaChain-bsuite": (1, "PPO", 150_000),
    "DiscountingChain-bsuite": (1.1, "PPO", 150_000), "FourRooms-misc": (1, "PPO", 200_000),
    "MetaMaze-misc": (32, "ES", 1_000_000), "PointRobot-misc": (10, "ES", 1_000_000),
    "BernoulliBandit-misc": (90, "ES", 1_000_000), "GaussianBandit-misc": (0, "ES", 1_000_000),
}
ENVS = [e for e in gymnax.registered_envs if e != "MNISTBandit-bsuite"]
# Envs that a feedforward policy cannot solve: the reward depends on what an episode showed
# earlier (a cue, or the task drawn at reset, learned by ES with memory in a meta-RL setting).
NEEDS_MEMORY = ("MemoryChain-bsuite", "MetaMaze-misc", "PointRobot-misc", "BernoulliBandit-misc",
                "GaussianBandit-misc")


STEPS_OVERRIDE = {}  # --steps, for smoke runs


def budget(env_name: str) -> int:
    return STEPS_OVERRIDE.get("all") or PUBLISHED.get(env_name, (None, None, 1_000_000))[2]


def random_returns(config: trpo.Config, keys: jax.Array, episodes: int) -> np.ndarray:
    """Per-key mean return of `episodes` episodes with uniformly random actions, for the env's
    step limit: the random-policy column, with the same episodes as trpo.evaluate."""
    agent = trpo.make_agent(config)
    space = agent.env.action_space(agent.env_params)
    max_steps = int(getattr(agent.env_params, "max_steps_in_episode", 1000))

    def one_key(key):
        reset_key, step_key = jax.random.split(key)
        _, env_state = jax.vmap(agent.env.reset, in_axes=(0, None))(
            jax.random.split(reset_key, episodes), agent.env_params)

        def step(carry, k):
            env_state, alive = carry
            action_key, env_key = jax.random.split(k)
            action = jax.vmap(space.sample)(jax.random.split(action_key, episodes))
            _, env_state, reward, term, trunc, _ = jax.vmap(
                agent.env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(env_key, episodes), env_state, action, agent.env_params)
            return (env_state, alive * (1.0 - (term | trunc))), reward * alive

        _, rewards = jax.lax.scan(step, (env_state, jnp.ones(episodes)),
                                  jax.random.split(step_key, max_steps))
        return rewards.sum(0).mean()

    return np.asarray(jax.jit(jax.vmap(one_key))(keys))


def eval_keys(num: int) -> jax.Array:
    return jax.random.split(jax.random.PRNGKey(HELDOUT_SEED + 1), num)  # as trpo.evaluate_seeds


def evaluate_runs(config, state, episodes, lead=1):
    """Per-run deterministic eval returns; the state's first `lead` axes index the runs."""
    flatten = lambda x: x.reshape(-1, *x.shape[lead:])
    params, stats = jax.tree.map(flatten, (state.policy_params, state.obs_stats))
    num = jax.tree.leaves(params)[0].shape[0]
    agent = trpo.make_agent(config)
    run = jax.jit(jax.vmap(lambda p, s, k: trpo.evaluate(agent, config, p, s, k, episodes)))
    return np.asarray(run(params, stats, eval_keys(num))).mean(1)


def row(env_name, config, per_seed, random, train_s, episodes, extra=None):
    published, agent, steps = PUBLISHED.get(env_name, (None, None, budget(env_name)))
    summary = trpo.summarize_seeds(per_seed)
    return {"env": env_name, "published": published, "published_agent": agent,
            "random": float(np.mean(random)), "iqm": summary["iqm"], "iqm_ci": summary["iqm_ci"],
            "mean": summary["mean"], "worst": summary["worst"], "seeds": summary["seeds"],
            "steps": config.total_timesteps, "train_s": round(train_s, 1),
            "device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "preset": trpo.PRESETS.get(env_name, {}), "per_seed": [float(x) for x in per_seed],
            "episodes": episodes, **(extra or {})}


def curve(metrics, points=20):
    """[env steps, mean, std] of the training return over runs at `points` evenly spaced
    updates, over the runs that have ended an episode by then (NaN where none has)."""
    returns = np.asarray(metrics.episode_return)
    returns = returns.reshape(-1, returns.shape[-1])
    index = np.linspace(0, returns.shape[-1] - 1, points).astype(int)
    with warnings.catch_warnings():  # nanmean warns where every run is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return [[int(np.asarray(metrics.env_steps).reshape(-1, returns.shape[-1])[0, i]),
                 float(np.nanmean(returns[:, i])), float(np.nanstd(returns[:, i]))]
                for i in index]


def plot_minatar(results, path):
    """The MinAtar rows' training curves: mean (± std over seeds where recorded) against env
    steps, one panel per game, with the published PPO return as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(MINATAR), figsize=(3.2 * len(MINATAR), 3))
    for ax, env_name in zip(axes, MINATAR):
        r = results["rows"].get(env_name)
        if r is None:
            continue
        points = np.array([p + [np.nan] * (3 - len(p)) for p in r["curve"]], float)
        ax.plot(points[:, 0], points[:, 1])
        ax.fill_between(points[:, 0], points[:, 1] - points[:, 2], points[:, 1] + points[:, 2],
                        alpha=0.25)
        if PUBLISHED[env_name][0] is not None:
            ax.axhline(PUBLISHED[env_name][0], ls="--", c="gray", label="PPO (gymnax)")
        ax.set(title=f"{env_name} ({r['seeds']} seeds)", xlabel="env steps")
    axes[0].set(ylabel="training return")
    if axes[0].get_legend_handles_labels()[0]:  # Asterix has a row
        axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_env(env_name, seeds, episodes, overrides=None):
    config = trpo.make_config(env_name, **{"total_timesteps": budget(env_name),
                                           "seed": HELDOUT_SEED, **(overrides or {})})
    keys = jax.random.split(jax.random.PRNGKey(HELDOUT_SEED), seeds)
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(jax.jit(jax.vmap(trpo.make_train(config)))(keys))
    train_s = time.perf_counter() - start
    per_seed = evaluate_runs(config, state, episodes)
    random = random_returns(config, eval_keys(seeds), episodes)
    return row(env_name, config, per_seed, random, train_s, episodes, {"curve": curve(metrics)})


def screen_env(env_name, field, values, tune_seeds, seeds, episodes, overrides):
    """One vmapped program: every value x (tune_seeds from key 0, then seeds from key 1)."""
    config = trpo.make_config(env_name, **{"total_timesteps": budget(env_name),
                                           "seed": HELDOUT_SEED, **overrides})
    keys = jnp.concatenate([jax.random.split(jax.random.PRNGKey(TUNING_SEED), tune_seeds),
                            jax.random.split(jax.random.PRNGKey(HELDOUT_SEED), seeds)])
    sweep = lambda value, key: trpo.make_train(dataclasses.replace(config, **{field: value}))(key)
    train = jax.vmap(jax.vmap(sweep, in_axes=(None, 0)), in_axes=(0, None))
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(jax.jit(train)(jnp.asarray(values), keys))
    train_s = time.perf_counter() - start
    runs = tune_seeds + seeds
    per_run = evaluate_runs(config, state, episodes, lead=2).reshape(len(values), runs)
    random = random_returns(config, eval_keys(seeds), episodes)
    return {"env": env_name, "field": field, "values": list(values), "overrides": overrides,
            "train_s": round(train_s, 1), "device": jax.devices()[0].device_kind,
            "jax": jax.__version__, "steps": budget(env_name), "random": random.tolist(),
            "tuning": per_run[:, :tune_seeds].tolist(), "heldout": per_run[:, tune_seeds:].tolist(),
            "episodes": episodes,
            "curves": [curve(jax.tree.map(lambda x: x[i], metrics)) for i in range(len(values))]}


def choose(results, field):
    screens = [s for s in results.get("screens", {}).values() if s["field"] == field]
    scored = [s for s in screens if PUBLISHED[s["env"]][0]]
    values = scored[0]["values"]
    scores = [np.mean([np.mean(s["tuning"][i]) / PUBLISHED[s["env"]][0] for s in scored])
              for i in range(len(values))]
    best = int(np.argmax(scores))
    print(f"{field}: tuning-seed score (mean return / published, averaged over "
          f"{len(scored)} envs) " + ", ".join(f"{v:g}: {sc:.3f}" for v, sc in zip(values, scores))
          + f" -> {values[best]:g}")
    for s in screens:
        config = trpo.make_config(s["env"], total_timesteps=s["steps"])
        results["rows"][s["env"]] = {**row(s["env"], config, s["heldout"][best], s["random"],
                                           s["train_s"], s.get("episodes", 20)),
                                     "device": s["device"], "jax": s["jax"],
                                     "train_s_note": f"all {len(values)} values x "
                                     f"{len(s['tuning'][0]) + len(s['heldout'][0])} seeds",
                                     "curve": s["curves"][best], "chosen": {field: values[best]}}


def parse_overrides(texts):
    """["FIELD=VALUE", ...] -> Config overrides, each parsed by its field's type."""
    parsers = {bool: lambda s: {"true": True, "1": True, "false": False, "0": False}[s.lower()],
               tuple: lambda s: tuple(int(h) for h in s.split(","))}  # else int, float or str
    parse = {f.name: parsers.get(type(f.default), type(f.default))
             for f in dataclasses.fields(trpo.Config)}
    return {k: parse[k](v) for k, v in (text.split("=", 1) for text in texts)}


def fmt(x):
    return "—" if x is None else f"{x:.4g}" if abs(x) < 10 else f"{x:.1f}"


def markdown(results):
    lines = ["| env | published (agent) | random | trpo.py IQM [95% CI] | mean | worst seed | "
             "seeds × eval episodes | steps | train time (device) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for env_name in ENVS:
        r = results["rows"].get(env_name)
        published, agent, _ = PUBLISHED.get(env_name, (None, None, None))
        pub = f"{fmt(published)} ({agent})" if published is not None else "—"
        label = f"{env_name} (needs memory)" if env_name in NEEDS_MEMORY else env_name
        if r is None:
            lines.append(f"| {label} | {pub} | | not run | | | | | |")
            continue
        lines.append(f"| {label} | {pub} | {fmt(r['random'])} | {fmt(r['iqm'])} "
                     f"[{fmt(r['iqm_ci'][0])}, {fmt(r['iqm_ci'][1])}] | {fmt(r['mean'])} | "
                     f"{fmt(r['worst'])} | {r['seeds']} × {r.get('episodes', 20)} | "
                     f"{r['steps'] / 1e6:g}M | "
                     f"{r['train_s']:.0f} s ({r['device']}) |")
    return "\n".join(lines)


MARKERS = ("<!-- gymnax-table -->", "<!-- /gymnax-table -->")


def write_markdown(results, paths=(os.path.join(HERE, "RESULTS.md"),
                                   os.path.join(os.path.dirname(HERE), "README.md"))):
    """Replace the table between MARKERS in RESULTS.md and README.md (where both are there), and
    redraw bench/minatar.png."""
    for path in paths:
        text = open(path).read()
        if all(m in text for m in MARKERS):
            head, rest = text.split(MARKERS[0], 1)
            tail = rest.split(MARKERS[1], 1)[1]
            with open(path, "w") as f:
                f.write(f"{head}{MARKERS[0]}\n{markdown(results)}\n{MARKERS[1]}{tail}")
    plot_minatar(results, os.path.join(HERE, "minatar.png"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default=",".join(ENVS))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--force", action="store_true", help="rerun envs already in --out")
    parser.add_argument("--screen", metavar="FIELD=v1,v2,...")
    parser.add_argument("--tune_seeds", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a Config override for --screen (hidden_sizes=256,256)")
    parser.add_argument("--choose", metavar="FIELD")
    parser.add_argument("--deadline", type=float, default=float("inf"),
                        help="seconds; start no env once the last one's time would pass it")
    parser.add_argument("--steps", type=int, help="one budget for every env (smoke runs)")
    parser.add_argument("--markdown", action="store_true", help="print the table and write it "
                        "into bench/RESULTS.md")
    parser.add_argument("--out", default=os.path.join(HERE, "gymnax_table.json"))
    args = parser.parse_args()
    if args.steps:
        STEPS_OVERRIDE["all"] = args.steps
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    results.setdefault("rows", {})
    results.setdefault("screens", {})
    if args.markdown:
        print(markdown(results))
        write_markdown(results)
        return
    if args.choose:
        choose(results, args.choose)
    overrides = parse_overrides(args.set)
    start, longest = time.perf_counter(), 0.0
    for env_name in [] if args.choose else args.envs.split(","):
        done = results["screens" if args.screen else "rows"]
        if env_name in done and not args.force:
            print(f"{env_name}: in {args.out}, skipped (--force reruns it)")
            continue
        if time.perf_counter() - start + 1.2 * longest > args.deadline:
            print(f"{env_name}: skipped, the deadline of {args.deadline:.0f} s would pass")
            continue
        began = time.perf_counter()
        if args.screen:
            field, values = args.screen.split("=")
            s = screen_env(env_name, field, [float(v) for v in values.split(",")],
                           args.tune_seeds, args.seeds, args.episodes, overrides)
            done[env_name] = s
            print(f"{env_name}: {s['train_s']} s; tuning means " + ", ".join(
                f"{v}: {np.mean(t):.1f}" for v, t in zip(s["values"], s["tuning"])) +
                "; held-out means " + ", ".join(
                f"{v}: {np.mean(t):.1f}" for v, t in zip(s["values"], s["heldout"])), flush=True)
        else:
            r = run_env(env_name, args.seeds, args.episodes)
            done[env_name] = r
            print(f"{env_name}: IQM {r['iqm']:.2f} [{r['iqm_ci'][0]:.2f}, {r['iqm_ci'][1]:.2f}], "
                  f"mean {r['mean']:.2f}, worst {r['worst']:.2f}, random {r['random']:.2f}, "
                  f"published {r['published']}; {r['train_s']} s", flush=True)
        longest = max(longest, time.perf_counter() - began)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        if args.out == parser.get_default("out"):
            write_markdown(results)
    if args.choose:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
