"""trpo.py: Trust Region Policy Optimization in one jitted JAX function.

Schulman, Levine, Moritz, Jordan, Abbeel. "Trust Region Policy Optimization", ICML 2015.
Schulman, Moritz, Levine, Jordan, Abbeel. "High-Dimensional Continuous Control Using
Generalized Advantage Estimation", ICLR 2016.

Sections follow the data: 1 config, 2 the copyable core (distributions, GAE, the trust-region
step: only jax and chex, never Config), 3 networks, 4 rollout, 5 critic, 6 training,
7 evaluation, 8 the command line (`python trpo.py --help`), which nothing above uses.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple


def temp_path(path: str) -> str:
    """Where an output is written before it is renamed into place (section 8)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".tmp{os.getpid()}-{name}")


def stop_on_signal(outputs: tuple[str, ...] = ()) -> None:
    """Ctrl-C or SIGTERM at any moment: remove half-written outputs, one line, exit 130 or 143."""
    def stop(signum: int, _frame: Any) -> None:
        for path in outputs:
            if os.path.exists(temp_path(path)):
                os.remove(temp_path(path))
        print(f"trpo.py: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
        os._exit(128 + signum)  # at once, from any state; nothing needs saving
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


if __name__ == "__main__":  # before JAX is imported, so that a signal while it loads is one line
    stop_on_signal()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide XLA's C++ log lines

import chex  # noqa: E402
import flax.linen as nn  # noqa: E402
import gymnax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402


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
    # obs normalization as the zoo; a stronger critic and max_kl 0.02 reach the flag sooner; an
    # entropy bonus keeps exploring until it is found (64 tuning seeds: 2 failed without, 0 with)
    "MountainCar-v0": dict(normalize_observations=True, max_kl=0.02, vf_epochs=20, vf_lr=3e-3,
                           entropy_coef=0.03),
    # gamma 0.9 as the zoo; small batches and a stronger critic learn sooner; reward scaling hurt
    "Pendulum-v1": dict(gamma=0.9, gae_lambda=0.95, num_envs=4, num_steps=256, init_log_std=-0.5,
                        vf_epochs=20, vf_lr=3e-3, normalize_rewards=False),
    # obs normalization as the zoo; wide initial exploration (log std 0.75) and an entropy bonus
    # against the action cost find the goal (64 tuning seeds: 2 failed without, 0 with)
    "MountainCarContinuous-v0": dict(normalize_observations=True, total_timesteps=50_000,
                                     init_log_std=0.75, anneal_max_kl=False, entropy_coef=0.03),
    # bsuite: 32 envs give the first-step choice (an arm, a path) a less noisy gradient
    **{f"{name}-bsuite": dict(num_envs=32) for name in (
        "Catch", "DeepSea", "MemoryChain", "UmbrellaChain", "DiscountingChain", "SimpleBandit",
        "MNISTBandit")},
    # one setting for all games, as the paper's for Atari: gymnax-blines' PPO batch and budget;
    # an entropy bonus (policies collapsed without it); damping 0.01 (baselines' Atari: 1e-3)
    **{f"{game}-MinAtar": dict(num_envs=64, num_steps=128, vf_minibatches=8, cg_damping=0.01,
                               total_timesteps=10_000_000, entropy_coef=0.03)
       for game in ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")},
}
RANGES = {  # [low, high] of every numeric field; larger sizes do not compile or fit in memory
    "num_envs": (1, 2**16), "num_steps": (1, 2**16), "total_timesteps": (1, 2**31 - 1),
    "gamma": (0, 1), "gae_lambda": (0, 1), "max_kl": (1e-12, 10), "cg_iters": (1, 1000),
    "cg_damping": (0, 1e6), "cg_residual_tol": (0, 1), "line_search_steps": (1, 1000),
    "line_search_shrink": (1e-6, 1), "vf_lr": (1e-12, 10), "vf_epochs": (1, 1000),
    "vf_minibatches": (1, 2**20), "init_log_std": (-20, 20), "entropy_coef": (0, 100),
    "seed": (0, 2**31 - 3)}


# The paper's TRPO as its authors ran it: constant delta 0.01, raw rewards and observations, no
# entropy bonus, and of a preset only the budget and batch. Advantages stay standardized per
# batch, as Schulman's reference code (modular_rl, compute_advantage) did.
PAPER = dict(max_kl=0.01, anneal_max_kl=False, normalize_rewards=False,
             normalize_observations=False, entropy_coef=0.0, normalize_advantages=True)
BATCH = ("num_envs", "num_steps", "total_timesteps", "vf_minibatches")


def make_config(env_name: str = "CartPole-v1", paper: bool = False, **overrides: Any) -> Config:
    """Config for env_name: the defaults, then PRESETS[env_name] (with paper=True: its budget and
    batch, then PAPER), then overrides; validated."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ValueError(f"unknown Config field(s): {', '.join(sorted(unknown))}")
    preset = PRESETS.get(env_name, {})
    if paper:
        preset = {**{k: v for k, v in preset.items() if k in BATCH}, **PAPER}
    config = Config(env_name=env_name, **{**preset, **overrides})
    validate_config(config)
    return config


def validate_config(config: Config) -> None:
    """ValueError with a one-line message for a config that cannot run (traced fields pass)."""
    for field in dataclasses.fields(Config)[1:]:
        value, kind = getattr(config, field.name), type(field.default)
        if isinstance(value, jax.core.Tracer):
            continue
        number = isinstance(value, int if kind is int else (int, float)) and type(value) is not bool
        if not (type(value) is bool if kind is bool else kind is tuple or number):
            raise ValueError(f"{field.name} must be of type {kind.__name__}, got {value!r}")
        low, high = RANGES.get(field.name, (-math.inf, math.inf))
        if number and not low <= value <= high:
            raise ValueError(f"{field.name} must be in [{low}, {high}], got {value}")
    sizes = config.hidden_sizes
    if not 0 < len(sizes) <= 16 or not all(type(h) is int and 0 < h <= 8192 for h in sizes):
        raise ValueError(f"hidden_sizes must be 1 to 16 integers in [1, 8192], got {sizes}")
    batch = config.num_envs * config.num_steps
    if batch % config.vf_minibatches or config.total_timesteps < batch or batch > 2**24:
        raise ValueError(f"vf_minibatches={config.vf_minibatches} must divide num_envs*num_steps="
                         f"{batch}, which must be at most total_timesteps and 2**24")


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
        log_p = jax.nn.log_softmax(dist.logits)
        return jnp.take_along_axis(log_p, action[..., None].astype(jnp.int32), -1)[..., 0]
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
    obs: jax.Array  # [B, obs_dim], as the policy sees them
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
    """The static parts of a run: env, networks, and the action mapping."""
    env: Any
    env_params: Any
    policy: PolicyNetwork
    value: ValueNetwork
    obs_dim: int
    action_low: jax.Array | None  # Box envs only
    action_high: jax.Array | None
    env_mesh: Any = None  # a 1-D jax.sharding.Mesh splitting the env batch, or None


def make_agent(config: Config, env: Any = None, env_params: Any = None,
               devices: int = 1) -> Agent:
    """The env is gymnax.make(config.env_name), or any object with gymnax's interface.
    devices > 1 splits the env batch over that many devices (SPMD through a 1-D mesh)."""
    from gymnax.environments import spaces
    if env is None:
        if config.env_name not in gymnax.registered_envs:
            raise ValueError(f"unknown env {config.env_name!r}; valid: "
                             f"{', '.join(gymnax.registered_envs)}")
        try:  # eagerly, even under a trace: FourRooms and MetaMaze build their mazes with jnp
            with jax.ensure_compile_time_eval():
                env, env_params = gymnax.make(config.env_name)
        except Exception as error:  # e.g. MNISTBandit-bsuite downloads MNIST when made
            raise ValueError(f"gymnax could not make {config.env_name}: "
                             f"{type(error).__name__}: {error}") from None
    missing = [name for name in ("reset", "step", "action_space", "observation_space")
               if not callable(getattr(env, name, None))]
    if missing:
        raise ValueError(f"the env lacks gymnax's {', '.join(missing)}")
    space, sizes = env.action_space(env_params), tuple(config.hidden_sizes)
    obs_dim = max(1, math.prod(env.observation_space(env_params).shape))
    if isinstance(space, spaces.Discrete):
        policy, low, high = PolicyNetwork(int(space.n), True, sizes), None, None
    elif isinstance(space, spaces.Box):
        dim = max(1, math.prod(space.shape))
        policy = PolicyNetwork(dim, False, sizes, config.init_log_std)
        low, high = (jnp.broadcast_to(jnp.asarray(b, jnp.float32).reshape(-1), (dim,))
                     for b in (space.low, space.high))
    else:
        raise ValueError(f"unsupported action space {type(space).__name__} in {config.env_name}")
    mesh = None
    if devices != 1:
        if not 0 < devices <= jax.device_count() or config.num_envs % devices:
            raise ValueError(f"devices={devices} must divide num_envs={config.num_envs} and be "
                             f"at most the {jax.device_count()} available")
        mesh = jax.make_mesh((devices,), ("envs",), devices=jax.devices()[:devices],
                             axis_types=(jax.sharding.AxisType.Auto,))
    return Agent(env, env_params, policy, ValueNetwork(sizes), obs_dim, low, high, mesh)


def env_actions(agent: Agent, action: jax.Array) -> jax.Array:
    """Gaussian actions are clipped to [-1, 1] and rescaled to the env's [low, high]."""
    if agent.action_low is None:
        return action
    shape = agent.env.action_space(agent.env_params).shape
    unit = jnp.clip(action, -1.0, 1.0)
    scaled = agent.action_low + 0.5 * (unit + 1.0) * (agent.action_high - agent.action_low)
    return scaled.reshape(action.shape[:1] + shape)


def shard_envs(agent: Agent, tree: Any) -> Any:
    """Split the env axis of every leaf over agent.env_mesh (XLA then turns batch means into
    all-reduces). A no-op without a mesh."""
    if agent.env_mesh is None:
        return tree
    sharding = NamedSharding(agent.env_mesh, PartitionSpec("envs"))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


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
    obs: jax.Array  # [N, obs_dim]
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
        norm = lambda o: normalize(o, obs_stats, config.normalize_observations)
        act_key, env_key = jax.random.split(step_key)
        seen = norm(runner.obs)  # s_t as the policy sees it
        dist = agent.policy.apply(policy_params, seen)
        action = sample(dist, act_key)
        obs, env_state, reward, terminated, truncated, info = step_envs(
            agent, runner.env_state, action, env_key)
        done = terminated | truncated
        ep_return, ep_length = runner.episode_return + reward, runner.episode_length + 1
        discounted = runner.discounted_return * config.gamma + reward
        scaled = reward
        if config.normalize_rewards:
            return_stats = update_running_stats(return_stats, discounted[:, None])
            scaled = jnp.clip(reward / jnp.sqrt(return_stats.var[0] + 1e-8), -10.0, 10.0)
        final_obs = norm(flat_obs(info["final_observation"], config.num_envs))
        out = (seen, action, scaled, terminated, truncated, log_prob(dist, action),
               final_obs, jnp.where(done, ep_return, 0.0), jnp.where(done, ep_length, 0))
        reset = lambda x: jnp.where(done, 0, x).astype(x.dtype)
        runner = EnvRunner(env_state, obs, reset(ep_return), reset(ep_length), reset(discounted))
        return (shard_envs(agent, runner), obs_stats, return_stats), out

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


def value_loss(value_apply: Callable, params: Any, obs: jax.Array,
               targets: jax.Array) -> jax.Array:
    """L_V(phi) = mean_t (V_phi(s_t) - V_t^target)^2, V^target = A^GAE + V_old (lambda-returns)."""
    return jnp.mean((value_apply(params, obs) - targets) ** 2)


def update_critic(value_apply: Callable, critic: CriticState, obs: jax.Array, targets: jax.Array,
                  key: jax.Array, config: Config) -> tuple[CriticState, jax.Array]:
    """Adam regression of V on the targets: vf_epochs passes of vf_minibatches minibatches.
    (GAE Sec. 5 fits V by a trust-region step instead.) Returns the critic and the last pass's
    mean minibatch loss."""
    chex.assert_rank(targets, 1)
    optimizer = optax.adam(config.vf_lr)

    def minibatch_step(critic: CriticState, batch):
        loss, grads = jax.value_and_grad(value_loss, argnums=1)(value_apply, critic.params, *batch)
        updates, opt_state = optimizer.update(grads, critic.opt_state, critic.params)
        return CriticState(optax.apply_updates(critic.params, updates), opt_state), loss

    def epoch(critic: CriticState, epoch_key):
        perm = jax.random.permutation(epoch_key, targets.shape[0])
        shuffle = lambda x: x[perm].reshape(config.vf_minibatches, -1, *x.shape[1:])
        return jax.lax.scan(minibatch_step, critic, (shuffle(obs), shuffle(targets)))

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
    safe = jnp.where(var > 0, var, 1.0)
    return jnp.where(var > 0, 1.0 - jnp.var(targets - predictions) / safe, 0.0)


def init_train_state(agent: Agent, config: Config, key: jax.Array) -> TrainState:
    policy_key, value_key, reset_key, key = jax.random.split(key, 4)
    obs, env_state = jax.vmap(agent.env.reset, in_axes=(0, None))(
        jax.random.split(reset_key, config.num_envs), agent.env_params)
    obs = flat_obs(obs, config.num_envs)
    value_params = agent.value.init(value_key, obs)
    critic = CriticState(value_params, optax.adam(config.vf_lr).init(value_params))
    unit = lambda dim: RunningStats(jnp.zeros(dim), jnp.ones(dim), jnp.array(1e-4))
    zeros = jnp.zeros(config.num_envs)
    runner = shard_envs(agent, EnvRunner(env_state, obs, zeros, zeros.astype(jnp.int32), zeros))
    return TrainState(agent.policy.init(policy_key, obs), critic, runner, unit(agent.obs_dim),
                      unit(1), key, jnp.array(0), jnp.array(jnp.nan), jnp.array(jnp.nan))


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
    batch = PolicyBatch(obs, flat(tr.action), adv, flat(tr.log_prob))
    hp = TRPOHyperparams(*(getattr(config, name) for name in TRPOHyperparams._fields))
    if config.anneal_max_kl:
        hp = hp._replace(max_kl=hp.max_kl * (1.0 - state.env_steps / config.total_timesteps))
    policy_params, info = trpo_step(agent.policy.apply, state.policy_params, batch, hp)
    critic, v_loss = update_critic(agent.value.apply, state.critic, obs, flat(targets),
                                   critic_key, config)

    count = (tr.terminated | tr.truncated).sum()
    mean_or_last = lambda total, last: jnp.where(count > 0, total / jnp.maximum(count, 1), last)
    episode_return = mean_or_last(tr.finished_return.sum(), state.last_return)
    episode_length = mean_or_last(tr.finished_length.sum().astype(jnp.float32), state.last_length)
    env_steps = state.env_steps + config.num_envs * config.num_steps
    ls = info.line_search
    metrics = Metrics(env_steps, episode_return, episode_length, count, ls.kl, ls.backtracks,
                      ls.accepted, info.cg.iterations, info.cg.residual, ls.improvement,
                      info.entropy, v_loss, explained_variance(flat(tr.value), flat(targets)))
    return TrainState(policy_params, critic, runner, obs_stats, return_stats, key, env_steps,
                      episode_return, episode_length), metrics


def num_updates(config: Config) -> int:
    return config.total_timesteps // (config.num_envs * config.num_steps)


def make_train(config: Config, env: Any = None, env_params: Any = None,
               devices: int = 1) -> Callable:
    """Returns train(key) -> (final TrainState, Metrics with a leading [num_updates] axis): one
    lax.scan over update_step, so jax.jit(train) compiles once and jax.jit(jax.vmap(train))(keys)
    trains many seeds. env: any gymnax-style env (default: gymnax.make(config.env_name))."""
    agent = make_agent(config, env, env_params, devices)

    def train(key: jax.Array) -> tuple[TrainState, Metrics]:
        return jax.lax.scan(lambda state, _: update_step(agent, config, state),
                            init_train_state(agent, config, key), length=num_updates(config))
    return train


SWEEPABLE = ("gamma", "gae_lambda", "max_kl", "cg_damping", "line_search_shrink", "vf_lr",
             "init_log_std", "entropy_coef")


def make_sweep_train(config: Config, field: str, devices: int = 1) -> Callable:
    """Returns train(value, key): make_train with config.<field> = value as a traced float, so
    jax.vmap over values runs a whole hyperparameter sweep as one jitted program."""
    if field not in SWEEPABLE:
        raise ValueError(f"cannot sweep {field!r}; sweepable fields: {', '.join(SWEEPABLE)}")
    return lambda value, key: make_train(dataclasses.replace(config, **{field: value}),
                                         devices=devices)(key)


# ----------------------------------------------------------------------------- 7. Evaluation
def run_episodes(agent: Agent, act: Callable, key: jax.Array, num_episodes: int) -> tuple:
    """num_episodes episodes in parallel, each step's action act(obs, step_key), for the env's
    step limit. Returns env states, rewards and an alive mask, each [max_steps, num_episodes]."""
    max_steps = int(getattr(agent.env_params, "max_steps_in_episode", 1000))
    reset_key, step_key = jax.random.split(key)
    obs, env_state = jax.vmap(agent.env.reset, in_axes=(0, None))(
        jax.random.split(reset_key, num_episodes), agent.env_params)

    def step(carry, k):
        env_state, obs, alive = carry
        obs, next_state, reward, term, trunc, _ = step_envs(agent, env_state, act(obs, k), k)
        return (next_state, obs, alive * (1.0 - (term | trunc))), (env_state, reward, alive)

    init = (env_state, flat_obs(obs, num_episodes), jnp.ones(num_episodes))
    _, (states, rewards, alive) = jax.lax.scan(step, init, jax.random.split(step_key, max_steps))
    return states, rewards, alive


def deterministic_episodes(agent: Agent, config: Config, policy_params: Any,
                           obs_stats: RunningStats, key: jax.Array, num_episodes: int) -> tuple:
    """run_episodes with the mode of pi (argmax / mean action)."""
    norm = lambda obs: normalize(obs, obs_stats, config.normalize_observations)
    return run_episodes(agent, lambda obs, _: mode(agent.policy.apply(policy_params, norm(obs))),
                        key, num_episodes)


def evaluate(agent: Agent, config: Config, policy_params: Any, obs_stats: RunningStats,
             key: jax.Array, num_episodes: int = 10) -> jax.Array:
    """Returns of num_episodes deterministic episodes, run in parallel."""
    _, rewards, alive = deterministic_episodes(agent, config, policy_params, obs_stats, key,
                                               num_episodes)
    return jnp.sum(rewards * alive, 0)


def evaluate_seeds(agent: Agent, config: Config, policy_params: Any, obs_stats: RunningStats,
                   num_episodes: int) -> np.ndarray:
    """Per-seed mean of num_episodes deterministic episodes; inputs have a leading seed axis."""
    keys = jax.random.split(jax.random.PRNGKey(config.seed + 1),
                            jax.tree.leaves(policy_params)[0].shape[0])
    run = jax.vmap(lambda p, s, k: evaluate(agent, config, p, s, k, num_episodes))
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


# ----------------------------------------------------------------------------- 8. Command line
DRAWABLE = ("Acrobot-v1", "CartPole-v1", "Pendulum-v1", "MountainCar-v0",
            "MountainCarContinuous-v0", "Catch-bsuite", "Asterix-MinAtar", "Breakout-MinAtar",
            "Freeway-MinAtar", "Seaquest-MinAtar", "SpaceInvaders-MinAtar", "Pong-misc",
            "PointRobot-misc", "MetaMaze-misc", "FourRooms-misc")  # gymnax's Visualizer
OUTPUTS = {"save": "", "metrics": (".json", ".csv"), "plot": ".png", "render": ".gif"}


def parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def parse_sizes(text: str) -> tuple[int, ...]:
    if not all(s.strip().isdigit() for s in text.split(",")):
        raise argparse.ArgumentTypeError(f"expected integers like 64,64, got {text!r}")
    return tuple(int(s) for s in text.split(","))


def build_parser() -> argparse.ArgumentParser:
    """A flag for every Config field, its help the field's comment, and the run's options."""
    import inspect
    import re
    comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", inspect.getsource(Config), re.M))
    parser = argparse.ArgumentParser(
        prog="trpo.py", exit_on_error=False, allow_abbrev=False,
        description=f"TRPO + GAE on gymnax. Presets override the defaults for {len(PRESETS)} envs.")
    add = parser.add_argument
    add("--env", dest="env_name", help=f"gymnax env name (default: {Config.env_name})")
    for field in dataclasses.fields(Config)[1:]:
        kind, default = type(field.default), field.default
        shown = ",".join(map(str, default)) if kind is tuple else default
        add(f"--{field.name}", help=f"{comments[field.name]} (default: {shown})",
            type={bool: parse_bool, int: int, float: float, tuple: parse_sizes}[kind])
    add("--paper", action="store_true", help="the paper's TRPO: " + ", ".join(
        f"{k}={v}" for k, v in PAPER.items()) + ", and of a preset only the budget and batch")
    add("--seeds", type=int, default=1, help="seeds trained at once by vmap (default: 1)")
    add("--sweep", metavar="FIELD=v1,v2", help=f"vmap over values of one of {', '.join(SWEEPABLE)}")
    add("--eval", type=int, default=0, metavar="N", help="N deterministic episodes per seed, then "
        "the IQM, its bootstrap interval, the worst and failed seeds (--load: 10)")
    add("--devices", type=int, default=1, help="split num_envs over N devices (default: 1)")
    add("--save", metavar="PATH", help="save the trained policies and obs statistics (msgpack)")
    add("--load", metavar="PATH", help="load a --save file to --eval or --render, not to train")
    add("--metrics", metavar="PATH", help="per-update metrics and eval returns (.json or .csv)")
    add("--plot", metavar="PATH.png", help="learning curves")
    add("--render", metavar="PATH.gif", help="one deterministic episode of the first seed")
    add("--quiet", action="store_true", help="no progress lines")
    return parser


def parse_args(argv: list[str] | None) -> tuple[Config | None, argparse.Namespace]:
    """Flags -> a validated Config (None with --load: the file's) and the run's options.
    ValueError with a one-line message for anything that cannot run."""
    try:
        args, unknown = build_parser().parse_known_args(argv)
    except (argparse.ArgumentError, argparse.ArgumentTypeError) as error:
        raise ValueError(str(error)) from None
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
    explicit = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                if getattr(args, f.name) is not None}
    for flag, low, high in (("seeds", 1, 4096), ("eval", 0, 10_000), ("devices", 1, 4096)):
        if not low <= getattr(args, flag) <= high:
            raise ValueError(f"--{flag} must be in [{low}, {high}], got {getattr(args, flag)}")
    check_paths(args)
    if args.load:
        if (explicit or args.paper or args.sweep or args.seeds != 1 or args.save or args.metrics
                or args.plot):
            raise ValueError("--load evaluates a saved policy with the file's settings (--eval, "
                             "--render); Config flags, --paper, --seeds, --sweep, --save, "
                             "--metrics and --plot are for training")
        return None, args
    config = make_config(paper=args.paper, **explicit)
    sweep = f"max_kl={config.max_kl!r}" if args.sweep is None else args.sweep
    field, equals, text = sweep.partition("=")
    if field in explicit and args.sweep is not None:
        raise ValueError(f"--{field} and --sweep {sweep} both set {field}; keep one")
    try:
        values = [float(v) for v in text.split(",")] if equals else []
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"--sweep expects FIELD=v1,v2,..., got {sweep!r}")
    make_sweep_train(config, field)  # checks the field
    for value in values:
        validate_config(dataclasses.replace(config, **{field: value}))
    args.sweep = (field, values)
    return config, args


