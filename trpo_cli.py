"""trpo_cli.py: the command line of trpo.py (`python trpo.py --help`).

Flags from Config's fields, progress lines, training as a host loop over jitted chunks (so a
SIGINT or SIGTERM stops it with a checkpoint that --resume continues bit for bit), multi-process
runs, the compile cache, and the outputs (checkpoint, eval, metrics, plot, GIF), each a one-line
error when it fails. The algorithm and the training loop are in trpo.py; nothing there depends on
this file.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Callable, NamedTuple

if __name__ == "__main__":  # as a script, hide XLA's C++ log lines (the compile cache's notices)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from trpo import (PRESETS, SOLVED, SWEEPABLE, Config, Metrics, RunningStats, TrainState,
                  deterministic_episodes, evaluate_seeds, format_summary, make_agent,
                  make_agent_on_devices, make_config, make_sweep_train, make_train_parts,
                  num_updates, summarize_seeds, validate_config)


class Checkpoint(NamedTuple):
    """A run, whole: its Config, the [values, seeds] runs (a plain run is a sweep of one value),
    the TrainState and Metrics buffer of every run (leading [values, seeds] axes), and how many
    updates are done. It resumes bit for bit."""
    config: Config
    sweep_field: str
    sweep_values: list[float]
    seeds: int
    updates_done: int
    state: TrainState
    metrics: Metrics


def save_checkpoint(path: str, ckpt: Checkpoint) -> None:
    """Write the checkpoint as msgpack, atomically (a temp file, fsync, rename; SIGINT and
    SIGTERM wait until it is done)."""
    config = ckpt.config
    config_dict = {**dataclasses.asdict(config), "hidden_sizes": list(config.hidden_sizes)}
    payload = {**ckpt._asdict(), "config": config_dict, "format": 2}
    to_numpy = lambda x: np.asarray(x) if isinstance(x, jax.Array) else x
    data = serialization.msgpack_serialize(
        jax.tree.map(to_numpy, serialization.to_state_dict(payload)))
    received: list[int] = []  # SIGINT/SIGTERM wait for the write, then act as they would have
    deferred = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.signal(sig, lambda signum, _: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)} if deferred else {}
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-",
                                   suffix=".msgpack")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp:
            os.unlink(tmp)
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for signum in received:
            signal.raise_signal(signum)


def checkpoint_template(config: Config, field: str, values: list[float], seeds: int) -> Any:
    """Shapes and dtypes of the (TrainState, Metrics) of [values, seeds] runs, without running."""
    init = lambda v, key: make_train_parts(dataclasses.replace(config, **{field: v}))[0](key)
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    return jax.eval_shape(jax.vmap(jax.vmap(init, (None, 0)), (0, None)),
                          jnp.asarray(values, jnp.float32), keys)


def load_checkpoint(path: str, expect: dict[str, Any] | None = None) -> Checkpoint:
    """Read a checkpoint; ValueError if it is missing, not a regular file under 1 GiB, corrupt, or
    if a Config field named in `expect` (env_name, hidden_sizes, ...) differs from the saved one."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if os.path.exists(path) and not (os.path.isfile(path) and os.path.getsize(path) < memory):
        raise ValueError(f"checkpoint {path}: not a regular file smaller than this machine's "
                         f"memory ({memory / 2**30:.0f} GiB)")
    try:
        with open(path, "rb") as f:
            raw = serialization.msgpack_restore(f.read())
        if raw.get("format") != 2:
            raise ValueError(f"checkpoint {path} has no whole training state (format 2); "
                             "a checkpoint of an older trpo.py must be retrained")
        saved = dict(raw["config"])
        sizes = saved["hidden_sizes"]
        saved["hidden_sizes"] = tuple(int(h) for h in (sizes.values() if isinstance(sizes, dict)
                                                       else sizes))
        config = Config(**{k: v.item() if hasattr(v, "item") else v for k, v in saved.items()})
        values = [float(v) for v in (raw["sweep_values"].values()
                                     if isinstance(raw["sweep_values"], dict)
                                     else raw["sweep_values"])]
        field, seeds, done = str(raw["sweep_field"]), int(raw["seeds"]), int(raw["updates_done"])
    except FileNotFoundError:
        raise ValueError(f"checkpoint not found: {path}") from None
    except PermissionError:
        raise ValueError(f"checkpoint {path}: permission denied") from None
    except Exception as error:
        mine = str(error).startswith(f"checkpoint {path}")
        raise ValueError(error if mine else f"corrupt checkpoint {path}: "
                         f"{type(error).__name__}") from None
    for name, value in (expect or {}).items():
        if getattr(config, name) != value:
            raise ValueError(f"checkpoint {path} has {name}={getattr(config, name)!r}, "
                             f"but this run asks for {name}={value!r}")
    try:
        validate_config(config)
        if not (make_sweep_train(config, field) and 0 < seeds < 2**20 and values
                and 0 <= done <= num_updates(config)):
            raise ValueError(f"runs {field}={values} x {seeds} seeds, {done} updates done")
        template = checkpoint_template(config, field, values, seeds)
        state = serialization.from_state_dict(template[0], raw["state"])
        metrics = serialization.from_state_dict(template[1], raw["metrics"])
        for got, want in zip(jax.tree.leaves((state, metrics)), jax.tree.leaves(template)):
            if np.shape(got) != want.shape or np.asarray(got).dtype != want.dtype:
                raise ValueError(f"{np.asarray(got).dtype}{list(np.shape(got))} where "
                                 f"{want.dtype}{list(want.shape)} belongs")
    except Exception as error:
        raise ValueError(f"checkpoint {path} does not match the architecture: "
                         f"{' '.join(str(error).split())[:200]}") from None
    if not all(np.isfinite(x).all() for x in jax.tree.leaves(state) if np.issubdtype(
            np.asarray(x).dtype, np.floating)):
        raise ValueError(f"checkpoint {path} holds non-finite numbers; it cannot be used")
    return Checkpoint(config, field, values, seeds, done, state, metrics)


