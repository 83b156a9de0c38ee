"""trpo.py: Trust Region Policy Optimization (Schulman et al., ICML 2015) with generalized
advantage estimation (Schulman et al., ICLR 2016), in one jitted JAX function.

Sections follow the data: 1 config, 2 the copyable core (distributions, GAE, the trust-region
step: jax and chex only, never Config), 3 networks, 4 rollout, 5 critic, 6 training,
7 evaluation, 8 the command line (`python trpo.py --help`), which nothing above uses.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental.multihost_utils import process_allgather
from jax.flatten_util import ravel_pytree


# ----------------------------------------------------------------------------- 1. Config
@dataclasses.dataclass(frozen=True)
class Config:
    env_name: str = "CartPole-v1"
    num_envs: int = 8  # parallel envs; 8 x 128 = 1024 samples/update, as the zoo's 2 x 512
    num_steps: int = 128  # rollout length per env per update
    total_timesteps: int = 100_000  # env steps per run (the zoo's CartPole budget)
    gamma: float = 0.99  # discount (zoo, sb3)
    gae_lambda: float = 0.98  # GAE lambda (zoo CartPole)
    max_kl: float = 0.01  # trust-region radius delta (paper, sb3, Spinning Up)
    anneal_max_kl: bool = True  # delta = max_kl (1 - env_steps / total_timesteps); paper: false
    cg_iters: int = 10  # conjugate-gradient iterations (paper, Spinning Up)
    cg_damping: float = 0.1  # Fisher damping (sb3, Spinning Up)
    cg_residual_tol: float = 1e-10  # stop CG once r^T r falls below this
    line_search_steps: int = 10  # backtracking attempts (sb3, Spinning Up)
    line_search_shrink: float = 0.8  # step shrink per backtrack (sb3, Spinning Up)
    vf_lr: float = 1e-3  # critic Adam learning rate (zoo)
    vf_epochs: int = 10  # critic passes over each batch (sb3 n_critic_updates)
    vf_minibatches: int = 4  # critic minibatches per pass (256 samples each)
    hidden_sizes: tuple[int, ...] = (64, 64)  # policy and value MLP widths (sb3 MlpPolicy)
    normalize_advantages: bool = True  # standardize advantages per batch (sb3)
    normalize_observations: bool = False  # running mean/var (VecNormalize); on where the zoo has it
    normalize_rewards: bool = True  # divide rewards by the running std of the discounted return
    init_log_std: float = 0.0  # Gaussian policies: initial log standard deviation
    entropy_coef: float = 0.0  # entropy bonus c in the surrogate (baselines' entcoeff); paper: 0
    seed: int = 0  # PRNG seed; --seeds N trains N keys split from it


# Per-env overrides, applied by make_config. Budgets are the zoo's; each choice won a sweep on the
# tuning seeds (key 0); the tables are in bench/RESULTS.md.
PRESETS: dict[str, dict[str, Any]] = {
    # zoo's obs normalization; stronger critic, bigger steps, entropy bonus to find the flag
    "MountainCar-v0": dict(normalize_observations=True, max_kl=0.02, vf_epochs=20, vf_lr=3e-3,
                           entropy_coef=0.03),
    # gamma 0.9 as the zoo; small batches and a stronger critic learn sooner; reward scaling hurt
    "Pendulum-v1": dict(gamma=0.9, gae_lambda=0.95, num_envs=4, num_steps=256, init_log_std=-0.5,
                        vf_epochs=20, vf_lr=3e-3, normalize_rewards=False),
    # zoo's obs normalization; wide initial exploration and an entropy bonus beat the action cost
    "MountainCarContinuous-v0": dict(normalize_observations=True, total_timesteps=50_000,
                                     init_log_std=0.75, anneal_max_kl=False, entropy_coef=0.03),
    # bsuite: 32 envs give the first-step choice (an arm, a path) a less noisy gradient
    **{f"{name}-bsuite": dict(num_envs=32) for name in (
        "Catch", "DeepSea", "MemoryChain", "UmbrellaChain", "DiscountingChain", "SimpleBandit",
        "MNISTBandit")},
    # one setting for all games, as the paper's Atari: gymnax-blines' PPO batch and budget; an
    # entropy bonus (policies collapsed without it); damping 0.01 (baselines' Atari: 1e-3)
    **{f"{game}-MinAtar": dict(num_envs=64, num_steps=128, vf_minibatches=8, cg_damping=0.01,
                               total_timesteps=10_000_000, entropy_coef=0.03)
       for game in ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")},
    # meta-RL, tuned with examples/recurrent.py's GRU: the time step is an observation (MetaMaze's
    # unscaled, to 200); wide batches; 5 full-batch critic passes, cheaper for the GRU; PointRobot
    # keeps delta constant (on key 0 at 2M: 9.68 vs 9.18 annealed) and takes 4M steps (10.4 vs 9.68)
    "MetaMaze-misc": dict(normalize_observations=True, num_envs=32, vf_minibatches=1, vf_epochs=5,
                          total_timesteps=1_000_000),
    "PointRobot-misc": dict(normalize_observations=True, num_envs=64, vf_minibatches=1,
                            vf_epochs=5, total_timesteps=4_000_000, anneal_max_kl=False),
}
# The paper's TRPO as its authors ran it: constant delta 0.01, raw rewards and observations, no
# entropy bonus, and of a preset only the budget and batch. Advantages stay standardized per
# batch, as Schulman's reference code (modular_rl, compute_advantage) did.
PAPER = dict(max_kl=0.01, anneal_max_kl=False, normalize_rewards=False,
             normalize_observations=False, entropy_coef=0.0, normalize_advantages=True)
BATCH = ("num_envs", "num_steps", "total_timesteps", "vf_minibatches")


def make_config(env_name: str = "CartPole-v1", paper: bool = False, **overrides: Any) -> Config:
    """Config for env_name: the defaults, then PRESETS[env_name] (with paper=True: its budget and
    batch, then PAPER), then overrides; checked by check_config."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ValueError(f"unknown Config field(s): {', '.join(sorted(unknown))}")
    preset = PRESETS.get(env_name, {})
    if paper:
        preset = {**{k: v for k, v in preset.items() if k in BATCH}, **PAPER}
    return check_config(Config(env_name=env_name, **{**preset, **overrides}))