def check_paths(args: argparse.Namespace) -> None:
    """Every output can be written, and no two files are one."""
    seen: dict[str, str] = {}
    for flag in ("load", *OUTPUTS):
        path = getattr(args, flag)
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in seen:
            raise ValueError(f"--{seen[real]} and --{flag} name the same file {path!r}")
        seen[real], folder = flag, os.path.dirname(real)
        if flag == "load":
            continue
        if not path or path.endswith(os.sep) or os.path.isdir(path) or not path.endswith(
                OUTPUTS[flag]):
            ends = " or ".join(OUTPUTS[flag]) if flag == "metrics" else OUTPUTS[flag]
            raise ValueError(f"--{flag} {path!r}: expected a file path ending in {ends}")
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise ValueError(f"--{flag} {path!r}: the folder {folder} is missing or not writable")


def train_runs(config: Config, args: argparse.Namespace) -> tuple[TrainState, Metrics]:
    """The [values, seeds] runs as update_step in a jitted scan of ~1/20 of the updates, called
    from the host with a progress line between calls. No callback inside, so JAX's persistent
    compile cache serves the program the next time."""
    field, values = args.sweep
    updates = num_updates(config)
    length = -(-updates // 20)

    def setup(value: jax.Array) -> tuple[Agent, Config]:
        swept = dataclasses.replace(config, **{field: value})
        return make_agent(swept, devices=args.devices), swept

    def piece(value: jax.Array, state: TrainState, start: jax.Array):
        agent, swept = setup(value)

        def body(state: TrainState, index: jax.Array):  # updates past the last one change nothing
            new, metrics = update_step(agent, swept, state)
            return jax.tree.map(lambda a, b: jnp.where(index < updates, a, b), new, state), metrics
        return jax.lax.scan(body, state, start + jnp.arange(length))

    init = jax.jit(jax.vmap(jax.vmap(lambda v, k: init_train_state(*setup(v), k), (None, 0)),
                            (0, None)))
    vals = jnp.asarray(values, jnp.float32)
    clock = time.perf_counter()
    state = init(vals, jax.random.split(jax.random.PRNGKey(config.seed), args.seeds))
    run = jax.jit(jax.vmap(jax.vmap(piece, (None, 0, None)), (0, 0, None))).lower(
        vals, state, np.int32(0)).compile()
    compile_s, clock, pieces = time.perf_counter() - clock, time.perf_counter(), []
    for start in range(0, updates, length):
        state, metrics = run(vals, state, np.int32(start))
        pieces.append(jax.device_get(metrics))
        if not args.quiet:  # the piece's last real update (the last piece may run past it)
            ended = min(start + length, updates)
            row = jax.tree.map(lambda x: x[:, :, ended - start - 1], pieces[-1])
            returns = row.episode_return
            shown = f"{np.nanmean(returns):8.1f}" if np.isfinite(returns).any() else "       -"
            print(f"update {ended:4d}/{updates}  steps {int(row.env_steps[0, 0]):9d}  return "
                  f"{shown}  kl {row.kl.mean():.4f}  accepted {row.line_search_accepted.mean():.2f}"
                  f"  explained_var {row.explained_variance.mean():.2f}", flush=True)
    metrics = jax.tree.map(lambda *m: np.concatenate(m, 2)[:, :, :updates], *pieces)
    rate = updates * vals.size * args.seeds * config.num_envs * config.num_steps / (
        time.perf_counter() - clock)
    print(f"compile {compile_s:.1f} s, run {time.perf_counter() - clock:.1f} s "
          f"({rate:,.0f} steps/s)", flush=True)
    return jax.device_get(state), metrics


def write_file(path: str, write: Callable[[str], Any]) -> None:
    """write(a temporary path), then rename it to path: readers see the old file or the new one."""
    try:
        write(temp_path(path))
        os.replace(temp_path(path), path)
    finally:
        if os.path.exists(temp_path(path)):
            os.remove(temp_path(path))


def save_policy(path: str, config: Config, policy_params: Any, obs_stats: RunningStats) -> None:
    """What evaluation needs, [runs] each: the Config, the policies, the observation statistics."""
    from flax import serialization
    payload = {"config": {**dataclasses.asdict(config), "hidden_sizes": list(config.hidden_sizes)},
               "policy_params": jax.tree.map(np.asarray, policy_params),
               "obs_stats": {k: np.asarray(v) for k, v in obs_stats._asdict().items()}}
    data = serialization.msgpack_serialize(payload)
    write_file(path, lambda temp: Path(temp).write_bytes(data))


def load_policy(path: str) -> tuple[Config, Any, RunningStats]:
    """Read a --save file (msgpack: data only, so loading runs no code). ValueError with one line
    if it is unreadable, corrupt, non-finite or does not match its own Config."""
    from flax import serialization
    try:
        with open(path, "rb") as f:
            raw = serialization.msgpack_restore(f.read())
        saved = {k: v.item() if hasattr(v, "item") else v for k, v in raw["config"].items()}
        sizes = saved["hidden_sizes"]
        saved["hidden_sizes"] = tuple(sizes.values() if isinstance(sizes, dict) else sizes)
        config = make_config(**saved)
        agent, runs = make_agent(config), len(raw["obs_stats"]["count"])
        template = jax.eval_shape(jax.vmap(lambda k: (lambda s: (s.policy_params, s.obs_stats))(
            init_train_state(agent, config, k))), jax.random.split(jax.random.PRNGKey(0), runs))
        loaded = serialization.from_state_dict(template, {"0": raw["policy_params"],
                                                          "1": raw["obs_stats"]})
        for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(template)):
            if np.shape(got) != want.shape or np.asarray(got).dtype != want.dtype:
                raise ValueError(f"an array {np.asarray(got).dtype}{list(np.shape(got))} where "
                                 f"its config needs {want.dtype}{list(want.shape)}")
            if not np.isfinite(got).all():
                raise ValueError("non-finite numbers")
    except Exception as error:
        raise ValueError(f"cannot load {path}: {type(error).__name__}: {error}") from None
    return config, *loaded


