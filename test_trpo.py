"""Tests for trpo.py. Each checks a number against an independent reference or a learning threshold."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import trpo

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_config(env_name="CartPole-v1", **overrides):
    fields = dict(num_envs=4, num_steps=32, total_timesteps=3 * 4 * 32, vf_epochs=2, vf_minibatches=2,
                  hidden_sizes=(16, 16), cg_iters=5)
    return trpo.make_config(env_name, **{**fields, **overrides})


def random_policy_batch(discrete, key, batch=64, obs_dim=3, action_dim=2):
    """A small policy, its params and a PolicyBatch drawn from it."""
    policy = trpo.PolicyNetwork(action_dim, discrete, (8,), init_log_std=-0.3)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    obs = jax.random.normal(k1, (batch, obs_dim))
    params = policy.init(k2, obs)
    # Move off the near-uniform init so the Fisher matrix is not trivial.
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(k3, p.shape), params)
    dist = policy.apply(params, obs)
    action = trpo.sample(dist, k4)
    advantage = jax.random.normal(jax.random.fold_in(key, 7), (batch,))
    return policy, params, trpo.PolicyBatch(obs, action, advantage, trpo.log_prob(dist, action))


# ----------------------------------------------------------------------------- conjugate gradient
@pytest.mark.parametrize("n,condition", [(20, 10.0), (50, 1e2), (100, 1e3), (200, 1e3)])
def test_conjugate_gradient_matches_linalg_solve(n, condition):
    with jax.enable_x64(True):
        key_q, key_b = jax.random.split(jax.random.PRNGKey(n))
        q, _ = jnp.linalg.qr(jax.random.normal(key_q, (n, n), jnp.float64))
        a = q @ jnp.diag(jnp.logspace(0, np.log10(condition), n)) @ q.T
        b = jax.random.normal(key_b, (n,), jnp.float64)
        x, info = trpo.conjugate_gradient(lambda v: a @ v, b, max_iters=4 * n, residual_tol=1e-24)
        reference = jnp.linalg.solve(a, b)
        assert float(jnp.linalg.norm(x - reference) / jnp.linalg.norm(reference)) <= 1e-4
        assert int(info.iterations) <= 4 * n


def test_conjugate_gradient_float32_policy_scale():
    """float32, as in training: n=50, condition 1e2, CG reaches 1e-4 relative error."""
    n = 50
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(1), (n, n)))
    a = q @ jnp.diag(jnp.logspace(0, 2, n)) @ q.T
    b = jax.random.normal(jax.random.PRNGKey(2), (n,))
    x, _ = trpo.conjugate_gradient(lambda v: a @ v, b, max_iters=200, residual_tol=1e-12)
    reference = jnp.linalg.solve(a, b)
    assert float(jnp.linalg.norm(x - reference) / jnp.linalg.norm(reference)) <= 1e-4


@pytest.mark.parametrize("tol", [1e-10, 0.0])
def test_conjugate_gradient_zero_rhs_returns_zero(tol):
    x, info = jax.jit(lambda b: trpo.conjugate_gradient(lambda v: 2.0 * v, b, 10, tol))(jnp.zeros(7))
    assert np.all(np.asarray(x) == 0.0) and np.all(np.isfinite(np.asarray(x)))
    assert np.isfinite(float(info.residual))


# ----------------------------------------------------------------------------- Fisher-vector product
@pytest.mark.parametrize("discrete", [True, False])
def test_fisher_vector_product_matches_hessian(discrete):
    policy, params, batch = random_policy_batch(discrete, jax.random.PRNGKey(3))
    theta, unravel = ravel_pytree(params)
    old_dist = policy.apply(params, batch.obs)
    kl_fn = lambda t: trpo.mean_kl(policy.apply, unravel(t), old_dist, batch.obs)
    v = jax.random.normal(jax.random.PRNGKey(4), theta.shape)
    damping = 0.1
    fvp = trpo.fisher_vector_product(kl_fn, theta, v, damping)
    reference = jax.hessian(kl_fn)(theta) @ v + damping * v
    assert float(jnp.linalg.norm(fvp - reference) / jnp.linalg.norm(reference)) <= 1e-4
    # The undamped product is non-trivial: the test would notice a missing Hessian term.
    assert float(jnp.linalg.norm(fvp - damping * v)) > 1e-3 * float(jnp.linalg.norm(fvp))


# ----------------------------------------------------------------------------- KL divergence
def monte_carlo_kl(p, q, key, n=200_000):
    samples = trpo.sample(jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), p), key)
    expand = lambda d: jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), d)
    log_ratio = trpo.log_prob(expand(p), samples) - trpo.log_prob(expand(q), samples)
    return float(log_ratio.mean()), float(log_ratio.std() / np.sqrt(n))


@pytest.mark.parametrize("discrete", [True, False])
def test_kl_matches_monte_carlo(discrete):
    key_p, key_q, key_s = jax.random.split(jax.random.PRNGKey(5), 3)
    if discrete:
        p = trpo.Categorical(jax.random.normal(key_p, (5,)))
        q = trpo.Categorical(jax.random.normal(key_q, (5,)))
    else:
        p = trpo.DiagGaussian(jax.random.normal(key_p, (3,)), jnp.array([-0.5, 0.0, 0.3]))
        q = trpo.DiagGaussian(jax.random.normal(key_q, (3,)), jnp.array([0.2, -0.4, 0.0]))
    analytic = float(trpo.kl_divergence(p, q))
    estimate, standard_error = monte_carlo_kl(p, q, key_s)
    assert abs(analytic - estimate) <= 3 * standard_error
    assert analytic > 0
    assert float(trpo.kl_divergence(p, p)) == pytest.approx(0.0, abs=1e-6)


def test_entropy_matches_monte_carlo():
    for dist in (trpo.Categorical(jnp.array([0.3, -1.0, 2.0])),
                 trpo.DiagGaussian(jnp.array([0.5, -1.0]), jnp.array([-0.7, 0.4]))):
        n = 200_000
        batched = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), dist)
        neg_log_p = -trpo.log_prob(batched, trpo.sample(batched, jax.random.PRNGKey(6)))
        assert abs(float(trpo.entropy(dist)) - float(neg_log_p.mean())) <= 3 * float(neg_log_p.std()) / np.sqrt(n)


# ----------------------------------------------------------------------------- GAE
def python_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, summed forward until the episode (or batch) ends."""
    steps, envs = rewards.shape
    advantages = np.zeros((steps, envs))
    for n in range(envs):
        for t in range(steps):
            total, coefficient = 0.0, 1.0
            for k in range(t, steps):
                bootstrap = 0.0 if terminated[k, n] else gamma * next_values[k, n]
                total += coefficient * (rewards[k, n] + bootstrap - values[k, n])
                if terminated[k, n] or truncated[k, n]:
                    break
                coefficient *= gamma * lam
            advantages[t, n] = total
    return advantages


