"""The three scale figures of the GPU goals, measured on whatever device JAX sees:
(a) many CartPole agents (vmapped seeds, 100k steps each): run time, and how many reach >= 475;
(b) one large-batch CartPole run: run time until the batch return first reaches 500;
(c) the cold compile time of train (run with an empty compilation cache).

    python bench/scale.py --seeds 1024 --big_envs 2048      # the GPU goals
    python bench/scale.py --seeds 64 --big_envs 2048        # what a 2-core CPU can do in minutes
"""
import argparse
import os
import sys
import time

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import trpo  # noqa: E402


def compile_and_run(fn, *args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_time = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, compile_time, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--big_envs", type=int, default=2048)
    parser.add_argument("--big_steps", type=int, default=16)
    parser.add_argument("--big_updates", type=int, default=100)
    parser.add_argument("--big_max_kl", type=float, default=0.1,
                        help="large batches take larger steps")
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    cold_compile = compile_time_of_default()  # first, so nothing is cached in this process yet

    config = trpo.make_config("CartPole-v1")
    (_, metrics), compile_time, run_time = compile_and_run(
        jax.vmap(trpo.make_train(config)), jax.random.split(jax.random.PRNGKey(0), args.seeds))
    final = np.asarray(metrics.episode_return[:, -1])  # NaN: the run ended no episode
    print(f"(a) {args.seeds} CartPole agents x 100k steps: run {run_time:.2f} s "
          f"(compile {compile_time:.1f} s), mean final return {np.nanmean(final):.1f}, "
          f"{np.mean(final >= 475):.0%} of seeds >= 475")

    big = trpo.make_config("CartPole-v1", num_envs=args.big_envs, num_steps=args.big_steps,
                           max_kl=args.big_max_kl,
                           total_timesteps=args.big_envs * args.big_steps * args.big_updates)
    (_, metrics), compile_time, run_time = compile_and_run(trpo.make_train(big),
                                                           jax.random.PRNGKey(0))
    returns = np.asarray(metrics.episode_return)
    hit = np.flatnonzero(returns >= 500)
    when = "never"
    if hit.size:
        first = hit[0] + 1
        when = f"update {first}/{len(returns)}, ~{run_time * first / len(returns):.2f} s"
    print(f"(b) one run, {args.big_envs} envs x {args.big_steps} steps/update: {run_time:.2f} s "
          f"for {len(returns)} updates; return 500 first at {when}; final {returns[-1]:.1f}")
    print("(c) cold compile of train (CartPole defaults, 1 seed, first compile in the process): "
          f"{cold_compile:.1f} s")


def compile_time_of_default():
    config = trpo.make_config("CartPole-v1")
    start = time.perf_counter()
    jax.jit(trpo.make_train(config)).lower(jax.random.PRNGKey(1)).compile()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