def non_finite(tree: Any) -> list[str]:
    """The paths of the float leaves of tree that hold NaN or inf."""
    return [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(tree)
            if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.isfinite(x).all()]


def write_metrics(path: str, metrics: Metrics, runs: list[dict[str, Any]]) -> None:
    """Per-update metrics [runs, updates] as .json (null for NaN: no episode ended yet) or .csv;
    runs[i] labels run i and holds its eval return, if any."""
    import csv
    import json
    arrays = {name: np.asarray(value) for name, value in metrics._asdict().items()}

    def write(temp: str) -> None:
        with open(temp, "w", newline="") as f:
            if path.endswith(".json"):
                strict = lambda v: np.where(np.isfinite(v), v.astype(object), None).tolist()
                return json.dump({"runs": runs, **{k: strict(v) for k, v in arrays.items()}}, f)
            writer = csv.writer(f)
            writer.writerow([*runs[0], "update", *arrays])
            for i, labels in enumerate(runs):
                for u in range(arrays["env_steps"].shape[1]):
                    writer.writerow([*labels.values(), u, *(v[i, u].item() for v in
                                                            arrays.values())])
    write_file(path, write)


def plot_curves(path: str, curves: dict[str, Metrics], title: str) -> None:
    """Mean +- std over seeds of the episode return against env steps; metrics [seeds, updates]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, metrics in curves.items():
        returns = np.asarray(metrics.episode_return, np.float64)  # NaN before any episode ended
        ended = np.isfinite(returns).any(0)
        mean, std = np.nanmean(returns[:, ended], 0), np.nanstd(returns[:, ended], 0)
        ax.plot(metrics.env_steps[0, ended], mean, label=label)
        ax.fill_between(metrics.env_steps[0, ended], mean - std, mean + std, alpha=0.25)
    ax.set(xlabel="env steps", ylabel="episode return", title=title)
    ax.legend()
    fig.tight_layout()
    write_file(path, lambda temp: fig.savefig(temp, dpi=120))
    plt.close(fig)


def render_gif(path: str, agent: Agent, config: Config, policy_params: Any,
               obs_stats: RunningStats) -> int:
    """One deterministic episode drawn by gymnax's Visualizer into a GIF; returns its length."""
    for name in ("SDL_AUDIODRIVER", "SDL_VIDEODRIVER"):
        os.environ.setdefault(name, "dummy")  # gymnax draws classic control through pygame
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import matplotlib
    matplotlib.use("Agg")
    from gymnax.visualize import Visualizer
    states, rewards, alive = jax.device_get(jax.jit(lambda p, s: deterministic_episodes(
        agent, config, p, s, jax.random.PRNGKey(config.seed + 2), 1))(policy_params, obs_stats))
    length = int(alive[:, 0].sum())
    frames = [jax.tree.map(lambda x: x[t, 0], states) for t in range(length)]
    visualizer = Visualizer(agent.env, agent.env_params, frames, np.cumsum(rewards[:length, 0]))
    write_file(path, visualizer.animate)
    return length


