"""One TRPO update: trpo.py's trpo_step against sb3-contrib's TRPO.train, on identical weights
and an identical batch (512 samples of a gymnax rollout of trpo.py's initial policy; advantages
normalized once, ddof 0, and given to both). Prints ||trpo.py - sb3|| / ||sb3|| for the policy
gradient g, a Fisher-vector product F v (same random v), the CG direction s, the step size
beta = sqrt(2 delta / s^T F s) and theta_new - theta_old (sb3's from its real train()), for
float64 with converged CG and float32 at the defaults (10 CG iterations, damping 0.1), on
CartPole-v1 (categorical) and Pendulum-v1 (diagonal Gaussian, learned log_std). sb3's g, F v, s
and beta come from its own helpers (_compute_actor_grad, hessian_vector_product,
conjugate_gradient_solver), replaying train()'s code on the same data.

    pip install -r requirements.txt -r bench/requirements.txt
    python bench/vs_sb3_step.py [--json PATH]

Conventions that differ, and how they are aligned here:
  1. sb3 normalizes advantages with ddof 1: off (normalize_advantage=False), both get ours.
  2. sb3 starts CG at 1e-4 * randn (torch seeded here), trpo.py at 0: the converged float64
     directions agree; unconverged float32 ones differ by that start and by rounding.
  3. sb3's CG stops at r^T r < 1e-10, which train() does not expose: for float64 its solver is
     wrapped to take the same tiny residual_tol as trpo.py.
  4. sb3's preprocess_obs casts observations to float32: float64 runs use a features extractor
     that casts back to float64 (the observations are float32 values either way).
  5. sb3's line search accepts KL(new || old) < delta, trpo.py KL(old || new) <= delta (the
     same Hessian at theta_old): the accepted backtrack k of each side is printed.
  6. sb3 averages the Gaussian KL over action dims (trust region A * delta); Pendulum has A = 1.
  7. use_sde=False, so sb3's Pendulum policy is a plain, unsquashed DiagGaussian.
"""
import argparse
import copy
import json
import math
import os
import sys
from functools import partial, reduce
from operator import getitem

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import sb3_contrib.trpo.trpo as sb3_trpo
import torch as th
from jax.flatten_util import ravel_pytree
from sb3_contrib import TRPO
from sb3_contrib.common.utils import conjugate_gradient_solver
from stable_baselines3.common.distributions import kl_divergence
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.vec_env import DummyVecEnv

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import trpo  # noqa: E402

th.set_num_threads(1)
ENVS, N_ENVS, N_STEPS, SEED = ("CartPole-v1", "Pendulum-v1"), 4, 128, 0
CASES = {"float64, converged CG (cg_iters=300, cg_residual_tol=1e-32)":
         (True, dict(cg_iters=300, cg_residual_tol=1e-32)),
         "float32, defaults (cg_iters=10, cg_damping=0.1)": (False, dict())}
FIELDS = ("g", "Fv", "s", "beta", "dtheta")


class Float64Flatten(FlattenExtractor):
    def forward(self, observations: th.Tensor) -> th.Tensor:
        return super().forward(observations).double()


def rollout_batch(env_name):
    """512 samples of the initial policy in gymnax; advantages from GAE, normalized (ddof 0)."""
    config = trpo.make_config(env_name, num_envs=N_ENVS, num_steps=N_STEPS,
                              total_timesteps=N_ENVS * N_STEPS, seed=SEED)
    agent = trpo.make_agent(config)
    state = trpo.init_train_state(agent, config, jax.random.PRNGKey(SEED))
    *_, tr = trpo.rollout(agent, state.policy_params, state.critic.params, state.runner,
                          state.obs_stats, state.return_stats, jax.random.PRNGKey(SEED + 1),
                          config)
    adv, _ = trpo.gae(tr.reward, tr.value, tr.next_value, tr.terminated, tr.truncated,
                      config.gamma, config.gae_lambda)
    flat = lambda x: np.asarray(x).reshape(N_ENVS * N_STEPS, *x.shape[2:])
    adv = (flat(adv) - flat(adv).mean()) / (flat(adv).std() + 1e-8)  # as trpo.update_step
    params = jax.tree.map(np.asarray, state.policy_params)
    return agent, params, flat(tr.obs), flat(tr.action), adv.astype(np.float32)