def render_gif(path: str, config: Config, policy_params: Any, obs_stats: RunningStats) -> int:
    """One deterministic episode drawn by gymnax's Visualizer into a GIF; returns its length."""
    import matplotlib
    matplotlib.use("Agg")
    for name in ("SDL_AUDIODRIVER", "SDL_VIDEODRIVER"):
        os.environ.setdefault(name, "dummy")  # gymnax draws classic control through pygame
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    from gymnax.visualize import Visualizer
    agent = make_agent(config)
    states, rewards, alive = jax.jit(lambda p, s: deterministic_episodes(
        config, p, s, jax.random.PRNGKey(config.seed + 2), 1))(policy_params, obs_stats)
    states = jax.tree.map(np.asarray, states)
    length = int(np.asarray(alive[:, 0]).sum())
    frames = [jax.tree.map(lambda x: x[t, 0], states) for t in range(length)]
    returns = np.cumsum(np.asarray(rewards[:length, 0]))
    Visualizer(agent.env, agent.env_params, frames, returns).animate(path)
    return length


DRAWABLE = ("Acrobot-v1", "CartPole-v1", "Pendulum-v1", "MountainCar-v0",
            "MountainCarContinuous-v0", "Catch-bsuite", "Asterix-MinAtar", "Breakout-MinAtar",
            "Freeway-MinAtar", "Seaquest-MinAtar", "SpaceInvaders-MinAtar", "Pong-misc",
            "PointRobot-misc", "MetaMaze-misc", "FourRooms-misc")  # gymnax's Visualizer


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 64,64, got {text!r}") from None


def flag_type(field: dataclasses.Field) -> Callable[[str], Any]:
    """How the flag of a Config field parses its text."""
    parsers = {bool: parse_bool, int: int, float: float, str: str, tuple: parse_sizes}
    return parsers[type(field.default)]