def run(config: Config | None, args: argparse.Namespace) -> None:
    """Train (or --load), then the outputs. ValueError with a one-line message when a run
    cannot be used."""
    if args.load:
        config, policy_params, obs_stats = load_policy(args.load)
        args.sweep, args.eval = ("max_kl", [config.max_kl]), args.eval or 10
    if args.render and config.env_name not in DRAWABLE:
        raise ValueError(f"--render: gymnax cannot draw {config.env_name}; it draws "
                         f"{', '.join(DRAWABLE)}")
    agent = make_agent(config, devices=args.devices)
    (field, values), seeds = args.sweep, len(obs_stats.count) if args.load else args.seeds
    labels = [f"{field}={v:g}" if len(values) > 1 or field != "max_kl" else "" for v in values]
    runs = [{"seed": config.seed, "seed_index": s, **({field: v} if label else {})}
            for v, label in zip(values, labels) for s in range(seeds)]
    if not args.load:
        print(f"TRPO on {config.env_name}: {len(values)} value(s) x {seeds} seed(s) x "
              f"{num_updates(config)} updates x {config.num_envs * config.num_steps} steps",
              flush=True)
        state, metrics = train_runs(config, args)
        bad = non_finite(state)
        if bad:
            raise ValueError(f"training went non-finite ({', '.join(bad[:3])}); nothing is "
                             "written (lower --vf_lr or --max_kl)")
        flat = lambda tree: jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)
        metrics, policy_params, obs_stats = flat((metrics, state.policy_params, state.obs_stats))
        for i, label in enumerate(labels):
            final = metrics.episode_return[i * seeds:(i + 1) * seeds, -1]
            accepted = metrics.line_search_accepted[i * seeds:(i + 1) * seeds].mean()
            print(f"{label + ': ' if label else ''}final training return {np.nanmean(final):.1f} "
                  f"over {seeds} seed(s) [{', '.join(f'{r:.1f}' for r in final)}], line-search "
                  f"acceptance {accepted:.2f}")
    if args.save:
        save_policy(args.save, config, policy_params, obs_stats)
        print(f"saved {len(runs)} policies to {args.save}")
    if args.eval:
        returns = evaluate_seeds(agent, config, policy_params, obs_stats, args.eval)
        for i, label in enumerate(labels):
            per_seed = returns[i * seeds:(i + 1) * seeds]
            print(f"eval{' ' + label if label else ''}: {args.eval} deterministic episodes per "
                  f"seed, {len(per_seed)} seed(s) [{', '.join(f'{r:.1f}' for r in per_seed)}]: "
                  f"{format_summary(summarize_seeds(per_seed, SOLVED.get(config.env_name)))}")
        for run_labels, value in zip(runs, returns):
            run_labels["eval_return"] = float(value)
    if args.metrics:
        write_metrics(args.metrics, metrics, runs)
    if args.plot:
        plot_curves(args.plot, {label or f"{seeds} seed(s)": jax.tree.map(
            lambda x: x[i * seeds:(i + 1) * seeds], metrics) for i, label in enumerate(labels)},
            config.env_name)
    if args.render:
        length = render_gif(args.render, agent, config,
                            *jax.tree.map(lambda x: x[0], (policy_params, obs_stats)))
        print(f"rendered a {length}-step deterministic episode to {args.render}")


