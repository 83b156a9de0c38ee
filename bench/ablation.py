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
import jax.numpy as jnp  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import trpo  # noqa: E402

HELDOUT_SEED = 1
BUDGETS = {"CartPole-v1": 100_000, "Acrobot-v1": 100_000, "MountainCar-v0": 100_000,
           "Pendulum-v1": 100_000, "MountainCarContinuous-v0": 50_000}  # rl-baselines3-zoo


def trust_region_critic(value_apply, critic, obs, targets, key, config, epsilon=0.01):
    """GAE Sec. 5's critic in place of Adam: one step of min_phi mean ||V_phi(s) - V^||^2 s.t.
    mean ||V_phi(s) - V_old(s)||^2 / (2 sigma^2) <= epsilon, sigma^2 = mean ||V_old(s) - V^||^2,
    by CG on the Gauss-Newton matrix H = mean_n j_n j_n^T / sigma^2 (j_n = grad_phi V(s_n)),
    scaled to the constraint's boundary. epsilon 0.01 (the policy's delta) and the damping 1e-3
    are our choices."""
    theta, unravel = ravel_pytree(critic.params)
    values = lambda th: value_apply(unravel(th), obs)
    old = values(theta)
    sigma2 = jnp.maximum(jnp.mean((old - targets) ** 2), 1e-8)
    grad = jax.grad(lambda th: jnp.mean((values(th) - targets) ** 2))(theta)
    pullback = jax.vjp(values, theta)[1]
    gauss_newton = lambda v: pullback(jax.jvp(values, (theta,), (v,))[1])[0] / (
        obs.shape[0] * sigma2) + 1e-3 * v
    direction, _ = trpo.conjugate_gradient(gauss_newton, -grad, config.cg_iters)
    curvature = trpo.dot(direction, gauss_newton(direction))
    step = jnp.where(curvature > 0, jnp.sqrt(2 * epsilon / jnp.maximum(curvature, 1e-12)), 0.0)
    params = unravel(theta + step * direction)
    return critic._replace(params=params), jnp.mean((value_apply(params, obs) - targets) ** 2)


def discounted_return_targets(gae):
    """gae with its value targets from lambda = 1 (discounted returns, bootstrapped only at time
    limits and at the rollout's end), the advantages still from the config's lambda."""
    return lambda r, v, nv, term, trunc, gamma, lam: (
        gae(r, v, nv, term, trunc, gamma, lam)[0], gae(r, v, nv, term, trunc, gamma, 1.0)[1])


def unclipped_env_actions(agent, action):
    """Gaussian actions rescaled to the env's bounds but not clipped (the env clips what it
    uses; MountainCarContinuous-v0's action cost is of the unclipped action)."""
    if agent.action_low is None:
        return action
    shape = agent.env.action_space(agent.env_params).shape
    scaled = agent.action_low + 0.5 * (action + 1.0) * (agent.action_high - agent.action_low)
    return scaled.reshape(action.shape[:1] + shape)


# Rows that need code, not a Config field: label -> {trpo attribute: replacement}.
PATCHES = {
    "GAE Sec. 5 critic (CG trust region on discounted returns)": lambda: {
        "update_critic": trust_region_critic, "gae": discounted_return_targets(REAL["gae"])},
    "unclipped Gaussian actions": lambda: {"env_actions": unclipped_env_actions},
}
REAL = {name: getattr(trpo, name) for name in ("update_critic", "gae", "env_actions")}


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
    patched = {label: default for label in PATCHES}
    if default.env_name not in ("MountainCarContinuous-v0",):  # Pendulum-v1 clips what it uses
        del patched["unclipped Gaussian actions"]              # and its cost: no change
    return {"default": default, **{k: c for k, c in flips.items() if c != default}, **patched}


def run(config: trpo.Config, seeds: int, episodes: int, label: str = "") -> dict:
    for name, value in {**REAL, **PATCHES.get(label, dict)()}.items():
        setattr(trpo, name, value)  # a patched row's code, or the real functions back
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
    parser.add_argument("--rows", help="only these row labels, comma-separated")
    parser.add_argument("--table", metavar="JSON", help="print the table of a results file")
    args = parser.parse_args()
    if args.table:
        print(table(json.load(open(args.table))))
        return
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    for env_name in args.envs.split(","):
        for label, config in rows(env_name).items():
            if args.rows and label not in args.rows.split(","):
                continue
            s = run(config, args.seeds, args.episodes, label)
            results.setdefault(env_name, {})[label] = s
            print(f"{env_name} {label}: {trpo.format_summary(s)} ({s['train_s']:.0f} s)",
                  flush=True)
            with open(args.out, "w") as f:
                json.dump(results, f)
    print(table(results))


if __name__ == "__main__":
    main()