def check_config(c: Config) -> Config:
    """c, or a ValueError naming the first field of the wrong type or out of range: the values
    that cannot run or would run silently wrong."""
    for f in dataclasses.fields(Config):
        v = getattr(c, f.name)
        ok = {"float": type(v) in (int, float) and math.isfinite(v), "tuple[int, ...]": type(v)
              is tuple and len(v) > 0 and all(type(h) is int and h > 0 for h in v)}
        if not ok.get(f.type, type(v).__name__ == f.type):
            raise ValueError(f"{f.name} must be a {f.type} (finite; sizes > 0), got {v!r}")
    batch, positive = c.num_envs * c.num_steps, lambda x: x > 0
    rules = [("num_envs", positive), ("num_steps", positive), ("max_kl", positive),
             ("cg_iters", positive), ("line_search_steps", positive), ("vf_lr", positive),
             ("vf_epochs", positive), ("cg_damping", lambda x: x >= 0), ("seed", lambda x: x >= 0),
             ("cg_residual_tol", lambda x: x >= 0), ("entropy_coef", lambda x: x >= 0),
             ("gamma", lambda x: 0 < x <= 1), ("gae_lambda", lambda x: 0 <= x <= 1),
             ("line_search_shrink", lambda x: 0 < x < 1),
             ("total_timesteps", lambda x: batch <= x < 2**31),  # env_steps is an int32
             ("vf_minibatches", lambda x: x > 0 and batch % x == 0)]  # equal minibatches
    for name, ok in rules:
        if not ok(getattr(c, name)):
            raise ValueError(f"{name}={getattr(c, name)} is out of range (check_config)")
    return c


# ============================== copyable core: first line ==============================
# Distributions, advantages and the trust-region step. Needs only jax, chex and the imports above.
class Categorical(NamedTuple):
    logits: jax.Array  # [..., num_actions]


class DiagGaussian(NamedTuple):
    mean: jax.Array  # [..., action_dim]
    log_std: jax.Array  # [..., action_dim], a learned parameter broadcast to mean's shape


Distribution = Categorical | DiagGaussian
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def sample(dist: Distribution, key: jax.Array) -> jax.Array:
    if isinstance(dist, Categorical):
        return jax.random.categorical(key, dist.logits)
    return dist.mean + jnp.exp(dist.log_std) * jax.random.normal(key, dist.mean.shape)


def mode(dist: Distribution) -> jax.Array:
    """The deterministic action: argmax for categorical, the mean for Gaussian."""
    return jnp.argmax(dist.logits, -1) if isinstance(dist, Categorical) else dist.mean


def log_prob(dist: Distribution, action: jax.Array) -> jax.Array:
    """log pi(a|s). Gaussian: sum_i -(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi)/2."""
    if isinstance(dist, Categorical):
        chex.assert_shape(action, dist.logits.shape[:-1])
        log_p = jax.nn.log_softmax(dist.logits)
        return jnp.take_along_axis(log_p, action[..., None].astype(jnp.int32), -1)[..., 0]
    chex.assert_equal_shape([action, dist.mean])  # a [B] action against a [B, 1] mean broadcasts
    z = (action - dist.mean) * jnp.exp(-dist.log_std)
    return jnp.sum(-0.5 * z**2 - dist.log_std - HALF_LOG_2PI, -1)


def entropy(dist: Distribution) -> jax.Array:
    """H = -sum_a p log p (categorical); sum_i log sigma_i + log(2 pi e)/2 (Gaussian)."""
    if isinstance(dist, Categorical):
        log_p = jax.nn.log_softmax(dist.logits)
        return -jnp.sum(jnp.exp(log_p) * log_p, -1)
    return jnp.sum(dist.log_std + HALF_LOG_2PI + 0.5, -1)


def kl_divergence(p: Distribution, q: Distribution) -> jax.Array:
    """Analytic KL(p || q) >= 0. Categorical: sum_a p_a (log p_a - log q_a).
    Gaussian: sum_i log(s_q/s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2."""
    if isinstance(p, Categorical):
        log_p, log_q = jax.nn.log_softmax(p.logits), jax.nn.log_softmax(q.logits)
        return jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1)
    var_ratio = jnp.exp(2 * (p.log_std - q.log_std))
    mean_term = ((p.mean - q.mean) * jnp.exp(-q.log_std)) ** 2
    return jnp.sum(0.5 * (var_ratio + mean_term - 1) - (p.log_std - q.log_std), -1)


def gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminated: jax.Array,
        truncated: jax.Array, gamma: float, gae_lambda: float) -> tuple[jax.Array, jax.Array]:
    """Generalized advantage estimation (GAE eq. 16) on time-major [T, N] arrays.
    delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)
    A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1},   done = terminated or truncated
    Returns (A, A + V): advantages and value targets. s'_t is the pre-reset next state, so a
    truncated episode bootstraps from V(final observation) and a terminated one does not."""
    chex.assert_equal_shape([rewards, values, next_values, terminated, truncated])
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    continues = gamma * gae_lambda * (1.0 - (terminated | truncated))

    def backward(next_advantage, inputs):
        delta, cont = inputs
        advantage = delta + cont * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, continues),
                                 reverse=True)
    return advantages, advantages + values


class PolicyBatch(NamedTuple):
    obs: Any  # [B, obs_dim] as the policy sees them; or any pytree that policy_apply takes
    action: jax.Array
    advantage: jax.Array  # [B]
    old_log_prob: jax.Array  # [B]


def surrogate(policy_apply: Callable, params: Any, batch: PolicyBatch,
              entropy_coef: float = 0.0) -> jax.Array:
    """L(theta) = mean_t [ pi_theta(a_t|s_t) / pi_old(a_t|s_t) * A_t ]   (paper eq. 14),
    plus c * mean_t H(pi_theta(.|s_t)) when entropy_coef c > 0 (an exploration bonus)."""
    dist = policy_apply(params, batch.obs)
    log_ratio = log_prob(dist, batch.action) - batch.old_log_prob
    return jnp.mean(jnp.exp(log_ratio) * batch.advantage) + entropy_coef * jnp.mean(entropy(dist))


def mean_kl(policy_apply: Callable, params: Any, old_dist: Distribution,
            obs: jax.Array) -> jax.Array:
    """KL-bar(theta_old, theta) = mean_s KL(pi_old(.|s) || pi_theta(.|s))   (constraint, eq. 12)."""
    return jnp.mean(kl_divergence(old_dist, policy_apply(params, obs)))


