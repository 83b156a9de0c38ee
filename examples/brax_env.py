"""A Brax env behind gymnax's interface, with time limits that GAE can bootstrap.

Brax's own wrappers lose what correct GAE needs: `AutoResetWrapper` swaps in a cached first
state (every episode of an env starts the same) and drops the pre-reset observation, and
`EpisodeWrapper` sets `done` at the time limit. This adapter wraps the bare env and does both
itself:
- `terminated` is the env's own `done` (a fall): never bootstrapped;
- `truncated` is the time limit reached without a fall: bootstrapped from
  `info["final_observation"]`, the true observation before the reset;
- a finished episode restarts from `env.reset` with a fresh key.

    import trpo  # run from the repository root, with examples/ on sys.path
    from brax_env import BraxEnv
    env = BraxEnv("hopper", backend="spring")
    train = trpo.make_train(trpo.make_config("brax-hopper"), env, env.default_params)

Needs bench/requirements.txt (brax, which pulls mujoco); trpo.py itself never imports it.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from brax import envs
from gymnax.environments import spaces


class BraxParams(NamedTuple):
    max_steps_in_episode: int  # the time limit; trpo.evaluate reads it too


class BraxState(NamedTuple):
    brax: Any  # brax.envs.State of the bare env
    steps: jax.Array  # control steps in this episode


class BraxEnv:
    """gymnax-style: reset(key, params), step(key, state, action, params) -> obs, state, reward,
    terminated, truncated, info; action_space(params), observation_space(params)."""

    def __init__(self, name: str, backend: str = "spring", episode_length: int = 1000):
        self.env = envs.get_environment(name, backend=backend)  # no Brax wrappers
        self.default_params = BraxParams(episode_length)

    def reset(self, key: jax.Array, params: Any = None) -> tuple[jax.Array, BraxState]:
        state = self.env.reset(key)
        return state.obs, BraxState(state, jnp.zeros((), jnp.int32))

    def step(self, key: jax.Array, state: BraxState, action: jax.Array,
             params: Any = None) -> tuple:
        nxt = self.env.step(state.brax, action)
        steps = state.steps + 1
        terminated = nxt.done > 0.5
        limit = (params or self.default_params).max_steps_in_episode
        truncated = (steps >= limit) & ~terminated
        done = terminated | truncated
        reset_obs, reset_state = self.reset(key)
        new_state = jax.tree.map(lambda r, s: jnp.where(done, r, s), reset_state,
                                 BraxState(nxt, steps))
        obs = jnp.where(done, reset_obs, nxt.obs)
        return obs, new_state, nxt.reward, terminated, truncated, {"final_observation": nxt.obs}

    def action_space(self, params: Any = None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self.env.action_size,), jnp.float32)

    def observation_space(self, params: Any = None) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (self.env.observation_size,), jnp.float32)
