"""The two Fisher-vector products side by side, in one run: the Hessian-vector product of the
mean KL (jvp of grad, trpo.py's product) against the Gauss-Newton product J^T M J, linearized
once per update. trpo.py keeps only the first; the second lives here, and whole runs use it by
swapping a bench-local trpo_step into trpo for their compile. Both compute the same F v; this
measures what each costs and whether learning changes.

    python bench/fisher.py --seeds 64 --repeats 2

Prints (1) where a vmapped many-seed run spends its time, by ablation (cg_iters=1, vf_epochs=1),
(2) one CG solve alone, (3) whole vmapped runs, alternated, with their learning figures.
"""
import argparse
import contextlib
import dataclasses
import os
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import trpo  # noqa: E402


def kl_hessian_product(dist, tangent):
    """M t, with M the Hessian of KL(pi_old || pi) in pi's outputs at pi = pi_old (paper
    App. C.1): Categorical logits: M = diag(p) - p p^T.  Gaussian (mean, log_std):
    M = diag(1/sigma^2, 2)."""
    if isinstance(dist, trpo.Categorical):
        p = jax.nn.softmax(dist.logits)
        return trpo.Categorical(p * tangent.logits
                                - p * jnp.sum(p * tangent.logits, -1, keepdims=True))
    return trpo.DiagGaussian(tangent.mean * jnp.exp(-2.0 * dist.log_std), 2.0 * tangent.log_std)


def gauss_newton_vector_product(policy_apply, unravel, theta, obs, damping):
    """Returns v -> F v + damping v with F = (1/B) sum_s J_s^T M_s J_s, J_s = d pi(.|s) / d theta
    (paper App. C.1). At theta_old this F equals the KL Hessian. J is linearized once, so a
    product costs one forward-mode and one reverse-mode pass, with no second derivatives."""
    dist, jacobian_product = jax.linearize(lambda t: policy_apply(unravel(t), obs), theta)
    transpose_product = jax.linear_transpose(jacobian_product, theta)
    return lambda v: (transpose_product(kl_hessian_product(dist, jacobian_product(v)))[0]
                      / obs.shape[0] + damping * v)


def hessian_vector_product(policy_apply, unravel, theta, obs, damping):
    """trpo.py's product (jvp of grad of the mean KL), in the same shape as the one above."""
    old_dist = jax.lax.stop_gradient(policy_apply(unravel(theta), obs))
    kl_fn = lambda t: trpo.mean_kl(policy_apply, unravel(t), old_dist, obs)
    return lambda v: trpo.fisher_vector_product(kl_fn, theta, v, damping)


def gauss_newton_trpo_step(policy_apply, params, batch, hp):
    """trpo.trpo_step with the Fisher-vector product J^T M J instead of jvp of grad."""
    chex.assert_rank([batch.advantage, batch.old_log_prob], 1)
    theta_old, unravel = ravel_pytree(params)
    old_dist = jax.lax.stop_gradient(policy_apply(params, batch.obs))
    surrogate_fn = lambda theta: trpo.surrogate(policy_apply, unravel(theta), batch)
    kl_fn = lambda theta: trpo.mean_kl(policy_apply, unravel(theta), old_dist, batch.obs)
    fvp = gauss_newton_vector_product(policy_apply, unravel, theta_old, batch.obs, hp.cg_damping)

    grad = jax.grad(surrogate_fn)(theta_old)
    grad = jnp.where(jnp.all(jnp.isfinite(grad)), grad, 0.0)
    direction, cg_info = trpo.conjugate_gradient(fvp, grad, hp.cg_iters, hp.cg_residual_tol)
    shs = trpo.dot(direction, fvp(direction))
    valid = jnp.isfinite(shs) & (shs > 0) & jnp.all(jnp.isfinite(direction))
    beta = jnp.sqrt(2.0 * hp.max_kl / jnp.where(valid, shs, 1.0))
    full_step = jnp.where(valid, beta * direction, 0.0)
    theta_new, ls_info = trpo.line_search(surrogate_fn, kl_fn, theta_old, full_step, hp.max_kl,
                                          hp.line_search_shrink, hp.line_search_steps)
    return unravel(theta_new), trpo.TRPOInfo(cg_info, ls_info, jnp.mean(trpo.entropy(old_dist)))


