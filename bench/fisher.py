"""The two Fisher-vector products side by side, in one run: the Hessian-vector product of the
mean KL (jvp of grad, the default) against the Gauss-Newton product J^T M J, linearized once per
update (`--gauss_newton_fisher true`). Both compute the same F v; this measures what each costs
and whether learning changes.

    python bench/fisher.py --seeds 64 --repeats 2

Prints (1) where a vmapped many-seed run spends its time, by ablation (cg_iters=1, vf_epochs=1),
(2) one CG solve alone, (3) whole vmapped runs, alternated, with their learning figures.
"""
import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import trpo  # noqa: E402



def hessian_vector_product(policy_apply, unravel, theta, obs, damping):
    """The default product, in the same shape as trpo.gauss_newton_vector_product."""
    old_dist = jax.lax.stop_gradient(policy_apply(unravel(theta), obs))
    kl_fn = lambda t: trpo.mean_kl(policy_apply, unravel(t), old_dist, obs)
    return lambda v: trpo.fisher_vector_product(kl_fn, theta, v, damping)


PRODUCTS = {"jvp of grad": (False, hessian_vector_product),
            "J^T M J": (True, trpo.gauss_newton_vector_product)}


def run_once(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def timed(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best, out


def compiled_run(config, keys):
    return jax.jit(jax.vmap(trpo.make_train(config))).lower(keys).compile()


def learning(metrics):
    final = np.asarray(metrics.episode_return[:, -1])
    return final, float(np.asarray(metrics.episode_return).mean())


def cg_alone(config, repeats):
    """One CG solve on a batch from a partly trained CartPole policy."""
    agent = trpo.make_agent(config)
    state = trpo.init_train_state(agent, config, jax.random.PRNGKey(0))
    _, transitions = jax.jit(lambda s, k: trpo.rollout(agent, s, k, config))(state, jax.random.PRNGKey(1))
    obs = transitions.obs.reshape(-1, agent.obs_dim)
    theta, unravel = ravel_pytree(state.policy_params)
    rhs = jax.random.normal(jax.random.PRNGKey(2), theta.shape)
    times = {}
    for name, (_, product) in PRODUCTS.items():
        solve = jax.jit(lambda t, o, b, product=product: trpo.conjugate_gradient(
            product(agent.policy.apply, unravel, t, o, config.cg_damping), b, config.cg_iters, 0.0)[0])
        times[name], _ = timed(solve, theta, obs, rhs, repeats=20 * repeats)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternated timed runs per product")
    parser.add_argument("--key", type=int, default=7)
    args = parser.parse_args()
    config = trpo.make_config(args.env)
    with_product = lambda name: dataclasses.replace(config, gauss_newton_fisher=PRODUCTS[name][0])
    keys = jax.random.split(jax.random.PRNGKey(args.key), args.seeds)
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, {args.env}, {args.seeds} seeds, "
          f"{config.num_envs} envs x {config.num_steps} steps, {config.total_timesteps} steps per seed", flush=True)

    base = with_product("jvp of grad")
    whole, _ = run_once(compiled_run(base, keys), keys)
    no_cg, _ = run_once(compiled_run(dataclasses.replace(base, cg_iters=1), keys), keys)
    no_critic, _ = run_once(compiled_run(dataclasses.replace(base, vf_epochs=1), keys), keys)
    per_cg_iteration = (whole - no_cg) / (config.cg_iters - 1)
    per_critic_epoch = (whole - no_critic) / (config.vf_epochs - 1)
    cg_share, critic_share = config.cg_iters * per_cg_iteration / whole, config.vf_epochs * per_critic_epoch / whole
    print(f"profile by ablation (default, jvp of grad): run {whole:.2f} s; cg_iters=1 {no_cg:.2f} s; vf_epochs=1 {no_critic:.2f} s "
          f"-> CG ~{cg_share:.0%}, critic ~{critic_share:.0%}, rest ~{1 - cg_share - critic_share:.0%}", flush=True)

    times = cg_alone(config, args.repeats)
    names = list(PRODUCTS)
    print("CG alone (one solve, " + ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in times.items())
          + f"): ratio {times[names[0]] / times[names[1]]:.2f}x", flush=True)

    compiled = {}
    for name in names:
        compiled[name] = compiled_run(with_product(name), keys)
    best = {name: float("inf") for name in names}
    results = {}
    for _ in range(args.repeats):
        for name in names:
            seconds, (_, metrics) = run_once(compiled[name], keys)
            best[name] = min(best[name], seconds)
            results[name] = learning(metrics)
    for name in names:
        final, auc = results[name]
        print(f"{name:18s}: run {best[name]:.2f} s, final {final.mean():.1f} +- {final.std():.1f}, "
              f"{int((final >= 475).sum())}/{len(final)} seeds >= 475, mean return over training {auc:.1f}")
    print(f"whole-run ratio (jvp of grad / J^T M J): {best[names[0]] / best[names[1]]:.2f}x")


if __name__ == "__main__":
    main()