def sb3_layout(policy, params):
    """(parameter, keys into params["params"], transpose) in the order sb3's train() flattens
    its actor. flax numbers the output layer Dense_0 (PolicyNetwork builds it before calling
    torso), the torso Dense_1 .. Dense_H; to_sb3 asserts every shape."""
    dense = sorted((k for k in params["params"] if k.startswith("Dense_")),
                   key=lambda k: int(k[6:]))
    dense, layout = dense[1:] + dense[:1], []
    for name, param in policy.named_parameters():
        *module, leaf = name.split(".")
        if "value" in name:  # train()'s own filter
            continue
        layer = int(module[2]) // 2 if module and module[0] == "mlp_extractor" else -1
        keys = (leaf,) if leaf == "log_std" else (dense[layer], leaf.replace("weight", "kernel"))
        layout.append((param, keys, leaf == "weight"))
    return layout


def to_sb3(layout, tree):
    blocks = [np.asarray(reduce(getitem, keys, tree["params"])) for _, keys, _ in layout]
    blocks = [b.T if t else b for b, (_, _, t) in zip(blocks, layout, strict=True)]
    assert all(b.shape == q.shape for b, (q, _, _) in zip(blocks, layout, strict=True))
    return np.concatenate([b.ravel() for b in blocks])


def from_sb3(layout, vec, template):
    tree, start = jax.tree.map(np.array, template), 0
    for param, keys, transpose in layout:
        block = vec[start:start + param.numel()].reshape(param.shape)
        reduce(getitem, keys[:-1], tree["params"])[keys[-1]] = block.T if transpose else block
        start += param.numel()
    return tree


def make_sb3(env_name, x64, params, batch, hp):
    kwargs = dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=th.nn.Tanh)
    if x64:
        kwargs["features_extractor_class"] = Float64Flatten
    model = TRPO("MlpPolicy", DummyVecEnv([lambda: gym.make(env_name)]), n_steps=len(batch[0]),
                 batch_size=len(batch[0]), cg_max_steps=hp.cg_iters, cg_damping=hp.cg_damping,
                 line_search_shrinking_factor=hp.line_search_shrink,
                 line_search_max_iter=hp.line_search_steps, n_critic_updates=1,
                 normalize_advantage=False, target_kl=hp.max_kl, use_sde=False,
                 policy_kwargs=kwargs, device="cpu", seed=SEED)
    model.set_logger(Logger(folder=None, output_formats=[]))
    policy, dtype = model.policy, (np.float64 if x64 else np.float32)
    if x64:
        policy.double()
    assert not policy.squash_output and not policy.use_sde
    layout = sb3_layout(policy, params)
    theta = th.as_tensor(to_sb3(layout, params).astype(dtype))
    th.nn.utils.vector_to_parameters(theta, [p for p, _, _ in layout])
    obs, action, adv, old_logp = batch
    buf, col = model.rollout_buffer, lambda x, d: np.asarray(x, d).reshape(len(obs), 1, -1)
    buf.reset()
    buf.observations, buf.actions = col(obs, np.float32), col(action, np.float32)
    buf.advantages, buf.log_probs = col(adv, dtype)[..., 0], col(old_logp, dtype)[..., 0]
    buf.returns, buf.values = buf.advantages.copy(), np.zeros_like(buf.advantages)
    buf.full, buf.pos = True, buf.buffer_size
    return model, layout


def sb3_side(model, layout, v, tol):
    """train()'s code up to the step size, replayed on the same data with sb3's own helpers;
    then the real model.train() once, for theta_new - theta_old. All in sb3's order."""
    np.random.seed(SEED)  # the buffer's permutation, as train() will see it below
    data = next(model.rollout_buffer.get(batch_size=None))
    discrete = isinstance(model.action_space, gym.spaces.Discrete)
    actions = data.actions.long().flatten() if discrete else data.actions
    with th.no_grad():
        old = copy.copy(model.policy.get_distribution(data.observations))
    dist = model.policy.get_distribution(data.observations)
    objective = (data.advantages * th.exp(dist.log_prob(actions) - data.old_log_prob)).mean()
    params, g, grad_kl, _ = model._compute_actor_grad(kl_divergence(dist, old).mean(), objective)
    assert all(a is b for (a, _, _), b in zip(layout, params, strict=True))
    hvp = partial(model.hessian_vector_product, params, grad_kl)
    th.manual_seed(SEED)  # CG's random start, as train() will draw it below
    s = conjugate_gradient_solver(hvp, g, max_iter=model.cg_max_steps, residual_tol=tol)
    fv = hvp(th.as_tensor(v, dtype=g.dtype))
    out = {k: x.detach().numpy() for k, x in dict(g=g, Fv=fv, s=s).items()}
    out["beta"] = math.sqrt(2 * model.target_kl / float(s @ hvp(s)))
    flat = lambda: th.nn.utils.parameters_to_vector(params).detach().numpy().copy()
    before, real = flat(), sb3_trpo.conjugate_gradient_solver
    sb3_trpo.conjugate_gradient_solver = partial(real, residual_tol=tol)
    try:
        np.random.seed(SEED)
        th.manual_seed(SEED)
        model.train()
    finally:
        sb3_trpo.conjugate_gradient_solver = real
    out["dtheta"] = flat() - before
    return out