def main(argv: list[str] | None = None) -> int:
    """`python trpo.py [flags]`; returns the exit code. A user's mistake is one line and 2.
    The run goes in a thread, so that the main thread takes Ctrl-C and SIGTERM at once."""
    outcome: list[BaseException] = []

    def work(config: Config | None, args: argparse.Namespace) -> None:
        try:
            run(config, args)
        except BaseException as error:
            outcome.append(error)

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        config, args = parse_args(argv)
        stop_on_signal(tuple(getattr(args, flag) for flag in OUTPUTS if getattr(args, flag)))
        worker = threading.Thread(target=work, args=(config, args), daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
    except ValueError as error:
        outcome.append(error)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    error = outcome[0] if outcome else None
    if isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error):
        error = ValueError("out of memory: lower --hidden_sizes, --num_envs x --num_steps, "
                           "--seeds or the sweep's values")
    if isinstance(error, BrokenPipeError):  # `python trpo.py | head`: no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        error = ValueError("stdout was closed, so the run stopped")
    if isinstance(error, ValueError):
        print(f"trpo.py: error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
        return 2
    if error is not None:
        raise error
    return 0


if __name__ == "__main__":
    if not jax.config.jax_compilation_cache_dir:  # JAX's persistent cache, unless set already
        home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        jax.config.update("jax_compilation_cache_dir", os.path.join(home, "trpo-jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    sys.exit(main())
