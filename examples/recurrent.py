"""examples/recurrent.py: TRPO with a GRU policy and a GRU critic, for tasks that need memory.

trpo.py's copyable core runs unchanged. trpo_step only ever calls policy_apply(params, batch.obs),
so here batch.obs is the whole rollout as sequences (observations [T, N, D], the flags that mark
an episode's first step, the hidden state before the rollout) and policy_apply unrolls the GRU
over them: the Fisher product is the exact Hessian of the mean KL through the unrolled network.
Everything else that can be is imported from trpo.py: Config and its flags, the env stepping,
GAE, the critic's regression, the training loop, Metrics and the evaluation statistics.

    python examples/recurrent.py --env MemoryChain-bsuite --eval 10
    python examples/recurrent.py --env MetaMaze-misc --seeds 4 --eval 20   # its preset: 1M steps
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import trpo  # noqa: E402


class GRU(nn.Module):
    """h_t = GRUCell(h_{t-1}, x_t), with h_{t-1} reset to 0 where s_t is an episode's first
    step; nn.scan over the time axis of [T, ...] inputs."""
    hidden_size: int

    @functools.partial(nn.scan, variable_broadcast="params", split_rngs={"params": False})
    @nn.compact
    def __call__(self, h: jax.Array, inputs: tuple) -> tuple[jax.Array, jax.Array]:
        x, first = inputs
        return nn.GRUCell(self.hidden_size)(jnp.where(first[..., None], 0.0, h), x)


class RecurrentNetwork(nn.Module):
    """(obs [T, N, D], first [T, N], h [N, H]) -> (h after s_{T-1}, output [T, N, ...]) through
    a tanh layer, the GRU and a tanh layer. Defaults: h = 0 and no first steps. kind:
    "categorical", "gaussian" (state-independent log_std, as trpo.PolicyNetwork) or "value"."""
    out_dim: int
    kind: str
    hidden_size: int = 64
    init_log_std: float = 0.0

    @nn.compact
    def __call__(self, obs: jax.Array, first: jax.Array | None = None,
                 h: jax.Array | None = None) -> tuple[jax.Array, Any]:
        first = jnp.zeros(obs.shape[:-1], bool) if first is None else first
        h = jnp.zeros((*obs.shape[1:-1], self.hidden_size)) if h is None else h
        h, y = GRU(self.hidden_size)(h, (trpo.torso(obs, (self.hidden_size,)), first))
        init = nn.initializers.zeros if self.kind == "value" else nn.initializers.orthogonal(0.01)
        out = nn.Dense(self.out_dim, kernel_init=init)(trpo.torso(y, (self.hidden_size,)))
        if self.kind != "gaussian":
            return h, out[..., 0] if self.kind == "value" else trpo.Categorical(out)
        log_std = self.param("log_std", nn.initializers.constant(self.init_log_std),
                             (self.out_dim,))
        return h, trpo.DiagGaussian(out, jnp.broadcast_to(log_std, out.shape))


class Sequences(NamedTuple):
    """A rollout as whole sequences: what the policy step and the critic unroll."""
    obs: jax.Array  # [T, N, D], as the policy saw them
    first: jax.Array  # [T, N]: s_t is an episode's first step (the hidden state resets)
    hidden: jax.Array  # [N, H]: before s_0


def unroll(network: RecurrentNetwork, params: Any, seq: Sequences) -> Any:
    """The network over whole sequences, its outputs flattened from [T, N, ...] to [T N, ...]:
    the policy_apply that trpo_step takes."""
    out = network.apply(params, seq.obs, seq.first, seq.hidden)[1]
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out)


def unroll_env_major(network: RecurrentNetwork, params: Any, seq: Sequences) -> jax.Array:
    """Values [N, T] of env-major sequences (obs [N, T, D], first [N, T]): the value_apply that
    trpo.update_critic takes, whose minibatches then split the envs and never time."""
    swap = lambda x: jnp.swapaxes(x, 0, 1)
    return swap(network.apply(params, swap(seq.obs), swap(seq.first), seq.hidden)[1])


class Memory(NamedTuple):
    env: trpo.EnvRunner
    first: jax.Array  # [N]: env.obs is an episode's first observation
    policy_hidden: jax.Array  # [N, H]
    value_hidden: jax.Array


def make_agent(config: trpo.Config, env: Any = None, env_params: Any = None,
               hidden_size: int = 64) -> trpo.Agent:
    """trpo.make_agent's env and action bounds, with GRU networks in place of the MLPs."""
    if config.num_envs % config.vf_minibatches:
        raise ValueError(f"vf_minibatches={config.vf_minibatches} must divide num_envs="
                         f"{config.num_envs}: critic minibatches split the envs, never time")
    agent = trpo.make_agent(config, env, env_params)
    kind = "categorical" if agent.policy.discrete else "gaussian"
    return agent._replace(policy=RecurrentNetwork(agent.policy.action_dim, kind, hidden_size,
                                                  config.init_log_std),
                          value=RecurrentNetwork(1, "value", hidden_size))