def fisher_vector_product(kl_fn: Callable, theta: jax.Array, v: jax.Array,
                          damping: float) -> jax.Array:
    """F v + damping v, where F = Hessian of KL-bar at theta_old (paper App. C), computed
    forward-over-reverse: jvp of grad. kl_fn maps flat parameters to the mean KL."""
    return jax.jvp(jax.grad(kl_fn), (theta,), (v,))[1] + damping * v


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum_i a_i b_i, reduced as accurately as numpy's float32 dot; XLA's CPU jnp.dot is ~5x
    less accurate, which CG's recurrences amplify."""
    return jnp.sum(a * b)


class CGInfo(NamedTuple):
    iterations: jax.Array
    residual: jax.Array  # final r^T r


def conjugate_gradient(matvec: Callable, b: jax.Array, max_iters: int,
                       residual_tol: float = 1e-10) -> tuple[jax.Array, CGInfo]:
    """Solve A x = b for symmetric positive-definite A, given only x -> A x (paper App. C).
    x_{k+1} = x_k + alpha p_k, r_{k+1} = r_k - alpha A p_k, alpha = r_k^T r_k / p_k^T A p_k,
    p_{k+1} = r_{k+1} + (r_{k+1}^T r_{k+1} / r_k^T r_k) p_k. Stops at max_iters or r^T r < tol."""
    chex.assert_rank(b, 1)
    safe_div = lambda num, den: jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)

    def cond(carry):
        i, _, _, _, rr = carry
        return (i < max_iters) & (rr >= residual_tol) & (rr > 0)

    def body(carry):
        i, x, r, p, rr = carry
        ap = matvec(p)
        alpha = safe_div(rr, dot(p, ap))
        x, r = x + alpha * p, r - alpha * ap
        rr_new = dot(r, r)
        return i + 1, x, r, r + safe_div(rr_new, rr) * p, rr_new

    i, x, _, _, rr = jax.lax.while_loop(cond, body, (jnp.array(0), jnp.zeros_like(b), b, b,
                                                     dot(b, b)))
    return x, CGInfo(i, rr)


class LineSearchInfo(NamedTuple):
    accepted: jax.Array
    backtracks: jax.Array  # shrinks before the accepted step; max_backtracks if none
    kl: jax.Array  # KL of the returned parameters (0 when rejected)
    improvement: jax.Array  # L(theta_new) - L(theta_old) (0 when rejected)


def line_search(surrogate_fn: Callable, kl_fn: Callable, theta_old: jax.Array,
                full_step: jax.Array, max_kl: float, shrink: float,
                max_backtracks: int) -> tuple[jax.Array, LineSearchInfo]:
    """Backtrack theta = theta_old + shrink^k full_step, k = 0 .. max_backtracks - 1; accept the
    first with KL-bar <= max_kl and L(theta) > L(theta_old) (paper App. C). If none is accepted,
    return theta_old exactly."""
    surrogate_old = surrogate_fn(theta_old)

    def body(carry):
        k, _, _, _ = carry
        theta = theta_old + shrink**k * full_step
        improvement, kl = surrogate_fn(theta) - surrogate_old, kl_fn(theta)
        accepted = (kl <= max_kl) & (improvement > 0)
        return jnp.where(accepted, k, k + 1), accepted, kl, improvement

    cond = lambda carry: (~carry[1]) & (carry[0] < max_backtracks)
    zero = jnp.zeros((), theta_old.dtype)
    k, accepted, kl, improvement = jax.lax.while_loop(
        cond, body, (jnp.array(0), jnp.array(False), zero, zero))
    theta = jnp.where(accepted, theta_old + shrink**k * full_step, theta_old)
    info = LineSearchInfo(accepted, k, jnp.where(accepted, kl, 0.0),
                          jnp.where(accepted, improvement, 0.0))
    return theta, info


class TRPOHyperparams(NamedTuple):
    max_kl: float = 0.01  # delta
    cg_iters: int = 10
    cg_damping: float = 0.1
    cg_residual_tol: float = 1e-10
    line_search_steps: int = 10
    line_search_shrink: float = 0.8
    entropy_coef: float = 0.0


class TRPOInfo(NamedTuple):
    cg: CGInfo
    line_search: LineSearchInfo
    entropy: jax.Array


def trpo_step(policy_apply: Callable, params: Any, batch: PolicyBatch,
              hp: TRPOHyperparams) -> tuple[Any, TRPOInfo]:
    """One TRPO update (paper Sec. 6 and App. C):
    g = grad L(theta_old);  s = F^{-1} g by CG;  beta = sqrt(2 delta / s^T F s);
    theta_new = line search from theta_old + beta s.
    policy_apply(params, obs) must return a Categorical or DiagGaussian."""
    chex.assert_rank([batch.advantage, batch.old_log_prob], 1)
    theta_old, unravel = ravel_pytree(params)
    old_dist = jax.lax.stop_gradient(policy_apply(params, batch.obs))
    surrogate_fn = lambda theta: surrogate(policy_apply, unravel(theta), batch, hp.entropy_coef)
    kl_fn = lambda theta: mean_kl(policy_apply, unravel(theta), old_dist, batch.obs)
    fvp = lambda v: fisher_vector_product(kl_fn, theta_old, v, hp.cg_damping)

    grad = jax.grad(surrogate_fn)(theta_old)
    grad = jnp.where(jnp.all(jnp.isfinite(grad)), grad, 0.0)
    direction, cg_info = conjugate_gradient(fvp, grad, hp.cg_iters, hp.cg_residual_tol)
    shs = dot(direction, fvp(direction))
    valid = jnp.isfinite(shs) & (shs > 0) & jnp.all(jnp.isfinite(direction))
    beta = jnp.sqrt(2.0 * hp.max_kl / jnp.where(valid, shs, 1.0))
    full_step = jnp.where(valid, beta * direction, 0.0)
    theta_new, ls_info = line_search(surrogate_fn, kl_fn, theta_old, full_step, hp.max_kl,
                                     hp.line_search_shrink, hp.line_search_steps)
    return unravel(theta_new), TRPOInfo(cg_info, ls_info, jnp.mean(entropy(old_dist)))
# ============================== copyable core: last line ==============================


# ----------------------------------------------------------------------------- 3. Networks
def torso(x: jax.Array, hidden_sizes: tuple[int, ...]) -> jax.Array:
    for size in hidden_sizes:
        x = nn.tanh(nn.Dense(size, kernel_init=nn.initializers.orthogonal(math.sqrt(2)))(x))
    return x


