"""One purification, many certificates: a grid of configurations against separate runs.

For each grid, in one process: FLOPs per noise sample (``FlopCounterMode`` on a meta-device copy:
shapes only), purifier and classifier evaluations per noise sample, and (shipped models only) the
wall time of certifying the same images with the same seed as one grid and as separate runs, with
a check that every configuration's rows are identical.

    OMP_NUM_THREADS=1 python benchmarks/grid.py [--images 3 --n0 20 --n 100 --batch 120] [--write]

Grids: (a) the demo's trio DDS + DiffSmooth soft + hard (m = 5) on the shipped Fashion-MNIST
models; (b) the ablation m in {1, 3, 5, 10} x vote {soft, hard} x local sigma {0.12, 0.25} + DDS
on the shipped models; (c) FLOPs only, CIFAR-10 (improved preset + cifar_resnet110) and ImageNet
(guided preset at 224 + beit_large_patch16_224) with the trio, random weights.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from diffsmooth.cost import forward_flops
from diffsmooth.defenses import DenoisedSmoothing, DiffSmooth, Grid
from diffsmooth.methods import MethodSpec, build_base, build_grid
from diffsmooth.sampling import generator_for
from diffsmooth.smoothing import SmoothedClassifier

SIGMA = 0.5


def evaluations(grid: Grid, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(purifier calls separate, grid; classifier calls separate, grid) per noise sample."""
    calls = {"purifier": 0, "classifier": 0}
    hooks = []
    seen: set[int] = set()
    for member in grid.members:
        for name, module in (("purifier", getattr(member, "denoiser", None)), ("classifier", member.classifier)):
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                hooks.append(module.register_forward_hook(
                    lambda *a, key=name: calls.__setitem__(key, calls[key] + 1)))
    x = torch.rand(1, *shape)
    with torch.inference_mode():
        grid(x)
        together = dict(calls)
        for key in calls:
            calls[key] = 0
        for member in grid.members:
            member(x)
    for hook in hooks:
        hook.remove()
    return calls["purifier"], together["purifier"], calls["classifier"], together["classifier"]


def shipped_grid(name: str) -> list[MethodSpec]:
    common = dict(dataset="fashion-mnist", sigma=SIGMA)
    dds = MethodSpec("dds", **common)
    if name == "trio":
        return [dds, MethodSpec("diffsmooth", m=5, local_sigma=0.25, **common),
                MethodSpec("diffsmooth", m=5, local_sigma=0.25, vote="hard", **common)]
    from diffsmooth import shipped

    specs = [dds]
    for local_sigma in (0.12, 0.25):
        # No Gaussian 0.12 classifier ships yet: the 0.25 one stands in (same FLOPs).
        classifier = str(shipped.shipped_classifier("gaussian", 0.25))
        for m in (1, 3, 5, 10):
            for vote in ("soft", "hard"):
                specs.append(MethodSpec("diffsmooth", classifier=classifier, m=m, local_sigma=local_sigma, vote=vote,
                                        **common))
    return specs


def wall_time(specs: list[MethodSpec], args: argparse.Namespace) -> tuple[float, float, bool]:
    """Seconds to certify the same images as separate runs and as one grid; whether rows agree."""
    from diffsmooth.data import load_dataset

    dataset = load_dataset("fashion-mnist", split="test")
    xs = torch.stack([dataset[i][0] for i in range(args.images)])

    def gens():
        return [generator_for(0, i, "cpu") for i in range(args.images)]

    separate_s, grid_s = [], []
    bases = [SmoothedClassifier(build_base(spec), 10, SIGMA) for spec in specs]
    together = SmoothedClassifier(build_grid(specs), 10, SIGMA)
    # Alternate the two, best of args.repeats each: the shared machine's load drifts.
    for _ in range(args.repeats):
        start = time.perf_counter()
        alone = [smoothed.certify_batch(xs, args.n0, args.n, 0.001, args.batch, gens()) for smoothed in bases]
        separate_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        grid = together.certify_grid_batch(xs, args.n0, args.n, 0.001, args.batch, gens())
        grid_s.append(time.perf_counter() - start)
    same = all(grid[i][k] == alone[k][i] for k in range(len(specs)) for i in range(args.images))
    return min(separate_s), min(grid_s), same


