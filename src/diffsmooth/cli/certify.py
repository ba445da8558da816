"""``diffsmooth certify`` and ``diffsmooth predict``: run CERTIFY or PREDICT over a dataset."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from diffsmooth import validate
from diffsmooth.cli.applies import USED_BY
from diffsmooth.validate import InputError


def add_method_arguments(p: argparse.ArgumentParser, grid: bool = False, sigma_required: bool = True,
                         steps_flag: str = "--steps") -> None:
    """Options that pick the base classifier; shared by certify, predict, purify and demo.
    With ``grid`` the method and DiffSmooth options take lists: every combination is certified
    from one noise stream (``--out-dir``)."""
    from diffsmooth.cli.options import default_of, mark_defaults
    from diffsmooth.defenses import LOCAL_NOISES, VOTES
    from diffsmooth.fast import PRECISIONS
    from diffsmooth.methods import METHODS, MethodSpec

    many = "+" if grid else None

    def default(name: str):
        value = default_of(MethodSpec, name)
        return [value] if grid and name in GRID_OPTIONS else value

    g = p.add_argument_group("method")

    g.add_argument("--method", choices=list(METHODS), default=["diffsmooth"] if grid else "diffsmooth", nargs=many,
                   help="rs: Gaussian randomized smoothing; dds: diffusion denoised smoothing; "
                   "diffsmooth: purification + local smoothing; denoised: a trained DnCNN denoiser before a clean "
                   "classifier (Salman et al. 2020); densepure: majority vote over reverse-diffusion runs")
    g.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, mnist, cifar10, imagenet, digits")
    g.add_argument("--data-dir", default=None, help="folder holding the dataset (default: the usual places)")
    g.add_argument("--sigma", type=float, required=sigma_required, default=None,
                   help="smoothing noise std in [0,1] pixel units")
    g.add_argument("--denoiser", default=None,
                   help="diffusion checkpoint (OpenAI .pt, diffusers folder, our folder) or shipped model name; "
                   "default for fashion-mnist: the shipped model")
    g.add_argument("--denoiser-preset", default=None,
                   help="preset of a bare OpenAI checkpoint: improved-cifar10-uncond or guided-imagenet256-uncond "
                   "(inferred from its keys when omitted)")
    g.add_argument("--classifier", default=None,
                   help="classifier checkpoint (Cohen/SmoothAdv .pth.tar, ours .safetensors) or shipped model name; "
                   "default for fashion-mnist: the shipped model for the method and sigma")
    # The long aliases (also of --n and --max) exist because torchrun's parser rejects --m,
    # --n and --max as ambiguous abbreviations of its own options, even after the module name.
    g.add_argument("--m", "--local-m", type=int, default=default("m"), nargs=many,
                   help="diffsmooth: local noise samples per purified image (--local-m under torchrun)")
    g.add_argument("--local-sigma", type=float, default=default("local_sigma"), nargs=many,
                   help="diffsmooth: std of the local noise")
    g.add_argument("--vote", choices=VOTES, default=default("vote"), nargs=many,
                   help="diffsmooth: average softmax (reference code) or majority of labels (paper)")
    g.add_argument("--local-noise", choices=LOCAL_NOISES, default=default("local_noise"), nargs=many,
                   help="diffsmooth: local noises drawn once from --local-noise-seed, or fresh per call")
    if grid:
        g.add_argument("--local-classifier", nargs="+", default=None, metavar="[LOCAL_SIGMA=]PATH",
                       help="diffsmooth: one classifier per --local-sigma, or LOCAL_SIGMA=PATH items (several "
                       "classifiers may share a local sigma, e.g. 0.25=consistency 0.25=smoothadv); default: "
                       "--classifier, else the shipped Gaussian classifier for each local sigma")
        g.add_argument("--rs-classifier", nargs="+", default=None, metavar="PATH",
                       help="rs: one configuration per classifier (default: --classifier, else the shipped Gaussian "
                       "one for sigma)")
        g.add_argument("--dds-classifier", nargs="+", default=None, metavar="PATH",
                       help="dds: one configuration per clean classifier (default: --classifier, else the shipped "
                       "clean one)")
    g.add_argument("--local-noise-seed", type=int, default=default("local_noise_seed"),
                   help="diffsmooth: seed of the local noise")
    from diffsmooth.diffusion.denoiser import REVERSE_CHAINS

    g.add_argument("--runs", type=int, default=default("runs"), help="densepure: reverse-diffusion runs that vote")
    g.add_argument(steps_flag, dest="steps", type=int, default=default("steps"),
                   help="densepure: respaced reverse steps from t* per run")
    g.add_argument("--reverse-chain", choices=REVERSE_CHAINS, default=default("reverse_chain"),
                   help="densepure: stochastic DDPM steps (runs differ) or deterministic DDIM")
    g.add_argument("--run-seed", type=int, default=default("run_seed"),
                   help="densepure: seed of the runs' reverse-step noise")
    g.add_argument("--precision", choices=list(PRECISIONS), default=default("precision"),
                   help="autocast precision of the models (float32 is exact; bf16 is fast on GPUs)")
    g.add_argument("--channels-last", action="store_true", help="NHWC layout for the models (faster convolutions on GPUs)")
    g.add_argument("--compile", default=None, metavar="MODE",
                   help="torch.compile the base: default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs")
    g.add_argument("--cuda-graphs", action="store_true", help="capture and replay the base as a CUDA graph per batch shape")
    g.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    # Options the user typed are told from defaults, so that one that no chosen method uses is refused
    # (cli.applies) and a --recipe fills only the others; typed_options removes the marks.
    mark_defaults(p, [d for d in METHOD_OPTION_DESTS if grid or not d.endswith("_classifier")])


GRID_OPTIONS = ("m", "local_sigma", "vote", "local_noise")
"""DiffSmooth's options that take lists in a grid (every combination is certified)."""