class PolicyNetwork(nn.Module):
    """pi_theta(a|s): an MLP to logits, or to a Gaussian mean with a state-independent log_std."""
    action_dim: int
    discrete: bool
    hidden_sizes: tuple[int, ...]
    init_log_std: float = 0.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> Distribution:
        out = nn.Dense(self.action_dim, kernel_init=nn.initializers.orthogonal(0.01))(
            torso(obs, self.hidden_sizes))
        if self.discrete:
            return Categorical(out)
        log_std = self.param("log_std", nn.initializers.constant(self.init_log_std),
                             (self.action_dim,))
        return DiagGaussian(out, jnp.broadcast_to(log_std, out.shape))


class ValueNetwork(nn.Module):
    """V_phi(s): a separate MLP, so critic updates never touch the policy."""
    hidden_sizes: tuple[int, ...]

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        # A zero output layer starts V at 0: with all-zero rewards the advantages stay exactly 0.
        out = nn.Dense(1, kernel_init=nn.initializers.zeros)(torso(obs, self.hidden_sizes))
        return out[..., 0]


# ----------------------------------------------------------------------------- 4. Rollout
class Agent(NamedTuple):
    """The static parts of a run: env, networks, and the Box action bounds (None: discrete)."""
    env: Any
    env_params: Any
    policy: PolicyNetwork
    value: ValueNetwork
    action_low: jax.Array | None
    action_high: jax.Array | None


def make_agent(config: Config, env: Any = None, env_params: Any = None) -> Agent:
    """The env is gymnax.make(config.env_name), or any object with gymnax's interface."""
    import gymnax  # here, not above: importing it starts JAX's backends (see --distributed)
    from gymnax.environments.spaces import Box, Discrete
    if env is None:
        if config.env_name not in gymnax.registered_envs:
            raise ValueError(f"unknown env {config.env_name!r}; valid: "
                             f"{', '.join(gymnax.registered_envs)}")
        with jax.ensure_compile_time_eval():  # FourRooms and MetaMaze build mazes with jnp
            env, env_params = gymnax.make(config.env_name)
    missing = [name for name in ("reset", "step", "action_space", "observation_space")
               if not callable(getattr(env, name, None))]
    if missing:
        raise ValueError(f"the env lacks gymnax's {', '.join(missing)}")
    space, sizes = env.action_space(env_params), tuple(config.hidden_sizes)
    for kind, s in (("action", space), ("observation", env.observation_space(env_params))):
        if not isinstance(s, (Discrete, Box)):
            raise ValueError(f"unsupported {kind} space {type(s).__name__} in {config.env_name}")
    if isinstance(space, Discrete):
        return Agent(env, env_params, PolicyNetwork(int(space.n), True, sizes),
                     ValueNetwork(sizes), None, None)
    dim = max(1, math.prod(space.shape))
    low, high = (jnp.broadcast_to(jnp.asarray(b, jnp.float32).reshape(-1), (dim,))
                 for b in (space.low, space.high))
    return Agent(env, env_params, PolicyNetwork(dim, False, sizes, config.init_log_std),
                 ValueNetwork(sizes), low, high)


def env_actions(agent: Agent, action: jax.Array) -> jax.Array:
    """Gaussian actions are clipped to [-1, 1] and rescaled to the env's [low, high]; where a
    bound is infinite, the action passes through unscaled."""
    if agent.action_low is None:
        return action
    low, high = agent.action_low, agent.action_high
    scaled = low + 0.5 * (jnp.clip(action, -1.0, 1.0) + 1.0) * (high - low)
    shape = action.shape[:1] + agent.env.action_space(agent.env_params).shape
    return jnp.where(jnp.isfinite(high - low), scaled, action).reshape(shape)


class RunningStats(NamedTuple):
    mean: jax.Array
    var: jax.Array
    count: jax.Array


def update_running_stats(stats: RunningStats, batch: jax.Array) -> RunningStats:
    """Merge a batch [B, D] into running mean/variance (Chan et al. parallel update)."""
    n = batch.shape[0]
    batch_mean, batch_var = batch.mean(0), batch.var(0)
    delta, total = batch_mean - stats.mean, stats.count + n
    mean = stats.mean + delta * n / total
    m2 = stats.var * stats.count + batch_var * n + delta**2 * stats.count * n / total
    return RunningStats(mean, m2 / total, total)


def normalize(obs: jax.Array, stats: RunningStats, enabled: bool) -> jax.Array:
    if not enabled:
        return obs
    return jnp.clip((obs - stats.mean) / jnp.sqrt(stats.var + 1e-8), -10.0, 10.0)


class Transition(NamedTuple):
    """Time-major rollout data, each leaf [T, N, ...]."""
    obs: jax.Array  # s_t as the policy saw it: flattened, normalized with step t's statistics
    action: jax.Array
    reward: jax.Array  # r_t; with reward scaling, divided by step t's return std
    terminated: jax.Array  # true terminal: no bootstrap
    truncated: jax.Array  # time limit: bootstrap from V(final observation)
    log_prob: jax.Array  # log pi_old(a_t|s_t)
    value: jax.Array  # V(s_t)
    next_value: jax.Array  # V(s'_t), s'_t = info["final_observation"] (pre-reset)
    finished_return: jax.Array  # return of the episode that ended at t, else 0
    finished_length: jax.Array


class EnvRunner(NamedTuple):
    env_state: Any
    obs: jax.Array  # [N, D]
    episode_return: jax.Array  # running, per env
    episode_length: jax.Array
    discounted_return: jax.Array


def flat_obs(obs: jax.Array, num_envs: int) -> jax.Array:
    return jnp.reshape(obs, (num_envs, -1)).astype(jnp.float32)


def step_envs(agent: Agent, env_state: Any, action: jax.Array, key: jax.Array) -> tuple:
    """vmap(env.step) over a batch: (obs [N, D], state, reward, terminated, truncated, info)."""
    n = action.shape[0]
    obs, env_state, reward, terminated, truncated, info = jax.vmap(
        agent.env.step, in_axes=(0, 0, 0, None))(jax.random.split(key, n), env_state,
                                                 env_actions(agent, action), agent.env_params)
    flat = lambda x: jnp.reshape(x, (n,))
    return (flat_obs(obs, n), env_state, flat(reward).astype(jnp.float32),
            flat(terminated).astype(bool), flat(truncated).astype(bool), info)


