"""Does observation normalization help where the zoo uses it? Preset on vs off, same seeds.

    python bench/obs_norm.py --seeds 4
"""
import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import trpo  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--seeds", type=int, default=4)
parser.add_argument("--envs", default="Acrobot-v1,MountainCar-v0,MountainCarContinuous-v0")
args = parser.parse_args()
print(f"{'env':26} {'steps':>7} {'normalize':>9} {'train final':>16} "
      f"{'eval (10 det. episodes)':>24}")
for env_name in args.envs.split(","):
    for normalize in (True, False):
        config = trpo.make_config(env_name, normalize_observations=normalize)
        keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
        state, metrics = jax.jit(jax.vmap(trpo.make_train(config)))(keys)
        agent = trpo.make_agent(config)
        evaluate = jax.jit(jax.vmap(lambda p, s, k: trpo.evaluate(agent, config, p, s, k, 10)))
        evals = np.asarray(evaluate(state.policy_params, state.obs_stats, keys)).mean(1)
        final = np.asarray(metrics.episode_return[:, -1])  # NaN: the run ended no episode
        print(f"{env_name:26} {config.total_timesteps:>7} {str(normalize):>9} "
              f"{np.nanmean(final):8.1f} ± {np.nanstd(final):5.1f} "
              f"{evals.mean():15.1f} ± {evals.std():5.1f}", flush=True)