METHOD_OPTION_DESTS = ("method", "dataset", "sigma", "classifier", *USED_BY, "precision", "channels_last", "compile",
                       "cuda_graphs")
"""The method options whose typing is tracked (``cli.options.mark_defaults``)."""


def method_spec(args: argparse.Namespace):
    from diffsmooth.methods import MethodSpec

    return MethodSpec(
        method=args.method, dataset=args.dataset, sigma=args.sigma, denoiser=args.denoiser,
        denoiser_preset=args.denoiser_preset, classifier=args.classifier, m=args.m,
        local_sigma=args.local_sigma, vote=args.vote, local_noise=args.local_noise,
        local_noise_seed=args.local_noise_seed, precision=args.precision, channels_last=args.channels_last,
        compile=args.compile, cuda_graphs=args.cuda_graphs, runs=args.runs, steps=args.steps,
        reverse_chain=args.reverse_chain, run_seed=args.run_seed,
    )


def method_specs(args: argparse.Namespace) -> list:
    """Every configuration the list options ask for: RS once per --rs-classifier, DDS once per
    --dds-classifier, other methods once, DiffSmooth for every combination of --m, local sigma with
    its classifier (--local-classifier), --vote and --local-noise."""
    from itertools import product

    from diffsmooth.methods import MethodSpec

    common = dict(dataset=args.dataset, sigma=args.sigma, denoiser=args.denoiser, denoiser_preset=args.denoiser_preset,
                  local_noise_seed=args.local_noise_seed, precision=args.precision, channels_last=args.channels_last,
                  compile=args.compile, cuda_graphs=args.cuda_graphs, runs=args.runs, steps=args.steps,
                  reverse_chain=args.reverse_chain, run_seed=args.run_seed)
    specs = []
    for method in dict.fromkeys(args.method):
        if method == "diffsmooth":
            for m, (local_sigma, classifier), vote, noise in product(
                    dict.fromkeys(args.m), _local_classifiers(args), dict.fromkeys(args.vote),
                    dict.fromkeys(args.local_noise)):
                specs.append(MethodSpec("diffsmooth", classifier=classifier, m=m, local_sigma=local_sigma, vote=vote,
                                        local_noise=noise, **common))
        else:
            own = {"rs": getattr(args, "rs_classifier", None), "dds": getattr(args, "dds_classifier", None)}.get(method)
            for classifier in dict.fromkeys(own or [args.classifier]):
                specs.append(MethodSpec(method, classifier=classifier, **common))
    return specs