def track_episodes(agent: Agent, config: Config, runner: EnvRunner, return_stats: RunningStats,
                   action: jax.Array, key: jax.Array) -> tuple[EnvRunner, RunningStats, tuple]:
    """Step the envs with any policy's actions and keep the episode accounting: returns the new
    runner and return statistics, and (reward as the critic sees it, terminated, truncated, the
    flattened final observation, return and length of the episodes that ended, else 0)."""
    obs, env_state, reward, terminated, truncated, info = step_envs(
        agent, runner.env_state, action, key)
    done = terminated | truncated
    ep_return, ep_length = runner.episode_return + reward, runner.episode_length + 1
    discounted = runner.discounted_return * config.gamma + reward
    scaled = reward
    if config.normalize_rewards:
        return_stats = update_running_stats(return_stats, discounted[:, None])
        scaled = jnp.clip(reward / jnp.sqrt(return_stats.var[0] + 1e-8), -10.0, 10.0)
    reset = lambda x: jnp.where(done, 0, x).astype(x.dtype)
    runner = EnvRunner(env_state, obs, reset(ep_return), reset(ep_length), reset(discounted))
    final_obs = flat_obs(info["final_observation"], obs.shape[0])
    return runner, return_stats, (scaled, terminated, truncated, final_obs,
                                  jnp.where(done, ep_return, 0.0), jnp.where(done, ep_length, 0))


def rollout(agent: Agent, policy_params: Any, value_params: Any, runner: EnvRunner,
            obs_stats: RunningStats, return_stats: RunningStats, key: jax.Array,
            config: Config) -> tuple[EnvRunner, RunningStats, RunningStats, Transition]:
    """Run pi_old for T steps in N envs: lax.scan over time of vmap(env.step), with auto-reset.
    As VecNormalize, the statistics are updated at every step before they are used: with the
    observations about to be seen, then with the discounted returns that scale the rewards."""

    def step(carry: tuple, step_key: jax.Array):
        runner, obs_stats, return_stats = carry
        if config.normalize_observations:
            obs_stats = update_running_stats(obs_stats, runner.obs)
        act_key, env_key = jax.random.split(step_key)
        seen = normalize(runner.obs, obs_stats, config.normalize_observations)  # s_t as seen
        dist = agent.policy.apply(policy_params, seen)
        action = sample(dist, act_key)
        runner, return_stats, (reward, term, trunc, final_obs, ret, length) = track_episodes(
            agent, config, runner, return_stats, action, env_key)
        final_obs = normalize(final_obs, obs_stats, config.normalize_observations)
        return (runner, obs_stats, return_stats), (seen, action, reward, term, trunc,
                                                   log_prob(dist, action), final_obs, ret, length)

    (runner, obs_stats, return_stats), (obs, action, reward, term, trunc, logp, final_obs, ret,
                                        length) = jax.lax.scan(
        step, (runner, obs_stats, return_stats), jax.random.split(key, config.num_steps))
    value_fn = lambda o: agent.value.apply(value_params, o)
    return runner, obs_stats, return_stats, Transition(
        obs, action, reward, term, trunc, logp, value_fn(obs), value_fn(final_obs), ret, length)


# ----------------------------------------------------------------------------- 5. Critic
class CriticState(NamedTuple):
    params: Any
    opt_state: Any


def value_loss(value_apply: Callable, params: Any, obs: Any,
               targets: jax.Array) -> jax.Array:
    """L_V(phi) = mean_t (V_phi(s_t) - V_t^target)^2, V^target = A^GAE + V_old (lambda-returns)."""
    return jnp.mean((value_apply(params, obs) - targets) ** 2)


def update_critic(value_apply: Callable, critic: CriticState, obs: Any, targets: jax.Array,
                  key: jax.Array, config: Config) -> tuple[CriticState, jax.Array]:
    """Adam regression of V on the targets: vf_epochs passes of vf_minibatches minibatches, split
    on axis 0 of targets and of every leaf of obs. (GAE Sec. 5 fits V by a trust-region step
    instead.) Returns the critic and the last pass's mean minibatch loss."""
    chex.assert_equal_shape_prefix(jax.tree.leaves((obs, targets)), 1)
    optimizer = optax.adam(config.vf_lr)

    def minibatch_step(critic: CriticState, batch):
        loss, grads = jax.value_and_grad(value_loss, argnums=1)(value_apply, critic.params, *batch)
        updates, opt_state = optimizer.update(grads, critic.opt_state, critic.params)
        return CriticState(optax.apply_updates(critic.params, updates), opt_state), loss

    def epoch(critic: CriticState, epoch_key):
        perm = jax.random.permutation(epoch_key, targets.shape[0])
        shuffle = lambda x: x[perm].reshape(config.vf_minibatches, -1, *x.shape[1:])
        return jax.lax.scan(minibatch_step, critic, jax.tree.map(shuffle, (obs, targets)))

    critic, losses = jax.lax.scan(epoch, critic, jax.random.split(key, config.vf_epochs))
    return critic, losses[-1].mean()


# ----------------------------------------------------------------------------- 6. Training
class TrainState(NamedTuple):
    policy_params: Any
    critic: CriticState
    runner: EnvRunner
    obs_stats: RunningStats
    return_stats: RunningStats  # of the discounted return, for reward scaling
    key: jax.Array
    env_steps: jax.Array
    last_return: jax.Array  # last known mean episode return (NaN before the first episode ends)
    last_length: jax.Array


class Metrics(NamedTuple):
    env_steps: jax.Array
    episode_return: jax.Array  # mean over episodes ended in this batch, else the last; NaN: none
    episode_length: jax.Array
    episodes_finished: jax.Array
    kl: jax.Array  # KL-bar(theta_old, theta_new)
    line_search_backtracks: jax.Array
    line_search_accepted: jax.Array
    cg_iterations: jax.Array
    cg_residual: jax.Array
    surrogate_improvement: jax.Array
    entropy: jax.Array
    value_loss: jax.Array
    explained_variance: jax.Array


