"""trpo.py training throughput against the raw rollout limit, side by side in one run.

The limit: the same gymnax env, the same policy network sampling actions, the same num_envs, in one
lax.scan, with no learning. Also prints the compile time of train. Runs unchanged on a CPU or a GPU.

    python bench/throughput.py --env CartPole-v1 --grid 8,32,128,512,2048
"""
import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import trpo  # noqa: E402
from phases import best_time  # noqa: E402


def raw_rollout_fn(config: trpo.Config, total_steps: int):
    """Policy sampling + env.step for total_steps env steps, no learning."""
    agent = trpo.make_agent(config)
    state = trpo.init_train_state(agent, config, jax.random.PRNGKey(0))

    def step(carry, key):
        env_state, obs = carry
        act_key, env_key = jax.random.split(key)
        action = trpo.sample(agent.policy.apply(state.policy_params, obs), act_key)
        # trpo.step_envs maps the actions with trpo.env_actions and vmaps env.step
        obs, env_state, reward, *_ = trpo.step_envs(agent, env_state, action, env_key)
        return (env_state, obs), reward.sum()

    def run(key):
        carry = (state.runner.env_state, state.runner.obs)
        keys = jax.random.split(key, total_steps // config.num_envs)
        return jax.lax.scan(step, carry, keys)[1].sum()

    return jax.jit(run)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--grid", default="8,32,128,512,2048")
    parser.add_argument("--num_steps", type=int, default=128)
    parser.add_argument("--updates", type=int, default=10)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, "
          f"env {args.env}")
    print(f"{'num_envs':>8} {'batch':>8} {'train steps/s':>14} {'rollout steps/s':>16} "
          f"{'train/limit':>12} {'compile s':>10}")
    for num_envs in map(int, args.grid.split(",")):
        batch = num_envs * args.num_steps
        config = trpo.make_config(args.env, num_envs=num_envs, num_steps=args.num_steps,
                                  total_timesteps=args.updates * batch, vf_minibatches=4)
        train = jax.jit(trpo.make_train(config))
        key = jax.random.PRNGKey(0)
        start = time.perf_counter()
        compiled = train.lower(key).compile()
        compile_time = time.perf_counter() - start
        train_time = best_time(compiled, key, repeats=3)
        raw_time = best_time(raw_rollout_fn(config, args.updates * batch), key, repeats=3)
        steps = args.updates * batch
        print(f"{num_envs:>8} {batch:>8} {steps / train_time:>14,.0f} {steps / raw_time:>16,.0f} "
              f"{raw_time / train_time:>12.3f} {compile_time:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