def _local_classifiers(args: argparse.Namespace) -> list[tuple[float, str | None]]:
    """DiffSmooth's (local sigma, classifier) pairs: --local-sigma with --classifier, --local-classifier
    PATHs zipped with --local-sigma, or --local-classifier LOCAL_SIGMA=PATH items."""
    from diffsmooth.cli.options import typed_options

    items = getattr(args, "local_classifier", None)
    if items is None:
        return [(s, args.classifier) for s in dict.fromkeys(args.local_sigma)]
    paired = [item.partition("=") for item in items]
    if all(sep for _, sep, _ in paired):
        if "local_sigma" in typed_options(args):
            raise InputError("give the local sigmas either in --local-classifier LOCAL_SIGMA=PATH items or with "
                             "--local-sigma, not both")
        try:
            pairs = [(float(sigma), path) for sigma, _, path in paired]
        except ValueError:
            raise InputError(f"--local-classifier items are LOCAL_SIGMA=PATH (e.g. 0.25=fmnist_cnn_consistency_0.25), "
                             f"got {items}") from None
        return list(dict.fromkeys(pairs))
    if any(sep for _, sep, _ in paired):
        raise InputError("--local-classifier: give every item as LOCAL_SIGMA=PATH, or every item as PATH with one "
                         "--local-sigma each, not a mix")
    if len(items) != len(args.local_sigma):
        raise InputError(f"--local-classifier gives {len(items)} classifiers for {len(args.local_sigma)} local sigmas; "
                         "give one per --local-sigma, or LOCAL_SIGMA=PATH items")
    return list(dict.fromkeys(zip(args.local_sigma, items)))


def pick_device(name: str | None):
    from diffsmooth.files import resolve_device

    return resolve_device(name)


def _add_run(sub, formatter, mode: str) -> None:
    certify = mode == "certify"
    p = sub.add_parser(
        mode,
        formatter_class=formatter,
        help="certify l2 radii of test images (CERTIFY)" if certify else "smoothed predictions with abstention (PREDICT)",
        description=(
            "CERTIFY each selected image: pick the top class from n0 noise samples, bound its probability "
            "from n fresh samples, and write `idx label predict radius correct time` rows (predict -1 = abstain)."
            if certify else
            "PREDICT each selected image from n noise samples with a binomial test at level alpha; writes "
            "`idx label predict correct time` rows."
        ) + " Rows are flushed as each image completes; --resume continues an interrupted run. Under "
        "`torchrun --nproc-per-node K -m diffsmooth " + mode + " ...` each process takes a share of the images.",
    )
    from diffsmooth.cli.options import add_cpu_workers, add_image_arguments, default_of
    from diffsmooth.runner import SAMPLINGS, RunSpec

    def default(name: str):
        return default_of(RunSpec, name)

    add_method_arguments(p, grid=True, sigma_required=False)  # a --recipe may set it
    add_cpu_workers(p)
    g = p.add_argument_group("sampling")
    if certify:
        g.add_argument("--n0", type=int, default=default("n0"), help="selection samples")
    g.add_argument("--n", "--num-samples", type=int, default=default("n"),
                   help="estimation samples per image (--num-samples under torchrun)")
    g.add_argument("--alpha", type=float, default=default("alpha"), help="failure probability of the certificate")
    if certify:
        from diffsmooth.smoothing import BOUNDS

        g.add_argument("--sampling", choices=SAMPLINGS, default=default("sampling"),
                       help="fixed: n estimation samples per image (Cohen et al.); sequential: looks of 64, 128, ... "
                       "samples up to --n-max with an anytime-valid bound, each image stopping as soon as its "
                       "question is settled (the TSV gains a `samples` column)")
        g.add_argument("--n-max", type=int, default=None, help="sequential: most estimation samples per image")
        g.add_argument("--radii", type=float, nargs="+", default=None,
                       help="sequential, fixed-radius mode: decide 'radius >= r' for each r (e.g. the table's radii)")
        g.add_argument("--max-radius", type=float, default=None,
                       help="sequential, radius mode: stop an image once this radius is certified")
        g.add_argument("--min-radius", type=float, default=default("min_radius"),
                       help="sequential, radius mode: stop (futile) once no radius >= this can be reached")
        g.add_argument("--tolerance", type=float, default=default("tolerance"),
                       help="sequential, radius mode: stop when n-max samples would add less radius than this")
        g.add_argument("--bound", choices=BOUNDS, default=default("bound"),
                       help="cohen: radius sigma Phi^-1(pA_lower); separate-pb: sigma/2 (Phi^-1(pA_lower) - "
                       "Phi^-1(pB_upper)) with pB_upper bounding every other class at once (Bonferroni), the two "
                       "sharing alpha (stats.PB_ALPHA_SHARE to pB); larger radii when the rest is spread")
    g.add_argument("--batch", type=_batch, default=default("batch_size"),
                   help="noisy images per forward pass, or 'auto' for the largest that fits the free GPU memory "
                   "(fixed at the start and recorded, since it decides how each image's noise is drawn)")
    g.add_argument("--seed", type=int, default=default("seed"), help="run seed; image idx's noise is seeded by (seed, idx)")
    add_image_arguments(p)
    g = p.add_argument_group("output")
    where = g.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="results TSV of one configuration; its manifest is written to OUT.json")
    where.add_argument("--out-dir",
                       help="folder for several configurations (lists in the method options): one TSV + manifest "
                       "per configuration, named after its settings, and index.json (read by `diffsmooth analyze DIR`). "
                       "Every row is a (1 - alpha) certificate of its configuration on its own; picking the best "
                       "configuration per image afterwards is not")
    mode_group = g.add_mutually_exclusive_group()
    mode_group.add_argument("--resume", action="store_true", help="continue an existing results file")
    mode_group.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    g.add_argument("--split-samples", action="store_true",
                   help="under torchrun: share each image's samples across all processes (for very large n) "
                   "instead of giving each process its own images")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    from diffsmooth.cli.recipes import add_recipe_argument

    add_recipe_argument(p, mode)
    p.set_defaults(func=_run, mode=mode, applies_after_recipe=True)


