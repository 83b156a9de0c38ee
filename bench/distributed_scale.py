"""Steps/s of 64 CartPole seeds through `python trpo.py`, one layout after another in one run:
1, 2 and 4 forced CPU devices in one process, then 2 processes x 2 devices (--distributed on
loopback). Each layout runs in fresh processes with an empty compile cache; the figure is the
"run" time that trpo.py prints (compile excluded), from process 0.

    python bench/distributed_scale.py                       # 64 seeds x 51,200 steps
    python bench/distributed_scale.py --seeds 16 --steps 10240
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(flags: list[str], devices: int, **env: str) -> subprocess.Popen:
    cache = tempfile.mkdtemp()
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "trpo.py"), *flags, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={
                                **os.environ, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": cache,
                                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                                **env})


def run_time(procs: list[subprocess.Popen]) -> tuple[float, float, float]:
    """(compile s, run s, steps/s) from process 0's last line; every process must exit 0."""
    outputs = [p.communicate(timeout=1800) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        if p.returncode:
            sys.exit(f"a run failed: {err[-2000:]}")
    found = re.search(r"compile ([\d.]+) s, run ([\d.]+) s \(([\d,]+) steps/s\)", outputs[0][0])
    return float(found[1]), float(found[2]), float(found[3].replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--steps", type=int, default=51_200)
    args = parser.parse_args()
    flags = ["--seeds", str(args.seeds), "--total_timesteps", str(args.steps)]
    print(f"{args.seeds} CartPole-v1 seeds x {args.steps} steps, {os.cpu_count()} CPU cores")
    print("| layout | compile s | run s | steps/s |\n|---|---:|---:|---:|")
    for devices in (1, 2, 4):
        timing = run_time([launch(flags, devices)])
        print(f"| 1 process x {devices} device(s) | {timing[0]:.1f} | {timing[1]:.1f} | "
              f"{timing[2]:,.0f} |", flush=True)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        address = f"localhost:{s.getsockname()[1]}"
    timing = run_time([launch([*flags, "--distributed", f"2,{i}"], 2,
                              JAX_COORDINATOR_ADDRESS=address) for i in (0, 1)])
    print(f"| 2 processes x 2 devices | {timing[0]:.1f} | {timing[1]:.1f} | {timing[2]:,.0f} |")


if __name__ == "__main__":
    main()