def config_comments() -> dict[str, str]:
    """The '# ...' comment after each Config field, reused as that flag's --help text."""
    import inspect
    import re
    return dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", inspect.getsource(Config), re.M))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trpo.py", exit_on_error=False, allow_abbrev=False,
        description="TRPO + GAE on gymnax, one jitted function. Defaults are Config's; presets "
                    f"override them for {', '.join(PRESETS)}.")
    add = parser.add_argument
    add("--env", dest="env_name", help=f"gymnax env name (default: {Config.env_name})")
    add("--seeds", type=int, default=1, help="seeds trained at once with vmap (default: 1)")
    comments = config_comments()
    for field in dataclasses.fields(Config)[1:]:
        default = field.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        add(f"--{field.name}", type=flag_type(field),
            help=f"{comments[field.name]} (default: {shown})")
    add("--quiet", action="store_true", help="no progress lines")
    add("--plot", metavar="PATH.png", help="save the learning curves")
    add("--metrics", metavar="PATH", help="per-update metrics and eval returns (.csv or .json)")
    add("--save", metavar="PATH", help="save the first seed's checkpoint (msgpack)")
    add("--load", metavar="PATH", help="load a checkpoint to evaluate or render, not to train")
    add("--resume", metavar="PATH", help="continue the checkpoint's run (saved again to PATH, or "
        "to --save)")
    add("--checkpoint_every", type=int, metavar="N", help="write the checkpoint every N updates")
    add("--eval", type=int, default=0, metavar="N",
        help="N deterministic episodes per trained seed, then IQM and worst seed (--load: 10)")
    add("--render", metavar="PATH.gif", help="GIF of one deterministic episode (first seed)")
    add("--sweep", metavar="FIELD=v1,v2", help=f"vmap over values of one of {', '.join(SWEEPABLE)}")
    add("--devices", default="1", metavar="N|all", help="split num_envs over N devices")
    add("--no-compile-cache", action="store_true", help="no persistent compilation cache")
    add("--coordinator", metavar="HOST:PORT", help="multi-process: process 0's address; every "
        "process runs the same command with its own --process_id, and --devices all")
    add("--num_processes", type=int, metavar="N", help="multi-process: how many")
    add("--process_id", type=int, metavar="I", help="multi-process: this one, in [0, N)")
    add("--distributed", choices=["auto"], help="multi-process settings from the cluster "
        "manager (SLURM, ...), as jax.distributed.initialize() detects them")
    add("--distributed_timeout", type=int, default=60, metavar="S",
        help="seconds to wait for the coordinator and the other processes (default: 60)")
    return parser