# name -> (trpo_step to trace whole runs with, product for a CG solve alone)
PRODUCTS = {"jvp of grad": (trpo.trpo_step, hessian_vector_product),
            "J^T M J": (gauss_newton_trpo_step, gauss_newton_vector_product)}


@contextlib.contextmanager
def using_trpo_step(step):
    """Swap step in for trpo.trpo_step while something is traced, then restore it."""
    original = trpo.trpo_step
    trpo.trpo_step = step
    try:
        yield
    finally:
        trpo.trpo_step = original


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


def compiled_run(config, keys, product="jvp of grad"):
    """The vmapped train, traced with the product's trpo_step (compiled, so it keeps it)."""
    with using_trpo_step(PRODUCTS[product][0]):
        return jax.jit(jax.vmap(trpo.make_train(config))).lower(keys).compile()


def learning(metrics):
    final = np.asarray(metrics.episode_return[:, -1])  # NaN: the run ended no episode
    return final, float(np.nanmean(metrics.episode_return))


def cg_alone(config, repeats):
    """One CG solve on a rollout batch of a freshly initialized policy, per product."""
    agent = trpo.make_agent(config)
    s = trpo.init_train_state(agent, config, jax.random.PRNGKey(0))
    rollout = jax.jit(lambda k: trpo.rollout(agent, s.policy_params, s.critic.params, s.runner,
                                             s.obs_stats, s.return_stats, k, config))
    *_, transitions = rollout(jax.random.PRNGKey(1))
    obs = transitions.obs.reshape(-1, agent.obs_dim)
    theta, unravel = ravel_pytree(s.policy_params)
    rhs = jax.random.normal(jax.random.PRNGKey(2), theta.shape)
    times = {}
    for name, (_, product) in PRODUCTS.items():
        solve = jax.jit(lambda t, o, b, product=product: trpo.conjugate_gradient(
            product(agent.policy.apply, unravel, t, o, config.cg_damping), b, config.cg_iters,
            0.0)[0])
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
    keys = jax.random.split(jax.random.PRNGKey(args.key), args.seeds)
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, {args.env}, "
          f"{args.seeds} seeds, {config.num_envs} envs x {config.num_steps} steps, "
          f"{config.total_timesteps} steps per seed", flush=True)

    whole, _ = run_once(compiled_run(config, keys), keys)
    no_cg, _ = run_once(compiled_run(dataclasses.replace(config, cg_iters=1), keys), keys)
    no_critic, _ = run_once(compiled_run(dataclasses.replace(config, vf_epochs=1), keys), keys)
    per_cg_iteration = (whole - no_cg) / (config.cg_iters - 1)
    per_critic_epoch = (whole - no_critic) / (config.vf_epochs - 1)
    cg_share = config.cg_iters * per_cg_iteration / whole
    critic_share = config.vf_epochs * per_critic_epoch / whole
    print(f"profile by ablation (default, jvp of grad): run {whole:.2f} s; cg_iters=1 "
          f"{no_cg:.2f} s; vf_epochs=1 {no_critic:.2f} s -> CG ~{cg_share:.0%}, "
          f"critic ~{critic_share:.0%}, rest ~{1 - cg_share - critic_share:.0%}", flush=True)

    times = cg_alone(config, args.repeats)
    names = list(PRODUCTS)
    print("CG alone (one solve, " + ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in times.items())
          + f"): ratio {times[names[0]] / times[names[1]]:.2f}x", flush=True)

    compiled = {name: compiled_run(config, keys, name) for name in names}
    best = {name: float("inf") for name in names}
    results = {}
    for _ in range(args.repeats):
        for name in names:
            seconds, (_, metrics) = run_once(compiled[name], keys)
            best[name] = min(best[name], seconds)
            results[name] = learning(metrics)
    for name in names:
        final, auc = results[name]
        print(f"{name:18s}: run {best[name]:.2f} s, final {np.nanmean(final):.1f} +- "
              f"{np.nanstd(final):.1f}, {int((final >= 475).sum())}/{len(final)} seeds >= 475, "
              f"mean return over training {auc:.1f}")
    print(f"whole-run ratio (jvp of grad / J^T M J): {best[names[0]] / best[names[1]]:.2f}x")


if __name__ == "__main__":
    main()