def init_train_state(agent: trpo.Agent, config: trpo.Config, key: jax.Array) -> trpo.TrainState:
    state = trpo.init_train_state(agent, config, key)
    hidden = jnp.zeros((config.num_envs, agent.policy.hidden_size))
    return state._replace(runner=Memory(state.runner, jnp.ones(config.num_envs, bool), hidden,
                                        hidden))


def rollout(agent: trpo.Agent, state: trpo.TrainState, key: jax.Array, config: trpo.Config):
    """trpo.rollout carrying both GRUs' hidden states. V(s'_t) continues the critic's hidden
    state on the final observation, so a truncated episode bootstraps with its own memory."""
    def step(carry: tuple, step_key: jax.Array):
        memory, obs_stats, return_stats = carry
        if config.normalize_observations:
            obs_stats = trpo.update_running_stats(obs_stats, memory.env.obs)
        norm = lambda o: trpo.normalize(o, obs_stats, config.normalize_observations)[None]
        seen, first = norm(memory.env.obs), memory.first[None]
        policy_h, dist = agent.policy.apply(state.policy_params, seen, first, memory.policy_hidden)
        value_h, value = agent.value.apply(state.critic.params, seen, first, memory.value_hidden)
        dist, act_key, env_key = jax.tree.map(lambda x: x[0], dist), *jax.random.split(step_key)
        action = trpo.sample(dist, act_key)
        runner, return_stats, (reward, term, trunc, final_obs, ret, length) = trpo.track_episodes(
            agent, config, memory.env, return_stats, action, env_key)
        next_value = agent.value.apply(state.critic.params, norm(final_obs), None, value_h)[1]
        out = trpo.Transition(seen[0], action, reward, term, trunc, trpo.log_prob(dist, action),
                              value[0], next_value[0], ret, length)
        return (Memory(runner, term | trunc, policy_h, value_h), obs_stats, return_stats), (
            out, first[0])

    carry = (state.runner, state.obs_stats, state.return_stats)
    carry, (transition, first) = jax.lax.scan(step, carry, jax.random.split(key, config.num_steps))
    return carry, transition, first


def update_step(agent: trpo.Agent, config: trpo.Config,
                state: trpo.TrainState) -> tuple[trpo.TrainState, trpo.Metrics]:
    """trpo.update_step on sequences: the policy step unrolls the GRU over the whole rollout, and
    the critic regresses on env-major sequences."""
    key, rollout_key, critic_key = jax.random.split(state.key, 3)
    (memory, obs_stats, return_stats), tr, first = rollout(agent, state, rollout_key, config)
    advantages, targets = trpo.gae(tr.reward, tr.value, tr.next_value, tr.terminated,
                                   tr.truncated, config.gamma, config.gae_lambda)
    adv = advantages.reshape(-1)
    if config.normalize_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    batch = trpo.PolicyBatch(Sequences(tr.obs, first, state.runner.policy_hidden),
                             tr.action.reshape(-1, *tr.action.shape[2:]), adv,
                             tr.log_prob.reshape(-1))
    policy_params, info = trpo.trpo_step(functools.partial(unroll, agent.policy),
                                         state.policy_params, batch,
                                         trpo.trpo_hyperparams(config, state.env_steps))
    env_major = Sequences(tr.obs.swapaxes(0, 1), first.T, state.runner.value_hidden)
    critic, v_loss = trpo.update_critic(functools.partial(unroll_env_major, agent.value),
                                        state.critic, env_major, targets.T, critic_key, config)
    m = trpo.update_metrics(state, tr, info, v_loss, targets)
    return trpo.TrainState(policy_params, critic, memory, obs_stats, return_stats, key,
                           m.env_steps, m.episode_return, m.episode_length), m


