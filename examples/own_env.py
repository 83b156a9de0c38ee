"""Your own env through trpo.make_train: a gymnax Environment subclass, 8 seeds in one jit.

Any object with gymnax's interface works: `step` returns obs, state, reward, terminated,
truncated, info, with info["final_observation"] (gymnax's Environment.step adds it and resets).

    python examples/own_env.py    # each seed's mean deterministic return: 1.0 each
"""
import os
import sys

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import trpo  # noqa: E402


@struct.dataclass
class State(environment.EnvState):  # EnvState holds `time`, for the time limit
    position: jax.Array


def observe(state: State) -> jax.Array:  # position and time, scaled to [0, 1]
    return jnp.stack([state.position / 5, state.time / 20])


class Corridor(environment.Environment):
    """Walk right (action 1) from cell 0 to cell 5 for reward 1."""
    default_params = environment.EnvParams(max_steps_in_episode=20)  # truncates: bootstrapped

    def step_env(self, key, state, action, params):
        state = State(time=state.time + 1, position=jnp.clip(state.position + 2 * action - 1, 0, 5))
        done = state.position == 5  # terminates: never bootstrapped
        return observe(state), state, done.astype(jnp.float32), done, {}

    def reset_env(self, key, params):
        state = State(time=0, position=jnp.array(0))
        return observe(state), state

    def action_space(self, params=None):
        return spaces.Discrete(2)

    def observation_space(self, params=None):
        return spaces.Box(0.0, 1.0, (2,))


if __name__ == "__main__":
    env = Corridor()
    config = trpo.make_config("Corridor", num_envs=8, num_steps=32, total_timesteps=10_240)
    train = jax.jit(jax.vmap(trpo.make_train(config, env, env.default_params)))
    state, metrics = train(jax.random.split(jax.random.PRNGKey(0), 8))  # 8 seeds at once
    agent = trpo.make_agent(config, env, env.default_params)
    print(trpo.evaluate_seeds(agent, config, state.policy_params, state.obs_stats, 10))