def explained_variance(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """1 - Var(targets - predictions) / Var(targets)."""
    var = jnp.var(targets)
    return jnp.where(var > 0, 1.0 - jnp.var(targets - predictions) / jnp.where(var > 0, var, 1.0),
                     0.0)


def init_train_state(agent: Agent, config: Config, key: jax.Array) -> TrainState:
    policy_key, value_key, reset_key, key = jax.random.split(key, 4)
    obs, env_state = jax.vmap(agent.env.reset, in_axes=(0, None))(
        jax.random.split(reset_key, config.num_envs), agent.env_params)
    obs = flat_obs(obs, config.num_envs)
    value_params = agent.value.init(value_key, obs)
    critic = CriticState(value_params, optax.adam(config.vf_lr).init(value_params))
    unit = lambda dim: RunningStats(jnp.zeros(dim), jnp.ones(dim), jnp.array(1e-4))
    zeros = jnp.zeros(config.num_envs)
    runner = EnvRunner(env_state, obs, zeros, zeros.astype(jnp.int32), zeros)
    return TrainState(agent.policy.init(policy_key, obs), critic, runner, unit(obs.shape[1]),
                      unit(1), key, jnp.array(0), jnp.array(jnp.nan), jnp.array(jnp.nan))


def trpo_hyperparams(config: Config, env_steps: jax.Array) -> TRPOHyperparams:
    """The core's hyperparameters from config, delta annealed linearly to 0 if anneal_max_kl."""
    hp = TRPOHyperparams(*(getattr(config, name) for name in TRPOHyperparams._fields))
    if config.anneal_max_kl:
        hp = hp._replace(max_kl=hp.max_kl * (1.0 - env_steps / config.total_timesteps))
    return hp


def update_metrics(state: TrainState, tr: Transition, info: TRPOInfo, value_loss: jax.Array,
                   targets: jax.Array) -> Metrics:
    """What one update did; its episode statistics average the episodes that ended in it."""
    count, ls = (tr.terminated | tr.truncated).sum(), info.line_search
    mean_or_last = lambda total, last: jnp.where(count > 0, total / jnp.maximum(count, 1), last)
    return Metrics(state.env_steps + tr.reward.size,
                   mean_or_last(tr.finished_return.sum(), state.last_return),
                   mean_or_last(tr.finished_length.sum().astype(jnp.float32), state.last_length),
                   count, ls.kl, ls.backtracks, ls.accepted, info.cg.iterations, info.cg.residual,
                   ls.improvement, info.entropy, value_loss, explained_variance(tr.value, targets))


def update_step(agent: Agent, config: Config, state: TrainState) -> tuple[TrainState, Metrics]:
    """One iteration of GAE's Algorithm 1: rollout -> advantages -> TRPO policy step -> critic
    regression, on observations and rewards as the rollout scaled them."""
    key, rollout_key, critic_key = jax.random.split(state.key, 3)
    runner, obs_stats, return_stats, tr = rollout(
        agent, state.policy_params, state.critic.params, state.runner, state.obs_stats,
        state.return_stats, rollout_key, config)
    advantages, targets = gae(tr.reward, tr.value, tr.next_value, tr.terminated, tr.truncated,
                              config.gamma, config.gae_lambda)
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    obs, adv = flat(tr.obs), flat(advantages)
    if config.normalize_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    policy_params, info = trpo_step(agent.policy.apply, state.policy_params,
                                    PolicyBatch(obs, flat(tr.action), adv, flat(tr.log_prob)),
                                    trpo_hyperparams(config, state.env_steps))
    critic, v_loss = update_critic(agent.value.apply, state.critic, obs, flat(targets),
                                   critic_key, config)
    m = update_metrics(state, tr, info, v_loss, targets)
    return TrainState(policy_params, critic, runner, obs_stats, return_stats, key, m.env_steps,
                      m.episode_return, m.episode_length), m


def num_updates(config: Config) -> int:
    return config.total_timesteps // (config.num_envs * config.num_steps)


def train_updates(agent: Agent, config: Config, state: TrainState, length: int,
                  step: Callable = update_step) -> tuple[TrainState, Metrics]:
    """The training loop: `length` update steps (update_step, or a variant's) in one lax.scan.
    make_train runs the whole budget at once, the command line in pieces; an update past the
    budget changes nothing."""
    budget = num_updates(config) * config.num_envs * config.num_steps

    def body(state: TrainState, _):
        new, metrics = step(agent, config, state)
        return jax.tree.map(lambda a, b: jnp.where(state.env_steps < budget, a, b), new,
                            state), metrics
    return jax.lax.scan(body, state, length=length)


def make_train(config: Config, env: Any = None, env_params: Any = None) -> Callable:
    """train(key) -> (final TrainState, Metrics [num_updates]); jax.jit(jax.vmap(train))(keys)
    trains many seeds. env: any gymnax-style env (default: gymnax.make(config.env_name))."""
    agent = make_agent(config, env, env_params)
    return lambda key: train_updates(agent, config, init_train_state(agent, config, key),
                                     num_updates(config))


# ----------------------------------------------------------------------------- 7. Evaluation
def evaluate(agent: Agent, config: Config, policy_params: Any, obs_stats: RunningStats,
             key: jax.Array, num_episodes: int = 10) -> jax.Array:
    """Returns of num_episodes deterministic episodes (argmax or mean action), run in parallel
    for the env's step limit."""
    reset_key, step_key = jax.random.split(key)
    obs, env_state = jax.vmap(agent.env.reset, in_axes=(0, None))(
        jax.random.split(reset_key, num_episodes), agent.env_params)

    def step(carry, k):
        env_state, obs, alive = carry
        seen = normalize(obs, obs_stats, config.normalize_observations)
        action = mode(agent.policy.apply(policy_params, seen))
        obs, env_state, reward, term, trunc, _ = step_envs(agent, env_state, action, k)
        return (env_state, obs, alive * (1.0 - (term | trunc))), reward * alive

    max_steps = int(getattr(agent.env_params, "max_steps_in_episode", 1000))
    init = (env_state, flat_obs(obs, num_episodes), jnp.ones(num_episodes))
    return jax.lax.scan(step, init, jax.random.split(step_key, max_steps))[1].sum(0)


def evaluate_seeds(agent: Agent, config: Config, policy_params: Any, obs_stats: RunningStats,
                   num_episodes: int, episodes: Callable = evaluate) -> np.ndarray:
    """Per-seed mean of num_episodes deterministic episodes (evaluate, or a variant's);
    inputs have a leading seed axis."""
    keys = jax.random.split(jax.random.PRNGKey(config.seed + 1),
                            jax.tree.leaves(policy_params)[0].shape[0])
    run = jax.vmap(lambda p, s, k: episodes(agent, config, p, s, k, num_episodes))
    return np.asarray(jax.jit(run)(policy_params, obs_stats, keys)).mean(1)


# Per-env "solved" lines of the per-seed summary (the held-out goals in bench/RESULTS.md).
SOLVED = {"CartPole-v1": 475.0, "Acrobot-v1": -120.0, "MountainCar-v0": -130.0,
          "Pendulum-v1": -260.0, "MountainCarContinuous-v0": 80.0}


def interquartile_mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of the middle 50% of x along axis (as scipy.stats.trim_mean(x, 0.25, axis))."""
    x = np.sort(np.asarray(x, np.float64), axis)
    cut = int(0.25 * x.shape[axis])
    return np.take(x, np.arange(cut, x.shape[axis] - cut), axis).mean(axis)


def summarize_seeds(returns: np.ndarray, solved: float | None = None, resamples: int = 10_000,
                    seed: int = 0) -> dict[str, Any]:
    """Per-seed eval returns -> mean, IQM with a 95% percentile-bootstrap interval over seeds
    (Agarwal et al., NeurIPS 2021), worst seed, and the number of seeds below the solved line."""
    returns = np.asarray(returns, np.float64)
    draws = np.random.default_rng(seed).integers(0, len(returns), (resamples, len(returns)))
    low, high = np.percentile(interquartile_mean(returns[draws]), [2.5, 97.5])
    failed = None if solved is None else int((returns < solved).sum())
    return {"mean": float(returns.mean()), "iqm": float(interquartile_mean(returns)),
            "iqm_ci": [float(low), float(high)], "worst": float(returns.min()),
            "seeds": len(returns), "solved_line": solved, "failed": failed}


def format_summary(s: dict[str, Any]) -> str:
    below = "" if s["failed"] is None else f", {s['failed']}/{s['seeds']} below {s['solved_line']}"
    return (f"IQM {s['iqm']:.1f} (95% CI {s['iqm_ci'][0]:.1f} to {s['iqm_ci'][1]:.1f}), "
            f"mean {s['mean']:.1f}, worst seed {s['worst']:.1f}{below}")


def save_policy(path: str, config: Config, policy_params: Any, obs_stats: RunningStats) -> None:
    """The Config, the policies and the observation statistics ([runs] each) as msgpack (which
    takes no tuples), written in place: through a symlink, into the file it names."""
    from flax import serialization
    saved = {**dataclasses.asdict(config), "hidden_sizes": list(config.hidden_sizes)}
    arrays = {"policy_params": policy_params, "obs_stats": obs_stats._asdict()}
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize({"config": saved,
                                                 **jax.tree.map(np.asarray, arrays)}))


def load_policy(path: str) -> tuple[Config, Any, RunningStats]:
    """Read a save_policy file (msgpack is data only: loading runs no code); a ValueError with one
    line if it is unreadable, corrupt, non-finite or does not match its own Config."""
    from flax import serialization
    try:
        with open(path, "rb") as f:
            raw = serialization.msgpack_restore(f.read())
        config = make_config(**{**raw["config"], "hidden_sizes": tuple(raw["config"][
            "hidden_sizes"])})
        agent, keys = make_agent(config), jax.random.split(jax.random.PRNGKey(0),
                                                           len(raw["obs_stats"]["count"]))
        state = jax.eval_shape(jax.vmap(lambda k: init_train_state(agent, config, k)), keys)
        template = (state.policy_params, state.obs_stats)
        loaded = serialization.from_state_dict(template, {"0": raw["policy_params"],
                                                          "1": raw["obs_stats"]})
        if any(np.shape(x) != t.shape or np.asarray(x).dtype != t.dtype or not np.isfinite(x).all()
               for x, t in zip(jax.tree.leaves(loaded), jax.tree.leaves(template))):
            raise ValueError("arrays that are non-finite or do not match its config")
    except Exception as error:
        raise ValueError(f"cannot load {path}: {type(error).__name__}: {error}") from None
    return config, *loaded


def plot_curves(path: str, metrics: Metrics, title: str) -> None:
    """Mean +- std over seeds of the episode return against env steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    returns = np.asarray(metrics.episode_return, np.float64)
    ended, steps = np.isfinite(returns).any(0), metrics.env_steps[0]  # NaN: none ended yet
    mean, std = np.nanmean(returns[:, ended], 0), np.nanstd(returns[:, ended], 0)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps[ended], mean)
    ax.fill_between(steps[ended], mean - std, mean + std, alpha=0.25)
    ax.set(xlabel="env steps", ylabel=f"episode return ({len(returns)} seeds)", title=title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- 8. Command line
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Config, Any]:
    """Flags -> (options, Config, the --load file's (policies, obs statistics) or None); a
    one-line error for anything that cannot run, before any training."""
    comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", inspect.getsource(Config), re.M))
    parser = argparse.ArgumentParser("trpo.py", allow_abbrev=False, exit_on_error=False)
    add = parser.add_argument
    add("--env", dest="env_name", default=Config.env_name, help="gymnax env (default: %(default)s)")
    types = {"int": int, "float": float, "tuple[int, ...]": lambda s: tuple(map(int, s.split(","))),
             "bool": lambda s: ("false", "true").index(s.lower()) == 1}
    for f in dataclasses.fields(Config)[1:]:
        add(f"--{f.name}", type=types[f.type], help=f"{comments[f.name]} (default: {f.default})")
    add("--paper", action="store_true", help=f"the paper's TRPO: {PAPER}, and of a preset only "
        "the budget and batch")
    add("--seeds", type=int, default=1, help="seeds trained at once by vmap (default: 1)")
    add("--distributed", nargs="?", const=(), type=types["tuple[int, ...]"], metavar="N,I",
        help="join a multi-host run (SLURM, Open MPI, k8s; elsewhere: the process count N, this "
        "process's index I, and JAX_COORDINATOR_ADDRESS=host:port)")
    add("--eval", type=int, default=0, metavar="N", help="N deterministic episodes per seed, then "
        "the IQM, its bootstrap interval, the worst and failed seeds (--load: 10)")
    add("--save", metavar="PATH.msgpack", help="save the policies and observation statistics")
    add("--load", metavar="PATH.msgpack", help="evaluate a --save file instead of training")
    add("--metrics", metavar="PATH.json", help="per-update metrics and eval returns")
    add("--plot", metavar="PATH.png", help="learning curves")
    add("--quiet", action="store_true", help="no progress lines")
    args, unknown = parser.parse_known_args(argv)  # argparse.ArgumentError for a bad value
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
    if args.distributed is not None:  # before anything starts a JAX backend
        jax.distributed.initialize(None, *args.distributed)  # JAX's ValueError if incomplete
    explicit = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)[1:]
                if getattr(args, f.name) is not None}
    if args.seeds < 1 or args.eval < 0 or (args.distributed is not None
                                           and args.seeds % jax.device_count()):
        raise ValueError(f"--seeds {args.seeds} must be >= 1 (with --distributed, a multiple of "
                         f"the {jax.device_count()} devices); --eval {args.eval} >= 0")
    for flag, suffix in {"save": ".msgpack", "metrics": ".json", "plot": ".png"}.items():
        path = getattr(args, flag) or ""  # it may replace a regular file only, written in place
        where = path if os.path.lexists(path) else os.path.dirname(os.path.abspath(path))
        if getattr(args, flag) is not None and not (path.endswith(suffix) and os.access(
                where, os.W_OK) and (where != path or os.path.isfile(path))):
            raise ValueError(f"--{flag} {path!r}: expected a writable {suffix} path in a folder "
                             "that exists; if it exists, a regular file")
    if args.load and (explicit or args.paper or args.seeds > 1 or args.save or args.metrics
                      or args.plot or args.distributed is not None):
        raise ValueError("--load takes only --eval and --quiet: the file holds the rest")
    config, *loaded = load_policy(args.load) if args.load else (
        make_config(args.env_name, args.paper, **explicit),)
    return args, config, loaded