def _batch(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch takes a whole number or 'auto', got {text!r}") from None


def register(sub, formatter) -> None:
    _add_run(sub, formatter, "certify")
    _add_run(sub, formatter, "predict")


def _run(args: argparse.Namespace) -> int:
    from diffsmooth.cli.applies import check_applies
    from diffsmooth.cli.options import checked_cpu_workers
    from diffsmooth.cli.recipes import apply_recipe
    from diffsmooth.data import load_dataset
    from diffsmooth.results import radii_record, recorded_spec
    from diffsmooth.runner import Job, RunSpec, resolve_batch_size, run, select_indices

    recipe = apply_recipe(args)  # first: it fills in the options the user did not give
    check_applies(args)
    if args.sigma is None:
        raise InputError("--sigma is required: the smoothing noise in [0,1] pixel units (e.g. 0.25), "
                         "or a --recipe that sets it (`diffsmooth recipes`)")
    methods = method_specs(args)
    grid = args.out_dir is not None
    if len(methods) > 1 and not grid:
        raise InputError(f"the options ask for {len(methods)} configurations; write them with --out-dir DIR "
                         "(one file each), or give one value per option with --out")
    if grid and args.mode != "certify":
        raise InputError("--out-dir (several configurations) is for certify; predict writes one --out file")
    certify = args.mode == "certify"
    spec = RunSpec(
        mode=args.mode, method=methods[0], n=args.n, alpha=args.alpha,
        batch_size=1 if args.batch == "auto" else args.batch, seed=args.seed, split=args.split,
        **(dict(n0=args.n0, bound=args.bound, sampling=args.sampling, n_max=args.n_max,
                radii=tuple(radii_record(args.radii)) if args.radii else None, max_radius=args.max_radius,
                min_radius=args.min_radius, tolerance=args.tolerance) if certify else {}),
    )
    spec.validate()
    for method in methods[1:]:
        method.validate()
    out = validate.output_folder(args.out_dir, "--out-dir") if grid else validate.output_file(args.out, "--out")
    cpu_workers = checked_cpu_workers(args.cpu_workers)
    device = pick_device(args.device)
    dataset = load_dataset(args.dataset, split=args.split, data_dir=args.data_dir)
    info = dataset.info
    if args.batch == "auto":
        batch = resolve_batch_size("auto", methods[0], device, (info.channels, info.image_size, info.image_size),
                                   recorded=recorded_spec(out, grid) if args.resume else None)
        spec = replace(spec, batch_size=batch)
    indices = select_indices(len(dataset), args.skip, args.max, args.indices)
    extra = {"dataset": {"name": args.dataset, "split": args.split, "size": len(dataset)},
             "argv": sys.argv[1:], "indices": {"skip": args.skip, "max": args.max, "explicit": args.indices},
             **({"recipe": recipe} if recipe else {})}
    report = run(Job(spec, dataset.__getitem__, indices, out, info.num_classes, device,
                     grid=methods if grid else None, resume=args.resume, overwrite=args.overwrite,
                     manifest_extra=extra, progress=not args.quiet, split_samples=args.split_samples,
                     cpu_workers=cpu_workers))
    if report is not None and not args.quiet:
        done = len(report.rows) or max((len(r) for r in report.by_configuration.values()), default=0)
        verb = {"certify": "certified", "predict": "predicted"}[args.mode]
        where = f"{len(methods)} configuration(s) in {out}" if grid else str(out)
        print(f"{done} image(s) {verb}, {report.skipped} already done; results in {where}", file=sys.stderr)
    return 0
