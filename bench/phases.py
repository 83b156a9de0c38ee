"""Where one TRPO update spends its time: rollout, trust-region step (grad + CG + line search),
critic epochs. Each phase is jitted alone and timed best-of-N, all in one run.

    python bench/phases.py --env CartPole-v1 --num_envs 8 --num_steps 128
"""
import argparse
import dataclasses
import os
import sys
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import trpo  # noqa: E402


def best_time(fn, *args, repeats=20):
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def profile(config: trpo.Config) -> dict:
    agent = trpo.make_agent(config)
    state = trpo.init_train_state(agent, config, jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    rollout = jax.jit(lambda s, k: trpo.rollout(agent, s.policy_params, s.critic.params, s.runner,
                                                s.obs_stats, s.return_stats, k, config)[3])
    transitions = rollout(state, key)

    def batch_of(tr):
        adv, targets = trpo.gae(tr.reward, tr.value, tr.next_value, tr.terminated, tr.truncated,
                                config.gamma, config.gae_lambda)
        flat = lambda x: x.reshape(-1, *x.shape[2:])
        adv = (flat(adv) - adv.mean()) / (adv.std() + 1e-8)
        batch = trpo.PolicyBatch(flat(tr.obs), flat(tr.action), adv, flat(tr.log_prob))
        return batch, flat(targets)

    batch, targets = jax.jit(batch_of)(transitions)
    hp = trpo.TRPOHyperparams(*(getattr(config, n) for n in trpo.TRPOHyperparams._fields))
    policy = jax.jit(lambda p, b: trpo.trpo_step(agent.policy.apply, p, b, hp))
    critic = jax.jit(lambda c, o, t, k: trpo.update_critic(agent.value.apply, c, o, t, k, config))
    times = {"rollout": best_time(rollout, state, key),
             "trust-region step": best_time(policy, state.policy_params, batch),
             "critic": best_time(critic, state.critic, batch.obs, targets, key)}
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--shapes", default="8x128,64x128,2048x16",
                        help="num_envs x num_steps pairs")
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, env {args.env}")
    for shape in args.shapes.split(","):
        num_envs, num_steps = map(int, shape.split("x"))
        base = trpo.make_config(args.env, num_envs=num_envs, num_steps=num_steps,
                                total_timesteps=num_envs * num_steps)
        few = dataclasses.replace(base, vf_minibatches=1, vf_epochs=5)
        for label, config in (("default", base), ("vf_minibatches=1, vf_epochs=5", few)):
            times = profile(config)
            total = sum(times.values())
            shares = ", ".join(f"{name} {t * 1e3:.1f} ms ({t / total:.0%})"
                               for name, t in times.items())
            print(f"{num_envs}x{num_steps} [{label}]: update {total * 1e3:.1f} ms = {shares}",
                  flush=True)


if __name__ == "__main__":
    main()
