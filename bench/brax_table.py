"""TRPO on Brax locomotion, beside Brax's own PPO on the same env, backend and budget.

Both run in this process, one after the other, and are scored the same way: the mean of
--episodes deterministic episodes (1000 steps, or until the env terminates) per seed, then the
IQM over seeds and the worst seed. TRPO trains through bench/brax_env.py (time limits
bootstrapped from the pre-reset observation), all seeds vmapped in one jit, on held-out seeds
(key 1). PPO is `brax.training.agents.ppo.train` with its defaults (PPO below), one seed after
another. Rows are written to --out as each env ends.

    pip install -r requirements.txt -r bench/requirements.txt
    python bench/brax_table.py --envs hopper --steps 1000000 --seeds 4
    python bench/brax_table.py --markdown
"""
import argparse
import functools
import json
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
warnings.filterwarnings("ignore")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import trpo  # noqa: E402
from brax_env import BraxEnv  # noqa: E402

HELDOUT_SEED = 1
# TRPO on locomotion: sb3-contrib's MuJoCo recipe (observations and rewards normalized, lambda
# 0.95, 2048 samples an update, 128-sample critic minibatches), trpo.py's defaults otherwise.
TRPO = dict(normalize_observations=True, gae_lambda=0.95, num_envs=16, num_steps=128,
            vf_minibatches=16, vf_epochs=10)
# ant charges 0.5 sum a^2 over 8 dimensions against a healthy reward of 1 a step: at sigma 1 a
# long episode costs more than it earns. 4 tuning seeds (key 0): log sigma -1 gave 4081 to 4386,
# the default 0 gave 76 to 123.
TRPO_ENV = {"ant": dict(init_log_std=-1.0)}
# Brax's PPO with its function defaults (lr 1e-4, discount 0.9, unroll 10, batch 32 x 16
# minibatches, 2 epochs, entropy 1e-4) except what a run needs: the time limit, and 16 envs as
# TRPO (the default is 1). num_evals 1: both sides are evaluated below, the same way.
PPO = dict(episode_length=1000, num_envs=16)


def episode_returns(env: BraxEnv, act, key: jax.Array, episodes: int) -> jax.Array:
    """Returns of `episodes` deterministic episodes of act(obs) -> action, in parallel."""
    limit = env.default_params.max_steps_in_episode
    obs, state = jax.vmap(env.reset)(jax.random.split(key, episodes))

    def step(carry, k):
        state, obs, alive, total = carry
        obs, state, reward, term, trunc, _ = jax.vmap(env.step)(
            jax.random.split(k, episodes), state, act(obs))
        return (state, obs, alive & ~(term | trunc), total + jnp.where(alive, reward, 0.0)), None

    init = (state, obs, jnp.ones(episodes, bool), jnp.zeros(episodes))
    (_, _, _, total), _ = jax.lax.scan(step, init, jax.random.split(key, limit))
    return total


def run_trpo(name: str, backend: str, steps: int, seeds: int, episodes: int) -> dict:
    env = BraxEnv(name, backend)
    config = trpo.make_config(f"brax-{name}", total_timesteps=steps, seed=HELDOUT_SEED,
                              **{**TRPO, **TRPO_ENV.get(name, {})})
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    start = time.perf_counter()
    state, _ = jax.block_until_ready(jax.jit(jax.vmap(trpo.make_train(
        config, env, env.default_params)))(keys))
    train_s = time.perf_counter() - start
    returns = trpo.evaluate_seeds(trpo.make_agent(config, env, env.default_params), config,
                                  state.policy_params, state.obs_stats, episodes)
    return dict(per_seed=returns.tolist(), train_s=round(train_s, 1))


def run_ppo(name: str, backend: str, steps: int, seeds: int, episodes: int) -> dict:
    from brax import envs
    from brax.training.agents.ppo import train as ppo
    env, per_seed, start = BraxEnv(name, backend), [], time.perf_counter()
    for seed in range(seeds):
        make_policy, params, _ = ppo.train(
            envs.get_environment(name, backend=backend), num_timesteps=steps, num_evals=1,
            seed=1000 * HELDOUT_SEED + seed, **PPO)
        policy = make_policy(params, deterministic=True)
        act = jax.vmap(lambda o: policy(o, jax.random.PRNGKey(0))[0])
        run = jax.jit(functools.partial(episode_returns, env, act, episodes=episodes))
        per_seed.append(float(run(jax.random.PRNGKey(10_000 + seed)).mean()))
    return dict(per_seed=per_seed, train_s=round(time.perf_counter() - start, 1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--envs", default="hopper,walker2d,halfcheetah,ant")
    parser.add_argument("--backend", default="spring")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(HERE, "brax_table.json"))
    parser.add_argument("--algos", default="trpo,ppo")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = json.load(open(args.out)) if os.path.exists(args.out) else {}
    if not args.markdown:
        for name in args.envs.split(","):
            for algo, run in (("trpo", run_trpo), ("ppo", run_ppo)):
                if algo not in args.algos.split(","):
                    continue
                row = run(name, args.backend, args.steps, args.seeds, args.episodes)
                row.update(device=str(jax.devices()[0].device_kind), backend=args.backend,
                           steps=args.steps)
                rows[f"{name}/{algo}/{args.steps}"] = row
                with open(args.out, "w") as f:
                    json.dump(rows, f, indent=1)
                print(f"{name:12} {algo:5} {np.round(row['per_seed'], 1)} {row['train_s']} s",
                      flush=True)
    print("| env | algorithm | steps | seeds | IQM | worst seed | train s | device |")
    print("|---|---|---|---|---|---|---|---|")
    for tag, row in rows.items():
        name, algo, steps = tag.split("/")
        print(f"| {name} ({row['backend']}) | {algo} | {int(steps):,} | {len(row['per_seed'])} | "
              f"{trpo.interquartile_mean(np.array(row['per_seed'])):.1f} | "
              f"{min(row['per_seed']):.1f} | {row['train_s']} | {row['device']} |")


if __name__ == "__main__":
    main()
