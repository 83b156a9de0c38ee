"""Tests for examples/brax_env.py, the Brax adapter: a time limit is truncated, not terminated,
and bootstrapped from the true final observation."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
import trpo  # noqa: E402


def test_brax_adapter_bootstraps_a_time_limit_from_v_of_the_final_observation():
    """examples/brax_env.py (skipped without brax; CI installs only requirements.txt): with a
    5-step limit on inverted_pendulum, step 5 of each env is truncated, not terminated, and its
    V(s') is V of the observation reached by replaying the stored actions through the bare Brax
    env from the first state, here; the next step starts a new episode elsewhere."""
    pytest.importorskip("brax")
    from brax_env import BraxEnv
    env = BraxEnv("inverted_pendulum", backend="spring", episode_length=5)
    config = trpo.make_config("brax-inverted_pendulum", num_envs=2, num_steps=8,
                              total_timesteps=16, vf_minibatches=2, hidden_sizes=(16, 16))
    agent = trpo.make_agent(config, env, env.default_params)
    state = trpo.init_train_state(agent, config, jax.random.PRNGKey(0))
    shifted = jax.tree.map(lambda p: p + 0.5 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                           state.critic.params)  # a critic that tells observations apart
    *_, tr = trpo.rollout(agent, state.policy_params, shifted, state.runner, state.obs_stats,
                          state.return_stats, jax.random.PRNGKey(1), config)
    value = lambda o: float(agent.value.apply(shifted, o))
    assert np.asarray(tr.truncated).nonzero()[0].tolist() == [4, 4]
    assert not np.asarray(tr.terminated).any()
    for n in range(2):
        brax_state = jax.tree.map(lambda x: x[n], state.runner.env_state.brax)
        for t in range(5):
            brax_state = env.env.step(brax_state, jnp.clip(tr.action[t, n], -1, 1))
        assert tr.next_value[4, n] == pytest.approx(value(brax_state.obs), rel=1e-5, abs=1e-6)
        assert not np.allclose(tr.obs[5, n], brax_state.obs)
