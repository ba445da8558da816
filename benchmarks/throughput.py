"""Certification throughput: the reference code's sampling loop against diffsmooth's fast path.

For each configuration (a DiffSmooth base: one-shot purifier + locally smoothed classifier,
m = 5 local copies, soft vote, fixed local noise) this times

  (a) ``reference``: what the DiffSmooth / DDS reference code does per batch: float32,
      ``x.repeat(b)`` + noise, purify, the m classifier calls in a Python loop, softmax
      average, labels copied to the host and counted there (a synchronisation per batch);
      at batch 50 (the reference default) and 1000;
  (b) ``fast``: ``SmoothedClassifier.sample_counts`` on ``accelerate(DiffSmooth(...))``: the m
      copies in one call, noise drawn and counts kept on the device, padded static batches,
      and the variant's precision / channels-last / CUDA graphs / torch.compile;

and prints noise samples/s, projected seconds per certified image ((n0 + n) / rate),
achieved TFLOP/s and its share of a bf16 matmul peak measured in the same run, and peak
memory.  An agreement check runs both paths' base classifier on the same noisy inputs and
reports the share of equal labels (with the most common label's share, so that a constant
random model cannot pass unnoticed).  Results are written to a table in RESULTS.md under a
heading naming the device; a later run on the same device replaces that section.

    python benchmarks/throughput.py                      # all configs that fit the device
    python benchmarks/throughput.py --configs fmnist --device cpu --seconds 5
    python benchmarks/throughput.py --configs cifar10,imagenet --device cuda

Random weights are used for the reference configurations (throughput does not depend on the
weights); Fashion-MNIST uses the shipped models when they are installed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffsmooth.classifiers import create_classifier, load_classifier
from diffsmooth.cost import forward_flops
from diffsmooth.defenses import DiffSmooth
from diffsmooth.diffusion import OneShotDenoiser, load_diffusion_model
from diffsmooth.diffusion.adm import adm_unet
from diffsmooth.diffusion.presets import DiffusionModel, build_preset
from diffsmooth.diffusion.schedules import NoiseSchedule
from diffsmooth.fast import accelerate, auto_batch_size
from diffsmooth.smoothing import SmoothedClassifier

HERE = Path(__file__).resolve().parent
SIGMA = 0.25
LOCAL_SIGMA = 0.25
M = 5
N0 = 100


# -- configurations -------------------------------------------------------------------------


@dataclass
class Config:
    """One benchmark configuration: how to build its purifier and classifier, and its n."""

    name: str
    title: str
    build: Callable[[torch.device], tuple[DiffusionModel, nn.Module, str]]  # -> (diffusion, classifier, note)
    image_shape: tuple[int, int, int]
    num_classes: int
    n: int
    cpu_ok: bool  # runs by default on CPU
    cpu_batches: tuple[int, ...] = (4, 16)  # reference batches on CPU, where 50/1000 take minutes
    agreement_samples: dict[str, int] = field(default_factory=lambda: {"cuda": 512, "cpu": 32})


def _fmnist(device: torch.device) -> tuple[DiffusionModel, nn.Module, str]:
    """The shipped models where installed; each missing one replaced by random weights of its
    shipped configuration (scripts/train_shipped.sh)."""
    from diffsmooth import shipped
    from diffsmooth.validate import InputError

    notes = []
    try:
        diffusion = load_diffusion_model(shipped.shipped_diffusion())
        notes.append("shipped fmnist_ddpm")
    except InputError:
        unet = adm_unet("improved", image_size=28, in_channels=1, num_channels=32, channel_mult="1,2,2",
                        num_res_blocks=1, attention_resolutions="7", num_heads=1, dropout=0.0,
                        learn_sigma=False, use_scale_shift_norm=True)
        diffusion = DiffusionModel(unet.eval(), NoiseSchedule("cosine", 1000), True, 1, 28, "fmnist-random")
        notes.append("random fmnist_ddpm (not shipped yet)")
    try:
        classifier = load_classifier(shipped.shipped_classifier("gaussian", LOCAL_SIGMA))
        notes.append(f"shipped fmnist_cnn_gaussian_{LOCAL_SIGMA:.2f}")
    except InputError:
        classifier = create_classifier("fmnist_cnn")
        notes.append(f"random fmnist_cnn (fmnist_cnn_gaussian_{LOCAL_SIGMA:.2f} not shipped yet)")
    return diffusion, classifier, " + ".join(notes)


def _preset(preset: str, classifier: str) -> Callable[[torch.device], tuple[DiffusionModel, nn.Module, str]]:
    def build(device: torch.device) -> tuple[DiffusionModel, nn.Module, str]:
        return build_preset(preset), create_classifier(classifier), "random weights"

    return build


CONFIGS: dict[str, Config] = {
    "fmnist": Config("fmnist", "Fashion-MNIST: shipped DDPM (28x28) + fmnist_cnn", _fmnist, (1, 28, 28), 10,
                     100_000, cpu_ok=True, cpu_batches=(50, 1000),
                     agreement_samples={"cuda": 4096, "cpu": 1000}),
    "cifar10": Config("cifar10", "CIFAR-10: improved-cifar10-uncond + cifar_resnet110",
                      _preset("improved-cifar10-uncond", "cifar_resnet110"), (3, 32, 32), 10, 100_000, cpu_ok=True),
    "imagenet": Config("imagenet", "ImageNet: guided-imagenet256-uncond at 224 + beit_large_patch16_224",
                       _preset("guided-imagenet256-uncond", "beit_large_patch16_224"), (3, 224, 224), 1000,
                       10_000, cpu_ok=False, cpu_batches=(1, 2), agreement_samples={"cuda": 256, "cpu": 4}),
}

# Fast-path variants: keyword arguments of ``accelerate``.
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "fp32-cl": {"channels_last": True},
    "fp32-compile": {"compile": "default"},
    "bf16": {"precision": "bfloat16"},
    "bf16-cl": {"precision": "bfloat16", "channels_last": True},
    "bf16-cl-graphs": {"precision": "bfloat16", "channels_last": True, "cuda_graphs": True},
    "bf16-cl-compile": {"precision": "bfloat16", "channels_last": True, "compile": "default", "cuda_graphs": True},
    "bf16-cl-autotune": {"precision": "bfloat16", "channels_last": True, "compile": "max-autotune-no-cudagraphs",
                         "cuda_graphs": True},
    "fp16-cl-graphs": {"precision": "float16", "channels_last": True, "cuda_graphs": True},
}
DEFAULT_VARIANTS = {"cuda": ("bf16-cl", "bf16-cl-graphs", "bf16-cl-compile"), "cpu": ("fp32-cl", "fp32-compile")}


# -- measurement helpers ------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", text)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    return f"CPU {model}, {torch.get_num_threads()} threads"


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Dense matmul FLOP/s in ``dtype``: the ceiling a perfect implementation could reach."""
    size = 8192 if device.type == "cuda" else 1024
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while True:
        for _ in range(4):
            a @ b
        reps += 4
        _sync(device)
        if time.perf_counter() - start >= seconds:
            break
    return 2 * size**3 * reps / (time.perf_counter() - start)