def test_gae_matches_python_loop():
    rng = np.random.default_rng(0)
    steps, envs = 40, 5
    rewards, values, next_values = (rng.normal(size=(steps, envs)).astype(np.float32) for _ in range(3))
    terminated = rng.random((steps, envs)) < 0.1
    truncated = (rng.random((steps, envs)) < 0.1) & ~terminated
    advantages, targets = trpo.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(next_values),
                                   jnp.asarray(terminated), jnp.asarray(truncated), 0.97, 0.9)
    reference = python_gae(rewards, values, next_values, terminated, truncated, 0.97, 0.9)
    np.testing.assert_allclose(np.asarray(advantages), reference, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(targets), reference + values, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- surrogate and line search
@pytest.mark.parametrize("discrete", [True, False])
def test_surrogate_gradient_is_policy_gradient(discrete):
    policy, params, batch = random_policy_batch(discrete, jax.random.PRNGKey(8))
    grad = ravel_pytree(jax.grad(lambda p: trpo.surrogate(policy.apply, p, batch))(params))[0]
    def single_log_prob(p, obs, action):
        return trpo.log_prob(policy.apply(p, obs[None]), action[None])[0]
    per_sample = jax.vmap(jax.grad(single_log_prob), in_axes=(None, 0, 0))(params, batch.obs, batch.action)
    jacobian = jax.vmap(lambda g: ravel_pytree(g)[0])(per_sample)  # [B, num_params]
    reference = (jacobian * batch.advantage[:, None]).mean(0)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(reference), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("discrete", [True, False])
def test_trpo_step_accepted_step_respects_trust_region(discrete):
    policy, params, batch = random_policy_batch(discrete, jax.random.PRNGKey(9), batch=256)
    config = trpo.Config(max_kl=0.01)
    new_params, info = jax.jit(lambda p, b: trpo.trpo_step(policy.apply, p, b, config))(params, batch)
    assert bool(info.line_search.accepted)
    old_dist = policy.apply(params, batch.obs)
    kl = float(trpo.mean_kl(policy.apply, new_params, old_dist, batch.obs))
    assert kl <= config.max_kl and kl > 0
    gain = float(trpo.surrogate(policy.apply, new_params, batch) - trpo.surrogate(policy.apply, params, batch))
    assert gain > 0
    assert float(info.line_search.improvement) == pytest.approx(gain, rel=1e-3)


def test_line_search_forced_failure_returns_old_params_exactly():
    policy, params, batch = random_policy_batch(False, jax.random.PRNGKey(10))
    theta, unravel = ravel_pytree(params)
    old_dist = policy.apply(params, batch.obs)
    surrogate_fn = lambda t: trpo.surrogate(policy.apply, unravel(t), batch)
    kl_fn = lambda t: trpo.mean_kl(policy.apply, unravel(t), old_dist, batch.obs)
    downhill = -jax.grad(surrogate_fn)(theta)  # every step along it lowers the surrogate
    config = trpo.Config(line_search_steps=5)
    new_theta, info = trpo.line_search(surrogate_fn, kl_fn, theta, downhill, 0.01, config)
    assert not bool(info.accepted) and int(info.backtracks) == 5
    assert np.array_equal(np.asarray(new_theta), np.asarray(theta))
    # A KL bound no step can meet: rejected, the params come back bit-identical.
    new_params, info = trpo.trpo_step(policy.apply, params, batch, dataclasses.replace(config, max_kl=1e-30))
    assert not bool(info.line_search.accepted)
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_zero_advantages_leave_policy_unchanged_without_nan():
    policy, params, batch = random_policy_batch(True, jax.random.PRNGKey(11))
    batch = batch._replace(advantage=jnp.zeros_like(batch.advantage))
    new_params, info = trpo.trpo_step(policy.apply, params, batch, trpo.Config())
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(info))


