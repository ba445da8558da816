"""What ``runtime.configure_cpu`` buys a certify on a shared CPU: page faults, wall time, and wall
time beside another torch job, with the CPU defaults off and on, side by side in one run.

Each configuration runs ``diffsmooth certify`` (DiffSmooth, sigma 0.5, n0 32, n 500, the first
--images test images, shipped models) in a fresh process with nothing set in the environment but
``DIFFSMOOTH_CPU_DEFAULTS`` (0: off), alone and beside a competing job: another process running
2-thread float32 matmuls with OpenMP's default (spinning) waits, as a laptop's or a shared node's
other work does.  Reported: wall seconds (best of --repeats), CPU seconds (user + system) and
minor page faults per noise sample of the certify process, and the ratios.

    OMP_NUM_THREADS= .venv/bin/python benchmarks/cpu_runtime.py --images 4 --repeats 2
    ... cpu_runtime.py --variant spin10k=GOMP_SPINCOUNT=10000 --variant 1thread=OMP_NUM_THREADS=1

``--variant LABEL=VAR=VALUE[,VAR=VALUE]``: another row pair, defaults on plus those variables (what a
user could set; ``configure_cpu`` leaves a variable the user set alone).  ``--options LABEL='--opt
value'``: another row pair with those certify options (``--options workers1='--cpu-workers 1'``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOAD = """
import torch
torch.set_num_threads(2)
a = torch.randn(384, 384)
while True:
    a = torch.tanh(a @ a / 384)
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GLIBC_TUNABLES", "MKL_NUM_THREADS")}
    return {**env, **extra}


def certify(images: int, env: dict[str, str], out: Path, extra: list[str]) -> tuple[float, float, int]:
    """(wall s, CPU s, minor faults) of one certify process with ``env`` on top of a clean environment
    and the command-line options ``extra``."""
    args = ["certify", "--method", "diffsmooth", "--sigma", "0.5", "--n0", "32", "--n", "500", "--max-images",
            str(images), "--device", "cpu", "--quiet", "--overwrite", "--out", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "diffsmooth", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=clean_env(**env))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"certify failed: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_minflt


def variant(text: str) -> tuple[str, tuple[dict[str, str], list[str]]]:
    """``LABEL=VAR=VALUE[,VAR=VALUE]`` -> (LABEL, ({VAR: VALUE}, [])) with the CPU defaults on."""
    label, _, assignments = text.partition("=")
    pairs = [a.partition("=") for a in assignments.split(",")]
    if not label or not assignments or any(not var or not eq for var, eq, _ in pairs):
        raise argparse.ArgumentTypeError(f"--variant {text!r}: write LABEL=VAR=VALUE[,VAR=VALUE]")
    return label, ({"DIFFSMOOTH_CPU_DEFAULTS": "1", **{var: value for var, _, value in pairs}}, [])


def option_variant(text: str) -> tuple[str, tuple[dict[str, str], list[str]]]:
    """``LABEL=OPTIONS`` (certify options, space-separated) -> (LABEL, ({}, OPTIONS)) with the CPU defaults on."""
    label, _, options = text.partition("=")
    if not label or not options.strip():
        raise argparse.ArgumentTypeError(f"--options {text!r}: write LABEL='--option value ...'")
    return label, ({"DIFFSMOOTH_CPU_DEFAULTS": "1"}, options.split())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variant", type=variant, action="append", default=[],
                        help="LABEL=VAR=VALUE[,VAR=VALUE]: another configuration (defaults on plus these)")
    parser.add_argument("--options", type=option_variant, action="append", default=[],
                        help="LABEL='--option value ...': another configuration (defaults on, these certify options)")
    args = parser.parse_args()
    samples = args.images * (32 + 500)
    configs = {"off": ({"DIFFSMOOTH_CPU_DEFAULTS": "0"}, []), "on": ({"DIFFSMOOTH_CPU_DEFAULTS": "1"}, []),
               **dict(args.variant), **dict(args.options)}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.tsv"
        for loaded in (False, True):
            load = subprocess.Popen([sys.executable, "-c", LOAD], env=clean_env()) if loaded else None
            try:
                time.sleep(3 if loaded else 0)  # let the load reach its loop
                for name, (env, extra) in configs.items():
                    runs = [certify(args.images, env, out, extra) for _ in range(args.repeats)]
                    rows[(name, loaded)] = min(runs)
            finally:
                if load is not None:
                    load.kill()
                    load.wait()
    print(f"certify DiffSmooth sigma 0.5, n0 32, n 500, {args.images} images ({samples} noise samples), "
          f"best of {args.repeats}; nothing set in the environment but DIFFSMOOTH_CPU_DEFAULTS and a variant's "
          f"variables; {os.cpu_count()} CPUs; load: a 2-thread spinning torch matmul job\n")
    print("| configuration | load | wall s | CPU s | CPU s / wall s | minor faults / sample | wall / idle wall |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (env, options) in configs.items():
        for loaded in (False, True):
            wall, cpu, faults = rows[(name, loaded)]
            parts = [f"{k}={v}" for k, v in env.items() if k != "DIFFSMOOTH_CPU_DEFAULTS"]
            extra = ", ".join(parts + ([" ".join(options)] if options else []))
            label = f"{name} ({extra})" if extra else f"defaults {name}"
            print(f"| {label} | {'beside load' if loaded else 'idle'} | {wall:.2f} | {cpu:.2f} | {cpu / wall:.2f} | "
                  f"{faults / samples:.0f} | {wall / rows[(name, False)][0]:.2f} |")
    off, on = rows[("off", False)][0], rows[("on", False)][0]
    print(f"\nidle: defaults on are {off / on:.2f}x faster than off; beside load: "
          f"{rows[('off', True)][0] / rows[('on', True)][0]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
