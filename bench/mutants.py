"""The tests against planted bugs: each careless edit below goes into a copy of the repository's
trpo.py, one at a time, and the tests run on it: first all but the learning tests, then, if none
failed, the learning tests. A bug is caught when a test fails; the first failure is recorded.

    python bench/mutants.py                # all, into bench/mutants.json (about 40 min on 2 cores)
    python bench/mutants.py --only jnp_dot
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STAGES = [["-m", "not distributed", "-k", "not learns"], ["-k", "learns"]]
MUTANTS = {  # name: (text in trpo.py, exactly once; what a careless edit makes of it)
    "critic_on_A": ("return advantages, advantages + values", "return advantages, advantages"),
    "critic_fits_advantages": ("obs, flat(targets),", "obs, flat(advantages),"),
    "no_advantage_standardizing": ("adv = (adv - adv.mean()) / (adv.std() + 1e-8)", "adv = adv"),
    "bootstrap_terminal": ("gamma * (1.0 - terminated) * next_values", "gamma * next_values"),
    "gae_no_reset": ("(1.0 - (terminated | truncated))", "jnp.ones_like(deltas)"),
    "surrogate_no_exp": ("jnp.exp(log_ratio) * batch.advantage", "log_ratio * batch.advantage"),
    "ratio_inverted": ("log_prob(dist, batch.action) - batch.old_log_prob",
                       "batch.old_log_prob - log_prob(dist, batch.action)"),
    "kl_reversed": ("kl_divergence(old_dist, policy_apply(params, obs))",
                    "kl_divergence(policy_apply(params, obs), old_dist)"),
    "fvp_no_damping": ("(v,))[1] + damping * v", "(v,))[1]"),
    "cg_alpha": ("alpha = safe_div(rr, dot(p, ap))", "alpha = safe_div(rr, dot(ap, ap))"),
    "cg_unsafe_division": ("jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)",
                           "num / den"),
    "beta_without_2": ("jnp.sqrt(2.0 * hp.max_kl /", "jnp.sqrt(hp.max_kl /"),
    "no_step_validity": ("jnp.where(valid, beta * direction, 0.0)", "beta * direction"),
    "no_gradient_guard": ("jnp.where(jnp.all(jnp.isfinite(grad)), grad, 0.0)", "grad"),
    "no_improvement_check": ("(kl <= max_kl) & (improvement > 0)", "kl <= max_kl"),
    "line_search_off_by_one": ("theta_old + shrink**k * full_step, theta_old)",
                               "theta_old + shrink**(k + 1) * full_step, theta_old)"),
    "rejected_step_not_exact": ("jnp.where(accepted, theta_old + shrink**k * full_step, theta_old)",
                                "theta_old + jnp.where(accepted, shrink**k, 0.0) * full_step"),
    "jnp_dot": ("    return jnp.sum(a * b)", "    return jnp.dot(a, b)"),
    "entropy_sign": ("+ entropy_coef * jnp.mean(", "- entropy_coef * jnp.mean("),
    "kl_without_log_std": ("- (p.log_std - q.log_std), -1)", ", -1)"),
    "log_prob_without_log_std": ("-0.5 * z**2 - dist.log_std - HALF_LOG_2PI",
                                 "-0.5 * z**2 - HALF_LOG_2PI"),
    "log_std_frozen": ("jnp.broadcast_to(log_std, out.shape)",
                       "jnp.broadcast_to(jax.lax.stop_gradient(log_std), out.shape)"),
    "variance_without_delta": ("batch_var * n + delta**2 * stats.count * n / total",
                               "batch_var * n"),
    "observation_clip_gone": ("jnp.clip((obs - stats.mean) / jnp.sqrt(stats.var + 1e-8), -10.0, "
                              "10.0)", "(obs - stats.mean) / jnp.sqrt(stats.var + 1e-8)"),
    "stats_updated_after_use": (
        "            obs_stats = update_running_stats(obs_stats, runner.obs)\n"
        "        act_key, env_key = jax.random.split(step_key)\n"
        "        seen = normalize(runner.obs, obs_stats, config.normalize_observations)",
        "            pass\n        act_key, env_key = jax.random.split(step_key)\n"
        "        seen = normalize(runner.obs, obs_stats, config.normalize_observations)\n"
        "        if config.normalize_observations:\n"
        "            obs_stats = update_running_stats(obs_stats, runner.obs)"),
    "final_obs_not_normalized": (
        "        final_obs = normalize(final_obs, obs_stats, config.normalize_observations)\n", ""),
    "next_value_after_reset": ('flat_obs(info["final_observation"], obs.shape[0])', "obs"),
    "rewards_by_variance": ("reward / jnp.sqrt(return_stats.var[0] + 1e-8)",
                            "reward / (return_stats.var[0] + 1e-8)"),
    "counters_not_reset": ("reset = lambda x: jnp.where(done, 0, x).astype(x.dtype)",
                           "reset = lambda x: x"),
    "episode_mean_over_steps": ("tr.finished_return.sum(), state.last_return",
                                "tr.finished_return.mean(), state.last_return"),
    "anneal_inverted": ("(1.0 - env_steps / config.total_timesteps)",
                        "(env_steps / config.total_timesteps)"),
    "critic_unshuffled": ("jax.random.permutation(epoch_key, targets.shape[0])",
                          "jnp.arange(targets.shape[0])"),
}


def caught_by(name: str) -> str | None:
    """The first test that fails with the bug planted, or None."""
    old, new = MUTANTS[name]
    with tempfile.TemporaryDirectory() as work:
        repo = os.path.join(work, "repo")
        shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.json",
                                                                  "*.npz", "*.png", "*.gif"))
        code = open(os.path.join(repo, "trpo.py")).read()
        assert code.count(old) == 1, f"{name}: the text occurs {code.count(old)} times"
        open(os.path.join(repo, "trpo.py"), "w").write(code.replace(old, new))
        for stage in STAGES:
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-n", "2", "-rf",
                                  "-p", "no:cacheprovider", "--timeout=600", "test_trpo.py",
                                  *stage], cwd=repo, capture_output=True, text=True)
            failed = re.findall(r"^FAILED (\S+)", run.stdout, re.M)
            if failed:
                return failed[0].split("::")[-1]
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated names")
    parser.add_argument("--out", default=os.path.join(HERE, "mutants.json"))
    args = parser.parse_args()
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    for name in args.only.split(",") if args.only else MUTANTS:
        results[name] = caught_by(name)
        print(f"{name}: {results[name] or 'NOT CAUGHT'}", flush=True)
        json.dump(results, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
