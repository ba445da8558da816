"""``diffsmooth attack``: empirical robustness (attack, then PREDICT) and the certificate audit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffsmooth import validate
from diffsmooth.validate import InputError


# PGD's options: (flag, AttackConfig field, help); the parser and _config read this one table.
PGD_OPTIONS = (
    ("--steps", "steps", "PGD steps per restart"),
    ("--eot", "eot", "noise draws averaged per step"),
    ("--restarts", "restarts", "random restarts (the first starts at the clean image)"),
    ("--step-scale", "step_scale", "step size as a multiple of eps / steps"),
    ("--target", "target", "smoothed: the smoothed classifier (SmoothAdv); base: h without smoothing noise"),
    ("--purifier-gradient", "purifier_gradient",
     "multi-step purifiers: backpropagate through the chain, or BPDA (identity)"),
)


def _dest(field: str) -> str:
    """The namespace name of a PGD field (``--steps`` is PGD's; the method's chain steps keep ``steps``)."""
    return "attack_steps" if field == "steps" else field


def register(sub, formatter) -> None:
    from diffsmooth.attacks import AttackConfig, AuditSettings
    from diffsmooth.attacks.pgd import PURIFIER_GRADIENTS, TARGETS
    from diffsmooth.cli.certify import add_method_arguments
    from diffsmooth.cli.options import add_image_arguments, default_of, mark_defaults
    from diffsmooth.runner import RunSpec

    def attack(name: str):
        return default_of(AttackConfig, name)

    p = sub.add_parser(
        "attack",
        formatter_class=formatter,
        help="empirical robust accuracy under l2 PGD, or an audit of certify results",
        description="Attack each selected image with l2 PGD inside each --eps (SmoothAdv's attack on the smoothed "
        "classifier: the softmax averaged over --eot noise draws, fresh noise every step, --restarts random starts; "
        "gradients flow through the one-shot purifier and the local copies, DiffSmooth's hard vote through its soft "
        "scores), then run PREDICT at the attacked point. Writes one PREDICT TSV per eps (idx label predict correct "
        "time norm loss) + manifest into --out-dir, with index.json; resumable and torchrun-sharded like certify. "
        "`diffsmooth analyze` reads the folder (empirical robust accuracy = its clean accuracy column). "
        "With --audit RESULTS.tsv it attacks every certified-correct row (of the file's rows picked by --indices, "
        "--skip, --max) inside 0.95 x its radius instead and "
        "counts certificates that the attack breaks.",
    )
    # An audit reads sigma from the manifest; --steps is PGD's here, DensePure's chain takes --reverse-steps.
    add_method_arguments(p, sigma_required=False, steps_flag="--reverse-steps")
    g = p.add_argument_group("attack")
    g.add_argument("--eps", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="l2 radii in [0,1] pixel units")
    mark_defaults(p, ["eps"])
    choices = {"target": TARGETS, "purifier_gradient": PURIFIER_GRADIENTS}
    for option, field, help in PGD_OPTIONS:
        default = attack(field)
        kind = {"choices": choices[field]} if field in choices else {"type": type(default)}
        g.add_argument(option, dest=_dest(field), default=default, help=help, **kind)
    g = p.add_argument_group("PREDICT at the attacked point")
    g.add_argument("--n", "--num-samples", type=int, default=1000, help="samples of PREDICT")
    g.add_argument("--alpha", type=float, default=default_of(RunSpec, "alpha"),
                   help="PREDICT's level (and the audit's interval)")
    g.add_argument("--batch", type=int, default=default_of(RunSpec, "batch_size"), help="noisy images per forward pass")
    g.add_argument("--seed", type=int, default=default_of(RunSpec, "seed"),
                   help="run seed; image idx's attack and noise are seeded by (seed, idx)")
    add_image_arguments(p)
    g = p.add_argument_group("output")
    g.add_argument("--out-dir", default=None, help="folder of the attack's files")
    g.add_argument("--audit", type=Path, default=None, metavar="RESULTS.tsv",
                   help="audit a certify results file (its manifest gives the method and sigma)")
    g.add_argument("--fraction", type=float, default=default_of(AuditSettings, "fraction"),
                   help="audit: attack inside this fraction of each radius")
    g.add_argument("--out", default=None, help="audit: TSV of the audited rows (default: none)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an existing attack folder")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing attack folder's files")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_attack, applies_after_recipe=True)


def _config(args: argparse.Namespace):
    from diffsmooth.attacks import AttackConfig

    return AttackConfig(**{field: getattr(args, _dest(field)) for _, field, _ in PGD_OPTIONS}, batch_size=args.batch)


def _attack(args: argparse.Namespace) -> int:
    from diffsmooth.cli.applies import check_applies
    from diffsmooth.cli.certify import METHOD_OPTION_DESTS
    from diffsmooth.cli.options import flag, typed_options

    typed = typed_options(args)
    if args.audit is not None:
        ignored = sorted(typed & {*METHOD_OPTION_DESTS, "eps"})
        if ignored:
            names = ", ".join("--reverse-steps" if d == "steps" else flag(d) for d in ignored)
            raise InputError(f"--audit attacks the configuration RESULTS.tsv's manifest records (method, sigma, "
                             f"models, precision); drop {names}")
        check_applies(args)
        if args.out_dir is not None or args.resume or args.overwrite:
            raise InputError("--audit writes no attack folder: drop --out-dir, --resume and --overwrite "
                             "(--out names the audit's own TSV)")
        return _audit(args)
    check_applies(args)
    if args.out is not None:
        raise InputError("--out names the audit's TSV (with --audit); an attack writes into --out-dir")
    if args.out_dir is None:
        raise InputError("give --out-dir for the attack's files (or --audit RESULTS.tsv to audit certificates)")
    if args.sigma is None:
        raise InputError("--sigma is required (the smoothing noise of the classifier attacked)")
    from diffsmooth.attacks.run import AttackTask
    from diffsmooth.cli.certify import method_spec, pick_device
    from diffsmooth.data import load_dataset
    from diffsmooth.runner import Job, RunSpec, run, select_indices

    args.out_dir = validate.output_folder(args.out_dir, "--out-dir")
    spec = RunSpec(mode="predict", method=method_spec(args), n=args.n, alpha=args.alpha, batch_size=args.batch,
                   seed=args.seed, split=args.split)
    task = AttackTask(spec, tuple(args.eps), _config(args))
    task.validate()
    device = pick_device(args.device)
    dataset = load_dataset(args.dataset, split=args.split, data_dir=args.data_dir)
    indices = select_indices(len(dataset), args.skip, args.max, args.indices)
    extra = {"dataset": {"name": args.dataset, "split": args.split, "size": len(dataset)}, "argv": sys.argv[1:]}
    report = run(Job(task, dataset.__getitem__, indices, args.out_dir, dataset.info.num_classes, device,
                     resume=args.resume, overwrite=args.overwrite, manifest_extra=extra, progress=not args.quiet))
    if report is not None and not args.quiet:
        rows = report.by_configuration
        accuracy = ", ".join(f"{key}: {sum(r.correct for r in v)}/{len(v)}" for key, v in rows.items())
        print(f"attacked {max((len(v) for v in rows.values()), default=0)} image(s), {report.skipped} already done; "
              f"robust (PREDICT correct at the attacked point) {accuracy}; files in {args.out_dir}", file=sys.stderr)
    return 0


def _audit(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from diffsmooth.attacks import AuditSettings, audit
    from diffsmooth.attacks.audit import auditable_rows
    from diffsmooth.cli.certify import pick_device
    from diffsmooth.data import load_dataset
    from diffsmooth.methods import MethodSpec, build_base
    from diffsmooth.results import manifest_path, read_manifest, read_results
    from diffsmooth.runner import select_indices
    from diffsmooth.sampling import generator_for
    from diffsmooth.smoothing import SmoothedClassifier

    results = read_results(args.audit)
    if results.mode != "certify":
        raise InputError(f"{args.audit} holds {results.mode} rows; --audit needs a certify results file")
    manifest = read_manifest(manifest_path(args.audit))
    recorded = manifest["spec"]
    method = MethodSpec(**recorded["method"])
    if args.out is not None:
        args.out = validate.output_file(args.out, "--out")
        validate.not_replaced([args.out], False, "audit TSV (the audit never replaces one)", "--out")
    if args.seed == recorded.get("seed", 0):
        # Fresh samples: the certificate's own noise would make the audit's estimate depend on it.
        args.seed = int(recorded.get("seed", 0)) + 1_000_003
    config = _config(args)
    device = pick_device(args.device)
    dataset = load_dataset(recorded["method"]["dataset"], split=recorded.get("split", "test"), data_dir=args.data_dir)
    # --indices / --skip / --max pick the certify file's rows (images) as they pick a dataset's images
    chosen = [r for r in results.rows if r.idx in set(args.indices)] if args.indices else results.rows
    chosen = [chosen[i] for i in select_indices(len(chosen), args.skip, args.max)]
    outside = [r.idx for r in chosen if not 0 <= r.idx < len(dataset)]
    if outside:
        raise InputError(f"{args.audit} has idx {outside[0]}, outside the {len(dataset)} images of "
                         f"{recorded['method']['dataset']} ({recorded.get('split', 'test')}); audit with the dataset "
                         "(--data-dir) the rows were certified on")
    rows = auditable_rows(chosen, method.sigma)
    base = build_base(replace(method, compile=None, cuda_graphs=False), device)
    smoothed = SmoothedClassifier(base, dataset.info.num_classes, method.sigma)
    settings = AuditSettings(config, n=args.n, alpha=args.alpha, batch_size=args.batch, fraction=args.fraction)
    report = audit(smoothed, rows, dataset.__getitem__, settings, certify_alpha=float(recorded["alpha"]),
                   generator_for=lambda idx: generator_for(args.seed, idx, device), device=device)
    if args.out is not None:
        from diffsmooth.files import atomic_write_text

        head = "idx\tlabel\tradius\teps\tnorm\tcount\tn\tp_lower\tp_upper\tbound\tflipped\tbelow_bound\n"
        body = "".join(f"{r.idx}\t{r.label}\t{r.radius:.6g}\t{r.eps:.6g}\t{r.perturbation_norm:.6g}\t{r.count}\t{r.n}\t"
                       f"{r.p_lower:.6g}\t{r.p_upper:.6g}\t{r.bound:.6g}\t{int(r.flipped)}\t{int(r.below_bound)}\n"
                       for r in report.records)
        atomic_write_text(args.out, head + body)
    print(f"audited {report.audited} certified-correct row(s) of {args.audit}: {report.flipped} flipped "
          f"(prediction moved inside the radius), {report.below_bound} below Cohen's bound; about "
          f"{report.expected_at_most:.2f} expected at most from correct certificates"
          + ("; MORE THAN 3x EXPECTED: the certificates look wrong" if
             report.below_bound > max(3 * report.expected_at_most, 1) else ""))
    return 0
