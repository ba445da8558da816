"""The model card's sigma-0.5 radius table with sequential sampling at n_max 10,000, against fixed n.

Issue #29's target: the card's sigma-0.5 grid (RS, DDS, DiffSmooth m 5 local sigma 0.25 soft and
hard, shipped models) as a radius table r = 0, 0.25, ..., 1.25 with ``--sampling sequential
--n-max 10000`` on the first --images test images in <= 60 minutes on the machine's cores, its
certified accuracies within 1 point of fixed n = 10,000 on the first --subset images.

Two runs of ``diffsmooth certify`` (n0 100, alpha 0.001, seed 0, batch 1000: the card's settings),
each a grid from one purification per noisy batch, under torchrun with --procs processes of one
thread each (OMP_WAIT_POLICY=PASSIVE):

  seq    sequential, n_max --n-max, the table's radii, --images images       -> OUT/seq
  fixed  fixed n = --n-max on the first --subset images                      -> OUT/fixed

Both resume (rerun the same command; the wall seconds of every invocation add up in
OUT/timing.json, written every 30 s); ``--part seq`` or ``--part fixed`` runs one of them (sessions
of limited length). ``--precision bfloat16`` runs the sequential part in bfloat16 autocast (into
OUT/seq_bfloat16, with its own time) and compares it with the same float32 fixed run. Then it
prints, per configuration and radius, the certified accuracy of both on the subset and their
difference, the largest difference, the samples per image and the wall time of each run against
the target.

    .venv/bin/python benchmarks/card_nmax.py --out /tmp/nmax                       # the issue's sizes
    .venv/bin/python benchmarks/card_nmax.py --out /tmp/nmax-smoke --images 4 --subset 2 --n-max 300
    .venv/bin/python benchmarks/card_nmax.py --out /tmp/nmax-pairings --pairings   # with the robust pairings
    .venv/bin/python benchmarks/card_nmax.py --out /tmp/nmax-pairings --pairings --precision bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from diffsmooth.analysis import certified_accuracy
from diffsmooth.results import read_index, read_results

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIGMA = 0.5
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
GRID = ["--method", "rs", "dds", "diffsmooth", "--local-m", "5", "--local-sigma", "0.25", "--vote", "soft", "hard"]
PAIRINGS = ["--method", "rs", "dds", "diffsmooth", "--local-m", "5", "--vote", "soft", "hard",
            "--rs-classifier", *(f"fmnist_cnn_{t}_0.50" for t in ("gaussian", "consistency", "smoothadv", "smoothmix")),
            "--local-classifier", *(f"0.25=fmnist_cnn_{t}_0.25" for t in ("gaussian", "consistency", "smoothadv"))]
"""The grid with the robust pairings (``--pairings``): RS with every shipped sigma-0.5 training, DDS, and
DiffSmooth with the Gaussian, Consistency and SmoothAdv local classifiers, soft and hard."""


def certify(out: Path, procs: int, grid: list[str], extra: list[str], tick: Callable[[float], None]) -> None:
    """Run one grid under torchrun (resuming); ``tick(seconds so far)`` every 30 s and at the end, so
    that a run killed with its session still leaves its time."""
    bindir = Path(sys.executable).parent
    cmd = [str(bindir / "torchrun"), "--standalone", "--nproc-per-node", str(procs), "-m", "diffsmooth", "certify",
           "--device", "cpu", "--dataset", "fashion-mnist", "--sigma", str(SIGMA), *grid, "--n0", "100",
           "--alpha", "0.001", "--batch", "1000", "--seed", "0", "--resume", "--quiet", "--out-dir", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    while True:
        try:
            code = proc.wait(timeout=30)
            break
        except subprocess.TimeoutExpired:
            tick(time.perf_counter() - start)
    tick(time.perf_counter() - start)
    if code != 0:
        raise SystemExit(f"certify into {out} failed (exit {code}); rerun to resume")


def rows_by_label(folder: Path) -> dict[str, list]:
    """Each configuration's rows: label -> rows."""
    return {entry["label"]: read_results(entry["path"]).rows for entry in read_index(folder)}