def make_train(config: trpo.Config, env: Any = None, env_params: Any = None,
               hidden_size: int = 64) -> Any:
    """train(key) -> (final TrainState, Metrics [num_updates]), one jittable, vmappable program:
    trpo.train_updates over this file's update_step."""
    agent = make_agent(config, env, env_params, hidden_size)
    return lambda key: trpo.train_updates(agent, config, init_train_state(agent, config, key),
                                          trpo.num_updates(config), update_step)


def evaluate(agent: trpo.Agent, config: trpo.Config, policy_params: Any,
             obs_stats: trpo.RunningStats, key: jax.Array, num_episodes: int = 10) -> jax.Array:
    """Returns of num_episodes deterministic episodes, the GRU's hidden state carried along."""
    reset_key, step_key = jax.random.split(key)
    obs, env_state = jax.vmap(agent.env.reset, in_axes=(0, None))(
        jax.random.split(reset_key, num_episodes), agent.env_params)
    seen = lambda o: trpo.normalize(o, obs_stats, config.normalize_observations)[None]

    def step(carry, k):
        env_state, obs, h, alive = carry
        h, dist = agent.policy.apply(policy_params, seen(obs), None, h)
        obs, env_state, reward, term, trunc, _ = trpo.step_envs(
            agent, env_state, trpo.mode(dist)[0], k)
        return (env_state, obs, h, alive * (1.0 - (term | trunc))), reward * alive

    h = jnp.zeros((num_episodes, agent.policy.hidden_size))
    steps = jax.random.split(step_key, int(getattr(agent.env_params, "max_steps_in_episode", 1000)))
    carry = (env_state, trpo.flat_obs(obs, num_episodes), h, jnp.ones(num_episodes))
    return jax.lax.scan(step, carry, steps)[1].sum(0)


def main(argv: list[str] | None = None) -> int:
    """`python examples/recurrent.py [--hidden_size H] [trpo.py's flags]`: trains with progress
    lines, then the --eval summary; trpo.py's exit codes. --save, --load, --metrics and --plot
    are trpo.py's alone."""
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--hidden_size", type=int, default=64)
    try:
        own, rest = extra.parse_known_args(argv)
        args, config, _ = trpo.parse_args(rest)
        refused = [f"--{f}" for f in ("save", "load", "metrics", "plot") if getattr(args, f)]
        if refused or own.hidden_size < 1:
            raise ValueError(f"recurrent.py takes --hidden_size >= 1 and not {', '.join(refused)}")
        agent = make_agent(config, hidden_size=own.hidden_size)
        state, _ = trpo.train_runs(agent, config, args, init_train_state, update_step)
        if args.eval:
            returns = trpo.evaluate_seeds(agent, config, state.policy_params, state.obs_stats,
                                          args.eval, evaluate)
            summary = trpo.summarize_seeds(returns, trpo.SOLVED.get(config.env_name))
            print(f"eval: {args.eval} deterministic episodes per seed, {args.seeds} seed(s) "
                  f"[{', '.join(f'{r:.1f}' for r in returns)}]: {trpo.format_summary(summary)}")
        return 0
    except (ValueError, argparse.ArgumentError) as error:
        print(f"recurrent.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recurrent.py: stopped by Ctrl-C", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