class PeakMemory:
    """Peak device memory of a block (CUDA); on CPU the process's peak resident set so far."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: float = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.bytes = float(torch.cuda.max_memory_allocated(self.device))
        else:
            self.bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def timed(step: Callable[[], None], device: torch.device, seconds: float) -> tuple[float, int]:
    """Seconds per call of ``step`` after one warm-up call: calls are queued in groups sized
    from the warm-up so that the device is synchronised only at group ends."""
    start = time.perf_counter()
    step()  # warm-up: compilation, graph capture, cuDNN autotuning, lazy allocations
    _sync(device)
    first = time.perf_counter() - start
    group = max(1, min(50, int(seconds / max(first, 1e-3) / 2)))
    calls, start = 0, time.perf_counter()
    while True:
        for _ in range(group):
            step()
        calls += group
        _sync(device)
        if time.perf_counter() - start >= seconds:
            break
    return (time.perf_counter() - start) / calls, calls


# -- the two paths ------------------------------------------------------------------------------


def reference_labels(denoiser: nn.Module, classifier: nn.Module, local: Tensor, noisy: Tensor) -> Tensor:
    """The reference code's base classifier on a batch: float32, m calls in a loop, soft vote."""
    purified = denoiser(noisy)
    probs = F.softmax(classifier(purified + local[0]), dim=1)
    for j in range(1, local.shape[0]):
        probs = probs + F.softmax(classifier(purified + local[j]), dim=1)
    return probs.argmax(1)