def samples(rows: list, fixed_n: int) -> float:
    """Mean estimation samples per image: the sequential rows' ``samples`` column, else the fixed n."""
    if not rows or "samples" not in dict(rows[0].extra):
        return float(fixed_n)
    return sum(int(dict(r.extra)["samples"]) for r in rows) / len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for both runs (resumable)")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--subset", type=int, default=100)
    parser.add_argument("--n-max", type=int, default=10000)
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--target-minutes", type=float, default=60.0)
    parser.add_argument("--part", choices=["seq", "fixed", "both"], default="both",
                        help="run only one of the two runs (the table needs both finished)")
    parser.add_argument("--pairings", action="store_true",
                        help="the grid with the robust pairings (RS x 4 trainings, DDS, DiffSmooth x 3 local "
                             "classifiers x soft/hard) instead of RS, DDS, DiffSmooth soft and hard")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                        help="precision of the sequential run (the fixed run, the reference, stays float32)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    timing_path = args.out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    radii = [f"{r:g}" for r in RADII]
    float32 = args.precision == "float32"
    seq_name = "seq" if float32 else f"seq_{args.precision}"
    runs = {  # part -> (folder and timing key, certify options)
        "seq": (seq_name, ["--sampling", "sequential", "--n-max", str(args.n_max), "--radii", *radii,
                           "--max-images", str(args.images), *([] if float32 else ["--precision", args.precision])]),
        "fixed": ("fixed", ["--num-samples", str(args.n_max), "--max-images", str(args.subset)]),
    }
    for part, (name, extra) in runs.items():
        if timing.get(f"{name} finished") == extra:
            continue  # resuming a finished run would only add its start-up to the time
        if args.part in (part, "both"):
            before = timing.get(name, 0.0)

            def tick(seconds: float, name: str = name, before: float = before) -> None:
                timing[name] = before + seconds
                timing_path.write_text(json.dumps(timing, indent=2) + "\n")

            certify(args.out / name, args.procs, PAIRINGS if args.pairings else GRID, extra, tick)
            timing[f"{name} finished"] = extra
            timing_path.write_text(json.dumps(timing, indent=2) + "\n")
    if not all(timing.get(f"{name} finished") == extra for name, extra in runs.values()):
        print(f"{args.part} done; the table needs both runs: rerun with --part both (finished runs only resume)")
        return 0
    seq_all, fixed = rows_by_label(args.out / seq_name), rows_by_label(args.out / "fixed")
    seq = {label: [r for r in rows if r.idx < args.subset] for label, rows in seq_all.items()}
    print(f"sigma {SIGMA}, n0 100, alpha 0.001, seed 0; sequential n_max {args.n_max} ({args.precision}) on "
          f"{args.images} images vs fixed n {args.n_max} (float32) on the first {args.subset}; "
          f"torchrun {args.procs} processes x 1 thread, "
          f"OMP_WAIT_POLICY=PASSIVE; {os.cpu_count()} CPUs\n")
    print("| configuration | " + " | ".join(f"r={r:g} seq / fixed" for r in RADII)
          + " | samples/img seq | samples/img fixed |")
    print("|---|" + "---:|" * (len(RADII) + 2))
    worst = 0.0
    for label, fixed_rows in fixed.items():
        seq_rows = seq[label]
        if [r.idx for r in seq_rows] != [r.idx for r in fixed_rows]:
            raise SystemExit(f"{label}: the runs hold different images; let both finish")
        cells = []
        for r in RADII:
            a, b = 100 * certified_accuracy(seq_rows, r), 100 * certified_accuracy(fixed_rows, r)
            worst = max(worst, abs(a - b))
            cells.append(f"{a:.1f} / {b:.1f}")
        used = " | ".join(f"{samples(rows, args.n_max):.0f}" for rows in (seq_rows, fixed_rows))
        print(f"| {label} | " + " | ".join(cells) + f" | {used} |")
    minutes = timing[seq_name] / 60
    images = len(next(iter(seq_all.values())))
    print(f"\nlargest |sequential - fixed| on the subset: {worst:.1f} points (target <= 1.0: "
          f"{'met' if worst <= 1.0 else 'missed'})")
    print(f"sequential run: {images} images in {minutes:.1f} min (target <= {args.target_minutes:g}: "
          f"{'met' if minutes <= args.target_minutes else 'missed'}); fixed run: {timing['fixed'] / 60:.1f} min "
          f"for {args.subset} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