def reference_trio(preset: str, classifier: str, image: int) -> tuple[Grid, tuple[int, ...]]:
    from diffsmooth.classifiers import create_classifier
    from diffsmooth.diffusion import OneShotDenoiser
    from diffsmooth.diffusion.presets import build_preset

    with torch.device("meta"):
        denoiser = OneShotDenoiser(build_preset(preset), SIGMA)
        f_clean = create_classifier(classifier)
        f_local = create_classifier(classifier)
    members = [DenoisedSmoothing(denoiser, f_clean), DiffSmooth(denoiser, f_local, m=5, local_sigma=0.25),
               DiffSmooth(denoiser, f_local, m=5, local_sigma=0.25, vote="hard")]
    return Grid(members), (3, image, image)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--n0", type=int, default=20)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--batch", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best of each is kept")
    parser.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    lines = [f"### Grid vs separate runs ({time.strftime('%Y-%m-%d')}, {platform.processor() or 'cpu'}, "
             f"OMP_NUM_THREADS={threads}, torch {torch.__version__})", "",
             f"Command: `OMP_NUM_THREADS={threads} python benchmarks/grid.py " + " ".join(sys.argv[1:]) + "`; "
             f"wall time: {args.images} Fashion-MNIST test images, n0 = {args.n0}, n = {args.n}, batch {args.batch}, "
             f"sigma = {SIGMA}, the same seed for both, model loading excluded, best of {args.repeats} alternating "
             "repeats; rows identical = every configuration's certificates equal.", "",
             "| grid | configs | purifier evals / sample (sep -> grid) | classifier evals / sample (sep -> grid) | "
             "MFLOP / sample (sep -> grid) | FLOP ratio | wall s (sep -> grid) | wall ratio | rows identical |",
             "|---|---:|---|---|---|---:|---|---:|---|"]
    for name, label in (("trio", "(a) demo trio DDS + soft + hard, m = 5"),
                        ("ablation", "(b) m {1,3,5,10} x vote x local sigma {0.12,0.25} + DDS")):
        specs = shipped_grid(name)
        grid = build_grid(specs)
        shape = (1, 28, 28)
        p_sep, p_grid, c_sep, c_grid = evaluations(grid, shape)
        f_sep = sum(forward_flops(build_base(spec), shape) for spec in specs) / 1e6
        f_grid = forward_flops(grid, shape) / 1e6
        sep_s, grid_s, same = wall_time(specs, args)
        lines.append(f"| {label} | {len(specs)} | {p_sep} -> {p_grid} | {c_sep} -> {c_grid} | {f_sep:.0f} -> "
                     f"{f_grid:.0f} | {f_sep / f_grid:.2f}x | {sep_s:.1f} -> {grid_s:.1f} | {sep_s / grid_s:.2f}x | "
                     f"{'yes' if same else 'NO'} |")
        print(lines[-1], flush=True)
    for label, preset, classifier, image in (
            ("(c) CIFAR-10 trio: improved preset + cifar_resnet110", "improved-cifar10-uncond", "cifar_resnet110", 32),
            ("(c) ImageNet trio: guided preset at 224 + beit_large", "guided-imagenet256-uncond",
             "beit_large_patch16_224", 224)):
        grid, shape = reference_trio(preset, classifier, image)
        f_grid = forward_flops(grid, shape) / 1e6
        f_sep = sum(forward_flops(member, shape) for member in grid.members) / 1e6
        lines.append(f"| {label} | 3 | 3 -> 1 | 11 -> 6 | {f_sep:.0f} -> {f_grid:.0f} | {f_sep / f_grid:.2f}x | "
                     "(FLOPs only) | | |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        path = Path(__file__).parent / "RESULTS.md"
        path.write_text(path.read_text().rstrip() + "\n\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