def reference_step(denoiser: nn.Module, classifier: nn.Module, local: Tensor, x: Tensor, batch: int,
                   generator: torch.Generator, counts: list[int]) -> Callable[[], None]:
    """One batch of the reference sampling loop (``x`` (C, H, W)); counts land on the host."""

    def step() -> None:
        with torch.no_grad():
            repeated = x.repeat((batch, 1, 1, 1))
            noise = torch.randn(repeated.shape, generator=generator, device=x.device) * SIGMA
            labels = reference_labels(denoiser, classifier, local, repeated + noise)
            for label in labels.cpu().tolist():  # the reference counts on the host, in Python
                counts[label] += 1

    return step


def fast_step(smoothed: SmoothedClassifier, x: Tensor, batch: int, generator: torch.Generator) -> Callable[[], None]:
    """One full batch of ``SmoothedClassifier.sample_counts`` (counts stay on the device)."""

    def step() -> None:
        smoothed.sample_counts(x[None], batch, batch, [generator])

    return step


# -- one configuration --------------------------------------------------------------------------


def agreement_inputs(config: Config, device: torch.device, count: int, seed: int = 1) -> tuple[Tensor, str]:
    """``count`` noisy images (pixels + N(0, sigma^2)): real test images when the dataset is
    on this machine (Fashion-MNIST), else smooth random images."""
    g = torch.Generator().manual_seed(seed)
    clean, what = None, "smooth random images"
    if config.name == "fmnist":
        try:
            from diffsmooth.data import load_dataset

            data = load_dataset("fashion-mnist", "test")
            first = (seed - 1) * count  # another seed, other images
            clean = torch.stack([data[(first + i) % len(data)][0] for i in range(count)])
            what = "Fashion-MNIST test images"
        except Exception:  # noqa: BLE001  no data on this machine: random images do
            clean = None
    if clean is None:
        c, h, w = config.image_shape
        low = torch.rand((count, c, max(2, h // 8), max(2, w // 8)), generator=g)
        clean = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    clean = clean[torch.arange(count) % clean.shape[0]]
    noisy = clean + SIGMA * torch.randn(clean.shape, generator=g)
    return noisy.to(device), what


def balance_head(classifier: nn.Module, inputs: Tensor) -> None:
    """Standardise a random classifier's logits over ``inputs`` (in place): per class, subtract
    the mean logit and divide by its spread, folded into the last linear layer.

    A randomly initialised network gives (nearly) every input the same label, which makes any
    agreement check pass trivially.  After this the labels spread over the classes with small
    margins: a harder test of reduced precision than a trained model poses.
    """
    from diffsmooth.classifiers.registry import head_key

    head = classifier.net.get_submodule(head_key(classifier.config.arch).rsplit(".", 1)[0])
    with torch.no_grad():
        logits = _chunks(classifier, inputs, 64)
        mean, spread = logits.mean(0), logits.std(0).clamp_min(1e-6)
        head.weight.div_(spread[:, None])
        head.bias.sub_(mean).div_(spread)


def _chunks(fn: Callable[[Tensor], Tensor], x: Tensor, size: int) -> Tensor:
    with torch.inference_mode():
        return torch.cat([fn(x[i:i + size]) for i in range(0, x.shape[0], size)])


def run_config(config: Config, device: torch.device, args: argparse.Namespace, peak: float) -> list[dict[str, Any]]:
    torch.manual_seed(0)  # the random weights of this configuration (the script, not the library, seeds)
    diffusion, classifier, source = config.build(device)
    denoiser = OneShotDenoiser(diffusion, SIGMA).eval()
    classifier = classifier.eval()
    base = DiffSmooth(denoiser, classifier, m=M, local_sigma=LOCAL_SIGMA, vote="soft", local_noise="fixed",
                      seed=42).eval()
    flops = forward_flops(base, config.image_shape)  # before the move: the meta copy is made from host memory
    base.to(device)

    print(f"\n== {config.title} [{source}] on {device}: {flops / 1e9:.2f} GFLOP per noise sample", flush=True)
    x = torch.rand(config.image_shape, generator=torch.Generator().manual_seed(2)).to(device)
    local = base.local_noises(x[None])  # (m, C, H, W): the fixed local noises, shared by both paths
    rows: list[dict[str, Any]] = []

    def record(path: str, precision: str, batch: int, seconds_per_batch: float, calls: int, memory: float,
               agreement: str = "") -> None:
        rate = batch / seconds_per_batch
        achieved = flops * rate
        row = {"config": config.name, "path": path, "precision": precision, "batch": batch, "samples_per_s": rate,
               "s_per_image": (N0 + config.n) / rate, "n": config.n, "gflop_per_sample": flops / 1e9,
               "tflops": achieved / 1e12, "peak_util": achieved / peak, "peak_mem_gb": memory / 1e9,
               "calls": calls, "agreement": agreement, "weights": source}
        rows.append(row)
        print(f"  {path:<24} {precision:<9} batch {batch:>5}: {rate:9.1f} samples/s, {row['s_per_image']:10.1f} s "
              f"per image (n={config.n}), {row['tflops']:7.3f} TFLOP/s = {100 * row['peak_util']:5.1f}% of bf16 "
              f"peak, peak mem {row['peak_mem_gb']:.2f} GB {agreement}", flush=True)

    # Reference labels on the agreement inputs first: channels-last variants convert weights in place.
    count = args.agreement_samples or config.agreement_samples[device.type]
    noisy, what = agreement_inputs(config, device, count)
    chunk = 64 if device.type == "cuda" else 16
    if "random" in source.split("+")[-1]:
        calibration, _ = agreement_inputs(config, device, count, seed=4)
        with torch.no_grad():
            balance_head(classifier, _chunks(denoiser, calibration, chunk) + local[0])
        print("  random classifier: last layer standardised on a separate calibration draw (see balance_head)")
    with torch.no_grad():
        ref_labels = _chunks(lambda b: reference_labels(denoiser, classifier, local, b), noisy, chunk)
    majority = torch.bincount(ref_labels).max().item() / count
    print(f"  agreement inputs: {count} noisy {what}; float32 labels cover {ref_labels.unique().numel()} classes, "
          f"most common {100 * majority:.1f}%", flush=True)

    ref_batches = args.ref_batches or ((50, 1000) if device.type == "cuda" else config.cpu_batches)
    if device.type == "cpu" and not args.ref_batches and config.cpu_batches != (50, 1000):
        print(f"  note: on CPU the reference runs at batches {config.cpu_batches} instead of (50, 1000)")
    for batch in ref_batches:
        gen = torch.Generator(device=device).manual_seed(3)
        counts = [0] * config.num_classes
        with PeakMemory(device) as mem:
            per_batch, calls = timed(reference_step(denoiser, classifier, local, x, batch, gen, counts),
                                     device, args.seconds)
        record("reference (m-loop)", "float32", batch, per_batch, calls, mem.bytes)

    old_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    try:
        for name in args.variants or DEFAULT_VARIANTS[device.type]:
            settings = VARIANTS[name]
            if settings.get("cuda_graphs") and device.type != "cuda":
                print(f"  {name}: skipped (CUDA graphs need a CUDA device)")
                continue
            probe = accelerate(base, precision=settings.get("precision", "float32"),
                               channels_last=settings.get("channels_last", False))
            if args.fast_batch == "auto":
                batch = auto_batch_size(probe, config.image_shape, device, max_batch=args.max_batch,
                                        cpu_default=max(config.cpu_batches))
            else:
                batch = int(args.fast_batch)
            fast = accelerate(base, **settings, static_batch=batch)
            smoothed = SmoothedClassifier(fast, config.num_classes, SIGMA)
            gen = torch.Generator(device=device).manual_seed(3)
            with PeakMemory(device) as mem:
                per_batch, calls = timed(fast_step(smoothed, x, batch, gen), device, args.seconds)
            fast_labels = _chunks(fast, noisy, batch).argmax(1)
            agree = (fast_labels == ref_labels).float().mean().item()
            record(f"fast {name}", settings.get("precision", "float32"), batch, per_batch, calls, mem.bytes,
                   f"agreement {100 * agree:.2f}% (majority {100 * majority:.1f}%, {count} samples)")
            rows[-1]["agreement_value"] = agree
            del fast, smoothed, probe
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
    return rows


def _classifier_kwargs(classifier: nn.Module) -> dict[str, Any]:
    c = classifier.config
    return {"num_classes": c.num_classes, "in_channels": c.in_channels, "image_size": c.image_size,
            "dataset": c.dataset, **c.extra}


# -- RESULTS.md -------------------------------------------------------------------------------


def results_section(device: str, rows: list[dict[str, Any]], peaks: dict[str, float], command: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"<!-- device: {device} -->", f"## {device}", "",
             f"{stamp}, PyTorch {torch.__version__}, `{command}`.  Measured matmul peak: "
             f"{peaks['bf16'] / 1e12:.2f} TFLOP/s bf16, {peaks['fp32'] / 1e12:.2f} TFLOP/s fp32.", "",
             "| config | path | precision | batch | samples/s | s per certified image (n) | vs ref@largest | "
             "GFLOP/sample | TFLOP/s | % bf16 peak | peak mem GB* | agreement with fp32 labels |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    reference_rate: dict[str, float] = {}
    for row in rows:
        if row["path"].startswith("reference"):
            reference_rate[row["config"]] = row["samples_per_s"]  # the largest batch is measured last
    for row in rows:
        speedup = row["samples_per_s"] / reference_rate[row["config"]] if row["config"] in reference_rate else math.nan
        lines.append(
            f"| {row['config']} | {row['path']} | {row['precision']} | {row['batch']} | {row['samples_per_s']:.1f} | "
            f"{row['s_per_image']:.1f} ({row['n']}) | {speedup:.2f}x | {row['gflop_per_sample']:.2f} | "
            f"{row['tflops']:.3f} | {100 * row['peak_util']:.1f} | {row['peak_mem_gb']:.2f} | {row['agreement']} |")
    weights = sorted({f"{row['config']}: {row['weights']}" for row in rows})
    lines += ["", "*Peak memory: CUDA memory allocated during the timed path; on CPU the process's peak resident "
              "set so far (monotone, so only its largest value means anything).",
              "", "Weights: " + "; ".join(weights) + ".", f"<!-- end device: {device} -->", ""]
    return "\n".join(lines)


def write_results(path: Path, device: str, section: str) -> None:
    header = ("# Throughput results\n\nWritten by `benchmarks/throughput.py`; one section per device, "
              "replaced when the script runs again on that device.\n\n")
    text = path.read_text() if path.exists() else header
    pattern = re.compile(rf"<!-- device: {re.escape(device)} -->.*?<!-- end device: {re.escape(device)} -->\n?",
                         re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# -- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=None,
                        help=f"comma-separated of {', '.join(CONFIGS)} (default: all on CUDA; "
                             "fmnist,cifar10 on CPU, where imagenet takes tens of seconds per sample)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per path (after one warm-up batch)")
    parser.add_argument("--variants", default=None,
                        help=f"fast-path variants, comma-separated of {', '.join(VARIANTS)} "
                             f"(default CUDA: {','.join(DEFAULT_VARIANTS['cuda'])}; CPU: {','.join(DEFAULT_VARIANTS['cpu'])})")
    parser.add_argument("--ref-batches", default=None, help="reference batch sizes (default 50,1000; small on CPU)")
    parser.add_argument("--fast-batch", default="auto", help="fast-path batch, or 'auto' (fits free GPU memory)")
    parser.add_argument("--max-batch", type=int, default=4096, help="largest batch auto may pick")
    parser.add_argument("--agreement-samples", type=int, default=None, help="noisy inputs in the agreement check")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows here")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.configs.split(",") if args.configs else [
        n for n, c in CONFIGS.items() if device.type == "cuda" or c.cpu_ok]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    if device.type == "cpu" and not args.configs:
        print("note: imagenet skipped on CPU (about a minute per noise sample); pass --configs imagenet to run it")
    args.variants = args.variants.split(",") if args.variants else None
    if args.variants and any(v not in VARIANTS for v in args.variants):
        parser.error(f"unknown variant in {args.variants}; known: {', '.join(VARIANTS)}")
    args.ref_batches = tuple(int(b) for b in args.ref_batches.split(",")) if args.ref_batches else None

    name = device_name(device)
    peaks = {"bf16": matmul_peak(device, torch.bfloat16), "fp32": matmul_peak(device, torch.float32)}
    print(f"device: {name}; matmul peak {peaks['bf16'] / 1e12:.2f} TFLOP/s bf16, {peaks['fp32'] / 1e12:.2f} fp32")
    rows: list[dict[str, Any]] = []
    for config_name in names:
        rows += run_config(CONFIGS[config_name], device, args, peaks["bf16"])
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "peaks": peaks, "rows": rows}, indent=1))
    if not args.no_write:
        write_results(args.results, name, results_section(name, rows, peaks, command.strip()))
        print(f"results written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