def trpo_parts(apply, params, batch, hp, v):
    """trpo_step's intermediates from trpo.py's building blocks, and trpo_step itself."""
    theta, unravel = ravel_pytree(params)
    old = jax.lax.stop_gradient(apply(params, batch.obs))
    surrogate_fn = lambda t: trpo.surrogate(apply, unravel(t), batch)
    kl_fn = lambda t: trpo.mean_kl(apply, unravel(t), old, batch.obs)
    fvp = lambda u: trpo.fisher_vector_product(kl_fn, theta, u, hp.cg_damping)
    g = jax.grad(surrogate_fn)(theta)
    s, cg = trpo.conjugate_gradient(fvp, g, hp.cg_iters, hp.cg_residual_tol)
    beta = jnp.sqrt(2 * hp.max_kl / trpo.dot(s, fvp(s)))
    new, info = trpo.trpo_step(apply, params, batch, hp)
    parts = dict(g=g, Fv=fvp(v), s=s, beta=beta, dtheta=ravel_pytree(new)[0] - theta)
    return parts, cg.iterations, info.line_search.backtracks, info.line_search.accepted


def compare(env_name, x64, overrides):
    agent, params, obs, action, adv = rollout_batch(env_name)
    hp, dtype = trpo.TRPOHyperparams(**overrides), (jnp.float64 if x64 else jnp.float32)
    with jax.enable_x64(x64):
        cast = lambda x: jnp.asarray(x, dtype)
        jparams = jax.tree.map(cast, params)
        logp = trpo.log_prob(agent.policy.apply(jparams, cast(obs)), jnp.asarray(action))
        batch = trpo.PolicyBatch(cast(obs), jnp.asarray(action), cast(adv), logp)
        model, layout = make_sb3(env_name, x64, params, (obs, action, adv, np.asarray(logp)), hp)
        v = np.random.default_rng(SEED).standard_normal(sum(p.numel() for p, _, _ in layout))
        jv = ravel_pytree(jax.tree.map(cast, from_sb3(layout, v, params)))[0]
        run = jax.jit(lambda p, b, u: trpo_parts(agent.policy.apply, p, b, hp, u))
        parts, cg_iters, k, accepted = jax.device_get(run(jparams, batch, jv))
        unravel = ravel_pytree(jparams)[1]
        ours = {f: x if f == "beta" else to_sb3(layout, unravel(x)) for f, x in parts.items()}
    theirs = sb3_side(model, layout, v, hp.cg_residual_tol)
    norm = lambda x: float(np.linalg.norm(np.asarray(x, np.float64)))
    rel = {f: norm(ours[f] - theirs[f]) / norm(theirs[f]) for f in FIELDS}
    # sb3's accepted backtrack, from |dtheta| = beta 0.8^k |s|; then train() against the replay
    ratio = norm(theirs["dtheta"]) / (theirs["beta"] * norm(theirs["s"]))
    k_sb3 = round(math.log(ratio) / math.log(hp.line_search_shrink)) if ratio > 0 else -1
    replay = theirs["beta"] * hp.line_search_shrink ** k_sb3 * theirs["s"] * (k_sb3 >= 0)
    return dict(env=env_name, dtype=np.dtype(dtype).name, rel=rel, num_params=len(v),
                cg_iters_trpo=int(cg_iters), backtracks_trpo=int(k) if accepted else -1,
                backtracks_sb3=k_sb3, sb3_train_vs_replay=norm(theirs["dtheta"] - replay)
                / max(norm(replay), 1e-300), hyperparams=hp._asdict())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    print(__doc__[__doc__.index("Conventions"):].rstrip())
    rows = []
    for case, (x64, overrides) in CASES.items():
        print(f"\n{case}: ||trpo.py - sb3|| / ||sb3||")
        print(f"{'env':<13}" + "".join(f"{f:>9}" for f in FIELDS) + "  k ours/sb3  CG its  replay")
        for env_name in ENVS:
            rows.append(row := compare(env_name, x64, overrides))
            print(f"{env_name:<13}" + "".join(f"{row['rel'][f]:>9.1e}" for f in FIELDS)
                  + f"{row['backtracks_trpo']:>7d}/{row['backtracks_sb3']:<4d}"
                  + f"{row['cg_iters_trpo']:>7d}{row['sb3_train_vs_replay']:>8.0e}", flush=True)
    print("\nk: accepted line-search backtrack (-1: none). CG its: trpo.py's CG iterations. "
          "replay:\nsb3 train()'s dtheta against beta 0.8^k s from its replayed helpers.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
