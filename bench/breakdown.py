"""Where trpo.py's side of bench/vs_sb3.py spends its wall clock: imports, compile, training,
evaluation, for CartPole-v1 at the zoo budget with 8 vmapped seeds.

    python bench/breakdown.py --seeds 8
"""
import time

start = time.perf_counter()
import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import trpo  # noqa: E402

imported = time.perf_counter()
parser = argparse.ArgumentParser()
parser.add_argument("--seeds", type=int, default=8)
parser.add_argument("--env", default="CartPole-v1")
args = parser.parse_args()
config = trpo.make_config(args.env, total_timesteps=100_000)
keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
compiled = jax.jit(jax.vmap(trpo.make_train(config))).lower(keys).compile()
compiled_at = time.perf_counter()
state, metrics = jax.block_until_ready(compiled(keys))
trained = time.perf_counter()
agent = trpo.make_agent(config)
evaluate = jax.jit(jax.vmap(lambda p, s, k: trpo.evaluate(agent, config, p, s, k, 10)))
jax.block_until_ready(evaluate(state.policy_params, state.obs_stats, keys))
done = time.perf_counter()
print(f"{args.env}, {args.seeds} seeds: imports {imported - start:.1f} s, "
      f"compile {compiled_at - imported:.1f} s, training {trained - compiled_at:.1f} s, "
      f"evaluation {done - trained:.1f} s, total {done - start:.1f} s")