def train_runs(agent: Agent, config: Config, args: argparse.Namespace, init: Callable =
               init_train_state, step: Callable = update_step) -> tuple[TrainState, Metrics]:
    """args.seeds runs over as many devices as divide them, of every process: init, then
    train_updates in jitted pieces of ~1/20 of the updates with a progress line between them (no
    callback inside, so JAX's compile cache serves the program the next time). Every process
    gets every run's results; process 0 alone prints."""
    updates, show = num_updates(config), jax.process_index() == 0
    mesh = jax.make_mesh((math.gcd(args.seeds, jax.device_count()),), ("seeds",),
                         (jax.sharding.AxisType.Auto,))
    seeds = jax.sharding.NamedSharding(mesh, jax.P("seeds"))  # independent: no communication
    keys = jax.device_put(jax.random.split(jax.random.PRNGKey(config.seed), args.seeds), seeds)
    length, clock = -(-updates // 20), time.perf_counter()
    if show:
        print(f"TRPO on {config.env_name}: {args.seeds} seed(s) x {updates} updates x "
              f"{config.num_envs * config.num_steps} steps", flush=True)
    state = jax.jit(jax.vmap(lambda key: init(agent, config, key)), out_shardings=seeds)(keys)
    def piece(state: TrainState) -> tuple[TrainState, Metrics]:  # names its cache entry
        return train_updates(agent, config, state, length, step)
    run = jax.jit(jax.vmap(piece), out_shardings=seeds).lower(state).compile()
    compile_s, clock, pieces = time.perf_counter() - clock, time.perf_counter(), []
    for start in range(0, updates, length):
        state, metrics = run(state)
        pieces.append(process_allgather(metrics, tiled=True))
        end = min(start + length, updates)  # the last piece may run past the budget
        row = jax.tree.map(lambda x: x[:, end - start - 1], pieces[-1])
        ret = row.episode_return  # NaN until an episode ends
        shown = f"{np.nanmean(ret):8.1f}" if np.isfinite(ret).any() else "       -"
        if show and not args.quiet:
            print(f"update {end:4d}/{updates}  steps {int(row.env_steps[0]):9d}  return {shown}  "
                  f"kl {row.kl.mean():.4f}  accepted {row.line_search_accepted.mean():.2f}  "
                  f"explained_var {row.explained_variance.mean():.2f}", flush=True)
    run_s = time.perf_counter() - clock
    rate = updates * args.seeds * config.num_envs * config.num_steps / run_s
    if show:
        print(f"compile {compile_s:.1f} s, run {run_s:.1f} s ({rate:,.0f} steps/s)", flush=True)
    metrics = jax.tree.map(lambda *m: np.concatenate(m, 1)[:, :updates], *pieces)
    return process_allgather(state, tiled=True), metrics


def main(argv: list[str] | None = None) -> int:
    """`python trpo.py [flags]`; returns the exit code: 0 done; 2 bad input (before training), a
    non-finite run or a failed write, one line on stderr; 130 Ctrl-C."""
    failed: list[str] = []

    def write(flag: str, writer: Callable[[str], Any]) -> None:  # a failure skips no other
        try:
            if getattr(args, flag):
                writer(getattr(args, flag))
                print(f"wrote {getattr(args, flag)}")
        except OSError as error:
            failed.append(f"--{flag}: {error}")
    try:
        args, config, loaded = parse_args(argv)
        agent = make_agent(config)  # an unknown env: one line, before training
        if loaded:
            (policy_params, obs_stats), args.eval = loaded, args.eval or 10
        else:
            state, metrics = train_runs(agent, config, args)
            if jax.process_index() > 0:
                return 0  # process 0 evaluates and writes
            bad = [name for name, tree in (("policy", state.policy_params), ("critic",
                   state.critic), ("statistics", (state.obs_stats, state.return_stats)))
                   if not all(np.isfinite(x).all() for x in jax.tree.leaves(tree))]
            if bad:  # episode_return is NaN until an episode ends: only the state decides
                raise ValueError(f"training went non-finite ({', '.join(bad)}); nothing is "
                                 "written (lower --vf_lr or --max_kl)")
            policy_params, obs_stats = state.policy_params, state.obs_stats
            write("save", lambda path: save_policy(path, config, policy_params, obs_stats))
        runs = [{"seed": config.seed, "seed_index": i} for i in range(len(obs_stats.count))]
        if args.eval:
            returns = evaluate_seeds(agent, config, policy_params, obs_stats, args.eval)
            summary = summarize_seeds(returns, SOLVED.get(config.env_name))
            print(f"eval: {args.eval} deterministic episodes per seed, {len(returns)} seed(s) "
                  f"[{', '.join(f'{r:.1f}' for r in returns)}]: {format_summary(summary)}")
            runs = [{**run, "eval_return": float(r)} for run, r in zip(runs, returns)]
        if not loaded:
            strict = lambda v: np.where(np.isfinite(v), v.astype(object), None).tolist()
            write("metrics", lambda path: Path(path).write_text(json.dumps({"runs": runs, **{
                k: strict(v) for k, v in metrics._asdict().items()}})))  # null: no episode yet
            write("plot", lambda path: plot_curves(path, metrics, config.env_name))
        if failed:
            raise ValueError("; ".join(failed))
        return 0
    except (ValueError, argparse.ArgumentError) as error:
        print(f"trpo.py: error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("trpo.py: stopped by Ctrl-C", file=sys.stderr)
        return 130


if __name__ == "__main__":
    from jaxlib import utils  # XLA's C++ log lines (a warning at each compile-cache load)
    utils.absl_set_min_log_level(3)
    if not jax.config.jax_compilation_cache_dir:  # JAX's persistent cache, unless set already
        home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        jax.config.update("jax_compilation_cache_dir", os.path.join(home, "trpo-jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    sys.exit(main())