# ----------------------------------------------------------------------------- training
def test_train_is_deterministic_and_vmap_matches_separate_runs():
    train = jax.jit(trpo.make_train(tiny_config()))
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    _, first = train(keys[0])
    _, again = train(keys[0])
    _, second = train(keys[1])
    for a, b in zip(first, again):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    _, both = jax.jit(jax.vmap(trpo.make_train(tiny_config())))(keys)
    for name, a, b0, b1 in zip(trpo.Metrics._fields, both, first, second):
        np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b0), rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b1), rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("env_name", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1",
                                      "MountainCarContinuous-v0", "Breakout-MinAtar", "Catch-bsuite"])
def test_smoke_every_listed_env(env_name):
    config = tiny_config(env_name)
    state, metrics = jax.jit(trpo.make_train(config))(jax.random.PRNGKey(0))
    assert metrics.env_steps.shape == (3,)
    assert int(metrics.env_steps[-1]) == 3 * config.num_envs * config.num_steps
    for name, value in metrics._asdict().items():
        assert np.all(np.isfinite(np.asarray(value, dtype=np.float64))), name
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.policy_params))


def test_gaussian_log_std_is_updated():
    config = tiny_config("Pendulum-v1")
    initial = jax.jit(lambda k: trpo.init_train_state(trpo.make_agent(config), config, k))(jax.random.PRNGKey(0))
    state, metrics = jax.jit(trpo.make_train(config))(jax.random.PRNGKey(0))
    assert bool(metrics.line_search_accepted.any())
    log_std = state.policy_params["params"]["log_std"]
    assert not np.array_equal(np.asarray(log_std), np.asarray(initial.policy_params["params"]["log_std"]))


def train_seeds(config, seeds):
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    _, metrics = jax.jit(jax.vmap(trpo.make_train(config)))(keys)
    return np.asarray(metrics.episode_return)


def test_learns_cartpole_every_seed():
    """Defaults, 4 seeds x 100k steps: every seed's final mean return >= 475."""
    returns = train_seeds(trpo.make_config("CartPole-v1"), 4)
    print("CartPole-v1 final returns:", returns[:, -1])
    assert np.all(returns[:, -1] >= 475), returns[:, -1]


def test_learns_acrobot():
    """Acrobot preset (200k steps, observation normalization), 4 seeds: mean >= -100."""
    config = trpo.make_config("Acrobot-v1")
    assert config.total_timesteps <= 200_000
    returns = train_seeds(config, 4)
    print("Acrobot-v1 final returns:", returns[:, -1])
    assert returns[:, -1].mean() >= -100, returns[:, -1]


def test_learns_pendulum():
    """Pendulum preset (1M steps, gamma 0.9, 32 envs x 128 steps, max_kl 0.01), 4 seeds: mean >= -250."""
    config = trpo.make_config("Pendulum-v1")
    assert config.total_timesteps <= 1_000_000
    returns = train_seeds(config, 4)
    print("Pendulum-v1 final returns:", returns[:, -1])
    assert returns[:, -1].mean() >= -250, returns[:, -1]


# ----------------------------------------------------------------------------- CLI
def run_cli(*args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, os.path.join(HERE, "trpo.py"), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=HERE)


def test_cli_help_lists_every_config_field():
    result = run_cli("--help")
    assert result.returncode == 0
    for field in dataclasses.fields(trpo.Config):
        flag = "--env" if field.name == "env_name" else f"--{field.name}"
        assert flag in result.stdout, flag
    assert "--seeds" in result.stdout


def test_cli_trains_with_progress_and_summary(tmp_path):
    result = run_cli("--env", "CartPole-v1", "--seeds", "2", "--num_envs", "4", "--num_steps", "32",
                     "--total_timesteps", "2560", "--no-compile-cache")
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("update")]
    assert len(progress) >= 10  # at least every ~10% of the 20 updates
    assert "final mean return" in result.stdout and "compile" in result.stdout
