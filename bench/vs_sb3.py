"""sb3-contrib TRPO against trpo.py: same envs, budgets and seed counts, alternated in one run.

Each side runs in its own process, and its wall clock (imports and compilation included) is
measured from here. After training, each seed gets 10 deterministic evaluation episodes.

    pip install -r requirements.txt -r bench/requirements.txt
    python bench/vs_sb3.py --seeds 8 \
        --envs CartPole-v1,Acrobot-v1,MountainCar-v0,Pendulum-v1,MountainCarContinuous-v0
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# rl-baselines3-zoo hyperparams/trpo.yml. Every entry: policy MlpPolicy, n_envs 2.
ZOO = {
    "CartPole-v1": dict(budget=100_000, n_steps=512, batch_size=512, cg_damping=1e-3,
                        gae_lambda=0.98, gamma=0.99, learning_rate=1e-3,
                        n_critic_updates=20),  # zoo trpo.yml CartPole-v1
    "Acrobot-v1": dict(budget=100_000, normalize=True, n_steps=1024),  # zoo trpo.yml Acrobot-v1
    "MountainCar-v0": dict(budget=100_000, normalize=True, n_steps=1024,
                           n_critic_updates=20),  # zoo trpo.yml MountainCar-v0
    "Pendulum-v1": dict(budget=100_000, n_steps=1024, gamma=0.9, n_critic_updates=15, use_sde=True,
                        sde_sample_freq=4),  # zoo trpo.yml Pendulum-v1
    "MountainCarContinuous-v0": dict(budget=50_000, normalize=True, use_sde=True,
                                     sde_sample_freq=4),  # zoo trpo.yml MountainCarContinuous-v0
}


def sb3_worker(env_name: str, seeds: int) -> dict:
    from sb3_contrib import TRPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    settings = dict(ZOO[env_name])
    budget, normalize = settings.pop("budget"), settings.pop("normalize", False)

    class Curve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.points = []

        def _on_step(self):
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.points.append((self.num_timesteps, float(info["episode"]["r"])))
            return True

    finals, curves = [], []
    for seed in range(seeds):
        env = make_vec_env(env_name, n_envs=2, seed=seed)  # zoo: n_envs 2
        if normalize:
            env = VecNormalize(env, gamma=settings.get("gamma", 0.99))
        model = TRPO("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **settings)
        curve = Curve()
        model.learn(budget, callback=curve)
        eval_env = make_vec_env(env_name, n_envs=1, seed=10_000 + seed)
        if normalize:
            eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
            eval_env.obs_rms = env.obs_rms
        returns = []
        obs = eval_env.reset()
        while len(returns) < 10:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, done, info = eval_env.step(action)
            if done[0]:
                returns.append(float(info[0]["episode"]["r"]))
        finals.append(float(np.mean(returns)))
        curves.append(curve.points)
    return {"finals": finals, "curves": curves}


def trpo_worker(env_name: str, seeds: int) -> dict:
    sys.path.insert(0, ROOT)
    import jax
    import trpo

    if os.environ.get("TRPO_BENCH_CACHE_DIR"):  # a persistent compilation cache, warm
        jax.config.update("jax_compilation_cache_dir", os.environ["TRPO_BENCH_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

    config = trpo.make_config(env_name, total_timesteps=int(ZOO[env_name]["budget"]))
    # Held-out seeds (key 1 of bench/heldout.py; the presets were tuned on key 0).
    keys = jax.random.split(jax.random.PRNGKey(int(os.environ.get("TRPO_BENCH_SEED", 1))), seeds)
    state, metrics = jax.jit(jax.vmap(trpo.make_train(config)))(keys)
    agent = trpo.make_agent(config)
    evaluate = jax.jit(jax.vmap(lambda p, s, k: trpo.evaluate(agent, config, p, s, k, 10)))
    eval_keys = jax.random.split(jax.random.PRNGKey(1), seeds)
    returns = np.asarray(evaluate(state.policy_params, state.obs_stats, eval_keys))
    return {"finals": returns.mean(1).tolist(), "steps": np.asarray(metrics.env_steps[0]).tolist(),
            "returns": np.asarray(metrics.episode_return).tolist()}


def run_worker(side: str, env_name: str, seeds: int, root: str = ROOT) -> tuple[dict, float]:
    """Times one worker process; root is the checkout whose bench/vs_sb3.py (and trpo.py) runs."""
    start = time.perf_counter()
    command = [sys.executable, os.path.join(root, "bench", "vs_sb3.py"), "--worker", side,
               "--envs", env_name, "--seeds", str(seeds)]
    out = subprocess.run(command, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if out.returncode:
        raise SystemExit(f"{side} worker failed on {env_name}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--envs", default=",".join(ZOO))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--worker", choices=["sb3", "trpo"])
    parser.add_argument("--out", default=os.path.join(HERE, "vs_sb3.json"))
    parser.add_argument("--append", action="store_true", help="keep the envs already in --out")
    parser.add_argument("--warm-cache", action="store_true",
                        help="trpo.py side: run once untimed to fill a compilation cache, "
                             "then time a run using it")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also time the trpo.py worker of another checkout (e.g. the previous "
                             "commit), in the same run: a before/after speed ratio")
    args = parser.parse_args()
    if args.worker:
        worker = sb3_worker if args.worker == "sb3" else trpo_worker
        print(json.dumps(worker(args.envs, args.seeds)))
        return
    results = json.load(open(args.out)) if args.append and os.path.exists(args.out) else {}
    print(f"{'env':26} {'steps':>7} {'seeds':>5} {'sb3-contrib':>16} {'trpo.py':>16} "
          f"{'sb3 s':>7} {'trpo s':>7} {'ratio':>6}")
    for env_name in args.envs.split(","):
        # Alternate the order per env so neither side always runs first.
        order = ("sb3", "trpo") if len(results) % 2 == 0 else ("trpo", "sb3")
        if args.warm_cache:
            os.environ["TRPO_BENCH_CACHE_DIR"] = os.path.join(HERE, ".cache")
            run_worker("trpo", env_name, args.seeds)  # untimed: fills the cache
        runs = {side: run_worker(side, env_name, args.seeds) for side in order}
        if args.baseline:
            runs["baseline"] = run_worker("trpo", env_name, args.seeds, args.baseline)
        results[env_name] = {side: {**out, "wall_s": wall}
                             for side, (out, wall) in runs.items()}
        finals = lambda side: runs[side][0]["finals"]
        fmt = lambda side: f"{np.mean(finals(side)):7.1f} ± {np.std(finals(side)):6.1f}"
        wall = {side: runs[side][1] for side in runs}
        print(f"{env_name:26} {ZOO[env_name]['budget']:>7} {args.seeds:>5} {fmt('sb3'):>16} "
              f"{fmt('trpo'):>16} {wall['sb3']:>7.1f} {wall['trpo']:>7.1f} "
              f"{wall['sb3'] / wall['trpo']:>5.1f}x", flush=True)
        if args.baseline:
            print(f"{'  baseline ' + args.baseline:26} {'':>7} {'':>5} {'':>16} "
                  f"{fmt('baseline'):>16} {'':>7} {wall['baseline']:>7.1f} "
                  f"{wall['sb3'] / wall['baseline']:>5.1f}x", flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