def parse_cli(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    """Parse flags into a validated Config; ValueError with a one-line message on bad input.
    args.sweep becomes (field, values); a plain run is a sweep of the one value max_kl."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except (argparse.ArgumentError, argparse.ArgumentTypeError) as error:
        raise ValueError(str(error)) from None
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
    for flag in ("plot", "metrics", "save", "load", "resume", "render", "sweep", "coordinator"):
        if getattr(args, flag) == "":
            raise ValueError(f"--{flag} needs a value, got an empty string")
    init_distributed(args)  # before make_config: gymnax starts JAX when imported
    explicit = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                if getattr(args, f.name) is not None}
    config = make_config(**explicit)
    args.architecture = {k: v for k, v in explicit.items()
                         if k in ("env_name", "hidden_sizes", "normalize_observations")}
    for flag, low in (("seeds", 1), ("eval", 0)):
        if not low <= getattr(args, flag) < 2**20:
            raise ValueError(f"--{flag} must be in [{low}, 2**20), got {getattr(args, flag)}")
    for flag, suffixes in (("plot", (".png",)), ("metrics", (".csv", ".json")),
                           ("save", ("",)), ("render", (".gif",)), ("resume", ("",))):
        path = getattr(args, flag)
        if path is None:
            continue
        if not path.endswith(suffixes) or os.path.exists(path) and not os.path.isfile(path):
            raise ValueError(f"--{flag} {path!r}: expected a regular file path ending in "
                             f"{' or '.join(suffixes)}")
        if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
            raise ValueError(f"--{flag} {path}: its directory does not exist or is not writable")
    if args.load and (args.save or args.metrics or args.plot or args.sweep or args.seeds != 1
                      or args.resume or args.checkpoint_every):
        raise ValueError("--load evaluates (--eval, --render) a saved policy; --save, --metrics, "
                         "--plot, --sweep, --seeds, --resume and --checkpoint_every apply to "
                         "training only")
    if args.resume and (explicit or args.sweep or args.seeds != 1 or jax.process_count() > 1):
        drop = " ".join("--" + k for k in explicit) or "--sweep/--seeds"
        raise ValueError("--resume continues the saved run with its own settings and seeds, in "
                         f"one process; drop {drop}")
    if args.checkpoint_every is not None and not (
            0 < args.checkpoint_every < 2**31 and (args.save or args.resume)):
        raise ValueError("--checkpoint_every N needs N >= 1 and a --save (or --resume) path")
    field, _, text = (args.sweep or f"max_kl={config.max_kl!r}").partition("=")
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--sweep expects FIELD=v1,v2,..., got {args.sweep!r}") from None
    make_sweep_train(config, field)  # checks the field once, where the sweep is built
    for value in values:
        validate_config(dataclasses.replace(config, **{field: value}))
    args.sweep_field, args.sweep_values = field, values
    if not (args.devices == "all" or args.devices.isdigit()):
        raise ValueError(f"--devices expects a number or all, got {args.devices!r}")
    args.devices = jax.device_count() if args.devices == "all" else int(args.devices)
    check_env_flags(config, args)
    return config, args


def check_env_flags(config: Config, args: argparse.Namespace) -> None:
    """The flags that depend on the env and its Config (after --resume, on the saved one)."""
    if args.render and config.env_name not in DRAWABLE:
        raise ValueError(f"--render: gymnax cannot draw {config.env_name}; it draws "
                         f"{', '.join(DRAWABLE)}")
    if jax.process_count() > 1 and args.devices != jax.device_count():
        raise ValueError(f"with {jax.process_count()} processes, use --devices all (every "
                         f"process's devices, {jax.device_count()} in all)")
    make_agent_on_devices(config, args.devices)  # rejects bad devices or action spaces


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def init_distributed(args: argparse.Namespace) -> None:
    """Join a multi-process run through jax.distributed (before any other JAX call). The
    processes' devices form one mesh; each process builds its own shard of the env batch inside
    the jit, and only process 0 prints and writes files. On CPU the collectives use gloo."""
    named = (args.coordinator, args.num_processes, args.process_id)
    args.training_done = threading.Event()  # ends watch_peers
    if args.distributed is None and named == (None, None, None):
        return
    if args.distributed and named != (None, None, None):
        raise ValueError("--distributed auto takes its settings from the cluster; drop "
                         "--coordinator, --num_processes and --process_id")
    timeout = args.distributed_timeout
    if not 0 < timeout <= 86400:
        raise ValueError(f"--distributed_timeout must be in [1, 86400] seconds, got {timeout}")
    if not args.distributed:
        if None in named:
            raise ValueError("a multi-process run needs --coordinator HOST:PORT, --num_processes "
                             "N and --process_id I together")
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--coordinator expects HOST:PORT, got {args.coordinator!r}")
        if not 0 < args.num_processes < 2**16 or not 0 <= args.process_id < args.num_processes:
            raise ValueError(f"--process_id must be in [0, --num_processes) with --num_processes "
                             f"at least 1, got {args.process_id} and {args.num_processes}")
        if args.process_id > 0 and not wait_for_port(host, int(port), timeout):
            raise ValueError(f"coordinator {args.coordinator} not reachable within {timeout} s "
                             "(start process 0 first, or raise --distributed_timeout)")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_recoverability", True)  # a lost peer: our line, not an abort
    try:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                   initialization_timeout=timeout,
                                   heartbeat_timeout_seconds=min(timeout, 100))
    except Exception as error:
        raise ValueError(f"jax.distributed.initialize failed: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}") from None
    threading.Thread(target=watch_peers, args=(args.training_done,), daemon=True).start()


def watch_peers(training_done: threading.Event) -> None:
    """Until training ends, exit with one line once the coordination service counts a process as
    dead (no heartbeats): XLA would otherwise wait for it, or abort with a stack dump."""
    from jax._src.distributed import global_state
    everyone, unanswered = list(range(jax.process_count())), 0
    while not training_done.wait(1.0):
        try:  # a busy service may not answer once; 10 unanswered polls in a row mean it is gone
            live, unanswered = global_state.client.get_live_nodes(everyone), 0
        except Exception:
            live, unanswered = everyone, unanswered + 1
        lost = sorted(set(everyone) - set(live)) or (everyone if unanswered >= 10 else [])
        if lost:
            print(f"trpo.py: error: process {jax.process_index()} lost peer process(es) "
                  f"{lost}", file=sys.stderr, flush=True)
            os._exit(1)


def enable_compile_cache() -> None:
    """Compiled programs persist in $XDG_CACHE_HOME/trpo-jax (~/.cache/trpo-jax if it is unset or
    empty). JAX never replaces an entry that fails to load, so such an entry is deleted here and
    the recompiled program is written in its place; one line says so."""
    from jax._src import compilation_cache
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    cache_dir = os.path.join(cache_home, "trpo-jax")
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    warnings.filterwarnings("ignore", "Error reading persistent compilation cache entry")
    read, removed = compilation_cache.get_executable_and_time, []

    def read_or_remove(cache_key: str, *args: Any) -> Any:
        try:
            return read(cache_key, *args)
        except Exception:
            os.remove(os.path.join(cache_dir, f"{cache_key}-cache"))  # if it cannot: JAX warns
            if not removed:
                say(f"trpo.py: removed unreadable entries of the compilation cache {cache_dir}; "
                    "each is recompiled and written again", file=sys.stderr)
            removed.append(cache_key)
            raise

    compilation_cache.get_executable_and_time = read_or_remove


def make_progress_printer(config: Config, num_runs: int, clock: list[float]) -> Callable:
    """Host-side progress: collects the num_runs per-run calls of one update, prints their mean."""
    pending: dict[int, list[Metrics]] = {}

    def progress(index, metrics: Metrics) -> None:
        runs = pending.setdefault(int(index), [])
        runs.append(metrics)
        if len(runs) < num_runs:
            return
        del pending[int(index)]
        mean = lambda name: float(np.mean([getattr(m, name) for m in runs]))
        steps = int(runs[0].env_steps)
        rate = (steps - clock[1]) * num_runs / max(time.perf_counter() - clock[0], 1e-9)
        say(f"update {int(index) + 1:4d}/{num_updates(config)}  steps {steps:9d}  "
            f"{rate:9.0f} steps/s  return {mean('episode_return'):8.1f}  kl {mean('kl'):.4f}  "
            f"accepted {mean('line_search_accepted'):.2f}  "
            f"explained_var {mean('explained_variance'):.2f}")

    return progress


def write_metrics(path: str, metrics: Metrics, runs: list[dict[str, Any]]) -> None:
    """Per-update metrics [runs, updates] as .json (strict: null for a non-finite value) or .csv;
    runs[i] labels run i (and holds its eval return, if any)."""
    arrays = {name: np.asarray(value) for name, value in metrics._asdict().items()}
    with open(path, "w", newline="") as f:
        if path.endswith(".json"):
            strict = lambda v: np.where(np.isfinite(v), v.astype(object), None).tolist()
            labels = [{k: None if isinstance(v, float) and not math.isfinite(v) else v
                       for k, v in run.items()} for run in runs]
            json.dump({"runs": labels, **{k: strict(v) for k, v in arrays.items()}}, f,
                      allow_nan=False)
            return
        writer = csv.writer(f)
        writer.writerow([*runs[0], "update", *arrays])
        for i, labels in enumerate(runs):
            for u in range(arrays["env_steps"].shape[1]):
                writer.writerow([*labels.values(), u, *(v[i, u].item() for v in arrays.values())])


def plot_curves(path: str, curves: dict[str, Metrics], title: str) -> None:
    """Mean +- std over seeds of the episode return against env steps; metrics [seeds, updates]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, metrics in curves.items():
        steps = np.asarray(metrics.env_steps)[0]
        returns = np.asarray(metrics.episode_return, np.float64)
        returns[np.cumsum(metrics.episodes_finished, -1) == 0] = np.nan  # no episode ended yet
        mean, std = np.nanmean(returns, 0), np.nanstd(returns, 0)
        ax.plot(steps, mean, label=label)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
    ax.set(xlabel="env steps", ylabel="episode return", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def numerical_failures(metrics: Metrics) -> list[str]:
    """What a user must not miss: the first update whose metrics went non-finite (an error), or
    else a line search that accepted no step over the last 10% of updates (a warning). Metrics
    are [runs, updates]."""
    failures = []
    bad = {name: np.flatnonzero((~np.isfinite(np.asarray(v, np.float64))).any(0))
           for name, v in metrics._asdict().items()}
    bad = {name: updates[0] for name, updates in bad.items() if updates.size}
    if bad:
        name = min(bad, key=bad.get)
        others = f" (then {', '.join(sorted(set(bad) - {name}))})" if len(bad) > 1 else ""
        return [f"error: {name} went non-finite at update {bad[name] + 1}{others}; the "
                "parameters after it are not usable"]
    accepted = np.asarray(metrics.line_search_accepted)
    if accepted[:, -max(1, accepted.shape[1] // 10):].max() == 0:
        failures.append("warning: the line search accepted no step in the last 10% of updates: "
                        "the trust region is too large for the policy (lower --max_kl or "
                        "--init_log_std)")
    return failures


def host_copy(tree: Any) -> Any:
    """numpy copies of (possibly sharded, possibly multi-process) arrays, on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def catch_stop_signals(received: list[int]) -> dict:
    """The first SIGINT or SIGTERM is appended to `received` (training stops after its current
    chunk); a second SIGINT then ends the process at once. Returns the previous handlers."""
    def handler(signum, frame):
        received.append(signum)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def train_runs(config: Config, args: argparse.Namespace,
               resumed: Checkpoint | None) -> tuple[Checkpoint, int, str | None, Any]:
    """The [values, seeds] runs as a host loop over jitted chunks of updates, each about 2 s and
    ending at every --checkpoint_every multiple (written to --save). A SIGINT or SIGTERM stops it
    after the current chunk, and so does a non-finite number. Returns the run as a Checkpoint of
    host arrays (the last finite state), the signal that stopped it (0 if none), the line that
    names the first non-finite metric (None if none) and the metrics that held it. The numbers
    do not depend on where the chunks end."""
    field, values, seeds = args.sweep_field, args.sweep_values, args.seeds
    updates = num_updates(config)
    every = args.checkpoint_every or updates
    clock, received = [time.perf_counter(), 0], []
    handlers = catch_stop_signals(received)
    progress = None if args.quiet else make_progress_printer(config, len(values) * seeds, clock)
    parts = lambda v: make_train_parts(dataclasses.replace(config, **{field: v}), progress,
                                       args.devices)
    init = jax.jit(jax.vmap(jax.vmap(lambda v, k: parts(v)[0](k), (None, 0)), (0, None)))
    run = jax.jit(jax.vmap(jax.vmap(lambda v, *a: parts(v)[1](*a), (None, 0, 0, None, None)),
                           (0, 0, 0, None, None)))
    vals = jnp.asarray(values, jnp.float32)
    finite = jax.jit(lambda tree: jnp.all(jnp.array([jnp.isfinite(x).all()
                                                     for x in jax.tree.leaves(tree)])))
    chunk, failure, seen, stopped = 1, None, None, 0

    def prepare():
        if resumed is None:
            keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
            state, metrics, done = *init(vals, keys), 0
        else:
            state, metrics, done = resumed.state, resumed.metrics, resumed.updates_done
        compiled = run.lower(vals, state, metrics, np.int32(0), np.int32(0)).compile()
        finite((state.policy_params, state.critic.params, metrics))  # compiled before the clock
        return state, metrics, done, compiled

    try:
        with ThreadPoolExecutor(1) as pool:  # the main thread stays free to take signals
            def in_worker(fn: Callable, *a: Any) -> Any:
                future = pool.submit(fn, *a)
                while not wait_futures([future], timeout=0.1).done:
                    pass  # signals are handled while the main thread waits here
                return future.result()

            state, metrics, done, compiled = in_worker(prepare)
            compile_time, first = time.perf_counter() - clock[0], done
            clock[:] = [time.perf_counter(), done * config.num_envs * config.num_steps]
            while done < updates:
                stop = min(updates, done + chunk, (done // every + 1) * every)
                signum = received[0] if received else 0
                if jax.process_count() > 1:  # every process stops where process 0 stops
                    from jax.experimental import multihost_utils
                    stop, signum = multihost_utils.broadcast_one_to_all(np.array([stop, signum]))
                if signum:
                    stopped = int(signum)
                    break
                began = time.perf_counter()
                good, (state, metrics) = (state, metrics), in_worker(
                    lambda *a: jax.block_until_ready(compiled(*a)), vals, state, metrics,
                    np.int32(done), np.int32(stop))
                if not finite((state.policy_params, state.critic.params, metrics)):
                    seen = host_copy(metrics)  # keep the last finite state, report the first NaN
                    flat = jax.tree.map(lambda x: x.reshape(-1, x.shape[2])[:, :int(stop)], seen)
                    bad = np.flatnonzero(~np.isfinite(np.stack(flat, dtype=float)).all((0, 1)))
                    failure = (numerical_failures(flat)[0].split(";")[0] if bad.size else
                               f"error: the parameters went non-finite by update {stop}")
                    failure += (f"; training stopped, the checkpoint keeps the state after "
                                f"update {done}")
                    seen = jax.tree.map(lambda x: x[:, :, :bad[0] + 1 if bad.size else stop],
                                        seen)
                    state, metrics = good
                    break
                seconds = max(time.perf_counter() - began, 1e-3)
                chunk = max(1, min(4 * (stop - done), round(2.0 * (stop - done) / seconds)))
                done = int(stop)
                if args.checkpoint_every and done % every == 0 and done < updates:
                    ckpt = Checkpoint(config, field, values, seeds, done,
                                      *host_copy((state, metrics)))  # on every process
                    try:
                        if args.save:
                            save_checkpoint(args.save, ckpt)
                    except OSError as error:
                        say(f"trpo.py: error: --checkpoint_every: cannot write {args.save} "
                            f"({error.strerror}); training goes on", file=sys.stderr)
            run_time = time.perf_counter() - clock[0]
            ckpt = Checkpoint(config, field, values, seeds, done, *host_copy((state, metrics)))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    steps = (done - first) * len(values) * seeds * config.num_envs * config.num_steps
    say(f"compile {compile_time:.1f} s, run {run_time:.1f} s ({steps / run_time:,.0f} steps/s)")
    return ckpt, stopped, failure, seen


def say(*parts: Any, file: Any = None) -> None:
    """print and flush; a closed stdout (| head) silences the rest of the run instead of ending
    it, and characters the terminal cannot encode are replaced."""
    file = file or sys.stdout
    try:
        print(*parts, file=file, flush=True)
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), file.fileno())


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="replace")
    try:
        config, args = parse_cli(argv)
        loaded = load_checkpoint(args.load or args.resume, args.architecture) if (
            args.load or args.resume) else None
        if args.resume:
            config = loaded.config
            args.sweep_field, args.sweep_values, args.seeds = loaded[1:4]
            check_env_flags(config, args)
            if args.save is None:
                args.save = args.resume
    except ValueError as error:
        say(f"trpo.py: error: {' '.join(str(error).split())}", file=sys.stderr)  # one line
        return 2
    if not args.no_compile_cache:
        enable_compile_cache()
    if jax.process_index() > 0:  # every process trains; process 0 alone prints and writes
        sys.stdout = open(os.devnull, "w")
        args.save = args.metrics = args.plot = args.render = None
        args.eval = 0
    stopped, failure, seen = 0, None, None
    if args.load:
        ckpt, args.eval = loaded, args.eval or 10
    else:
        say(f"TRPO on {config.env_name}: {len(args.sweep_values)} value(s) x {args.seeds} "
            f"seed(s) x {num_updates(config)} updates x {config.num_envs * config.num_steps} "
            + (f"steps, resumed after update {loaded.updates_done}" if args.resume else "steps"))
        try:
            ckpt, stopped, failure, seen = train_runs(config, args,
                                                      loaded if args.resume else None)
            args.training_done.set()
            if jax.process_index() > 0:  # process 0 writes; its peers leave without a shutdown
                os._exit(128 + stopped if stopped else 0)  # handshake, which would fail once
                # process 0 has closed the service
        except (jax.errors.JaxRuntimeError, MemoryError) as error:
            if "memory" in str(error).lower() or isinstance(error, MemoryError):
                text = " ".join(str(error).split())
                detail = text[max(0, text.lower().find("out of memory")):][:60].rstrip(".")
                say(f"trpo.py: error: {detail}: {too_large(config, args)}", file=sys.stderr)
                return 2
            if jax.process_count() == 1:
                raise
            say(f"trpo.py: error: process {jax.process_index()} lost a peer: "
                f"{str(error).splitlines()[0]}", file=sys.stderr)
            os._exit(1)  # not sys.exit: jax.distributed's shutdown would wait for the lost peer
        if stopped and args.save is None:
            args.save = f"trpo-{config.env_name}-stopped.msgpack"
    code = write_outputs(ckpt, args, stopped, failure, seen)
    if jax.process_count() > 1:  # its peers left without the shutdown handshake, and at exit
        sys.stdout.flush()  # jax.distributed's shutdown can abort on that (SIGABRT after the
        sys.stderr.flush()  # outputs were written), so process 0 leaves the same way
        os._exit(code)
    return code


def too_large(config: Config, args: argparse.Namespace) -> str:
    """Which flags made a run that does not fit: the weights or the batch, times the runs."""
    sizes, runs = config.hidden_sizes, len(args.sweep_values) * args.seeds
    weights = sum(a * b for a, b in zip(sizes, sizes[1:])) + 64 * sizes[0]
    batch = config.num_envs * config.num_steps * 64
    flags = "--hidden_sizes" if 4 * weights > batch else "--num_envs and --num_steps"
    return (f"lower {flags}" + (f", or the {runs} runs (--seeds x sweep values)" if runs > 1
                                else ""))


def write_outputs(ckpt: Checkpoint, args: argparse.Namespace, stopped: int,
                  failure: str | None = None, seen: Any = None) -> int:
    """The checkpoint first, then the summary, eval, metrics, plot and GIF; each output that
    fails prints one line and the others still run. After a non-finite number (`failure`), the
    metrics `seen` up to it are written too. Returns the exit code: 128 + the signal that
    stopped training, else 2 if an output or the numbers failed, else 0."""
    config, field, values, seeds, done = ckpt[:5]
    flat = lambda tree: jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)
    policies, stats = flat((ckpt.state.policy_params, ckpt.state.obs_stats))
    failures = [failure] if failure else []
    metrics = None if args.load else flat(
        jax.tree.map(lambda x: x[:, :, :done], ckpt.metrics) if seen is None else seen)
    trained = metrics is not None and metrics.kl.shape[1] > 0
    sweep = len(values) > 1 or field != "max_kl" or bool(getattr(args, "sweep", None))
    labels = [f"{field}={v:g}" if sweep else "" for v in values]
    runs = [{**({field: v} if sweep else {}), "seed": config.seed, "seed_index": s}
            for v in values for s in range(seeds)]
    errors = []

    def output(flag: str, write: Callable) -> None:
        try:
            write()
        except Exception as error:
            errors.append(flag)
            say(f"trpo.py: error: {flag} failed: {type(error).__name__}: "
                f"{' '.join(str(error).split())[:300]}", file=sys.stderr)

    if args.save:
        output("--save", lambda: save_checkpoint(args.save, ckpt))
        if "--save" not in errors:
            say(f"saved the checkpoint (after update {done}) to {args.save}")
    if stopped:
        name = signal.Signals(stopped).name
        say(f"trpo.py: stopped by {name} after update {done} of {num_updates(config)}; "
            + (f"continue with --resume {args.save}" if "--save" not in errors else
               "the checkpoint could not be written"), file=sys.stderr)
    if not failure and trained and not stopped:
        failures = numerical_failures(metrics)
    for i, label in enumerate(labels if trained else []):
        final = np.asarray(metrics.episode_return)[i * seeds:(i + 1) * seeds, -1]
        say(f"{label + ': ' if label else ''}final training return {final.mean():.1f} ± "
            f"{final.std():.1f} over {seeds} seed(s) [{', '.join(f'{r:.1f}' for r in final)}]")
    if trained:
        say(f"line-search acceptance {float(np.mean(metrics.line_search_accepted)):.2f}")
    for failure in failures:
        say(f"trpo.py: {failure}", file=sys.stderr)

    def evaluate_all():
        returns = evaluate_seeds(config, policies, stats, args.eval)
        for i, label in enumerate(labels):
            per_seed = returns[i * seeds:(i + 1) * seeds]
            for s, r in enumerate(per_seed):
                runs[i * seeds + s]["eval_return"] = float(r)
            say(f"eval{' ' + label if label else ''}: {args.eval} deterministic episodes per "
                f"seed on {config.env_name}, {seeds} seed(s) "
                f"[{', '.join(f'{r:.1f}' for r in per_seed)}]: "
                f"{format_summary(summarize_seeds(per_seed, SOLVED.get(config.env_name)))}")

    def plot():
        label = lambda i: labels[i] or f"trpo.py ({seeds} seeds)"
        plot_curves(args.plot, {label(i): jax.tree.map(lambda x: x[i * seeds:(i + 1) * seeds],
                                                       metrics) for i in range(len(values))},
                    config.env_name)

    def render():
        length = render_gif(args.render, config, *jax.tree.map(lambda x: x[0], (policies, stats)))
        say(f"rendered a {length}-step deterministic episode to {args.render}")

    if args.eval:
        output("--eval", evaluate_all)
    if args.metrics and trained:
        output("--metrics", lambda: write_metrics(args.metrics, metrics, runs))
    if args.plot and trained:
        output("--plot", plot)
    if args.render:
        output("--render", render)
    if stopped:
        return 128 + stopped
    return 2 if errors or any(f.startswith("error") for f in failures) else 0


def script() -> None:
    """`python trpo.py`: main's exit code; Ctrl-C outside training (which stops cleanly) and
    outside the checkpoint write is one line, exit 130."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say("trpo.py: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    script()
