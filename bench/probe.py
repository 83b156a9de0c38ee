"""Where a trained policy stops scoring: train --seeds seeds of one env (its preset, plus --set
overrides) from --key, then print per seed the mean return of --episodes greedy episodes (the
mode of pi, as trpo.evaluate and bench/gymnax_table.py), of as many episodes that sample from pi
(gymnax-blines' evaluation samples), and the last training return; then replay the last --replay
steps of one seed's first greedy episode: the env state's scalar fields and pi(a|s).

    python bench/probe.py --env Breakout-MinAtar --steps 2000000 --seeds 3
    python bench/probe.py --env Breakout-MinAtar --steps 2000000 --set normalize_observations=true
"""
import argparse
import os
import sys
from functools import partial

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # trpo, and gymnax_table when imported
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import gymnax_table as table  # noqa: E402
import trpo  # noqa: E402

EVAL_KEY = 12345


def sampled_returns(config, policy_params, obs_stats, key, num_episodes):
    """Returns of num_episodes episodes with actions sampled from pi, for the env's step limit
    (the action's key is fold_in(step key, 1); before 2026-12-01 it was split(step key)[0], and
    the env's split(step key)[1])."""
    agent = trpo.make_agent(config)
    norm = lambda obs: trpo.normalize(obs, obs_stats, config.normalize_observations)
    act = lambda obs, k: trpo.sample(agent.policy.apply(policy_params, norm(obs)),
                                     jax.random.fold_in(k, 1))
    _, rewards, alive = trpo.run_episodes(agent, act, key, num_episodes)
    return jnp.sum(rewards * alive, 0)


def replay(config, policy_params, obs_stats, key, last):
    """The last `last` steps of one greedy episode: scalar env-state fields and pi(a|s)."""
    agent = trpo.make_agent(config)
    states, rewards, alive = trpo.deterministic_episodes(agent, config, policy_params, obs_stats,
                                                         key, 1)
    length = int(alive[:, 0].sum())
    print(f"greedy episode: {length} steps, return {float((rewards * alive)[:, 0].sum()):g}")
    for t in range(max(0, length - last), length):
        state = jax.tree.map(lambda x: x[t, 0], states)
        fields = {k: v for k, v in vars(state).items() if np.ndim(v) == 0}
        obs = agent.env.get_obs(state, agent.env_params).reshape(1, -1).astype(jnp.float32)
        dist = agent.policy.apply(policy_params, trpo.normalize(obs, obs_stats,
                                                                config.normalize_observations))
        probs = jax.nn.softmax(dist.logits) if hasattr(dist, "logits") else dist.mean
        probs = [round(float(p), 3) for p in np.asarray(probs)[0]]
        print(f"  t={t} " + " ".join(f"{k}={np.asarray(v).item():g}" for k, v in fields.items())
              + f"  pi={probs}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Breakout-MinAtar")
    parser.add_argument("--steps", type=int, default=2_000_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--key", type=int, default=table.TUNING_SEED)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--replay", type=int, default=14, help="steps to replay (0: none)")
    parser.add_argument("--replay_seed", type=int, default=0, help="whose greedy episode")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    config = trpo.make_config(args.env, total_timesteps=args.steps,
                              **table.parse_overrides(args.set))
    keys = jax.random.split(jax.random.PRNGKey(args.key), args.seeds)
    state, metrics = jax.block_until_ready(jax.jit(jax.vmap(trpo.make_train(config)))(keys))
    greedy_key, sample_key, replay_key = jax.random.split(jax.random.PRNGKey(EVAL_KEY), 3)
    run = lambda fn, k: np.asarray(jax.jit(jax.vmap(lambda p, s: fn(config, p, s, k, args.episodes)
                                                    ))(state.policy_params, state.obs_stats))
    greedy = run(partial(trpo.evaluate, trpo.make_agent(config)), greedy_key)
    sampled = run(sampled_returns, sample_key)
    last = np.asarray(metrics.episode_return)[:, -1]
    for i in range(args.seeds):
        print(f"seed {i}: greedy {greedy[i].mean():.2f}, sampled {sampled[i].mean():.2f}, "
              f"last training return {last[i]:.2f}", flush=True)
    if args.replay:
        seed = jax.tree.map(lambda x: x[args.replay_seed], (state.policy_params, state.obs_stats))
        replay(config, *seed, replay_key, args.replay)


if __name__ == "__main__":
    main()
