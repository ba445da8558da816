"""``diffsmooth train-diffusion``, ``train-classifier`` and ``train-denoiser``: parse, validate, call training."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffsmooth.errors import InputError

# Method hyper-parameters as CLI options: (flag, dest, type, help). Defaults come from
# diffsmooth.training.losses so that the library and the command line agree.
_HPARAMS = (
    ("--m-train", "m_train", int, "noise samples per image during training (consistency, macer, smoothadv, smoothmix)"),
    ("--lbd", "lbd", float, "weight of the consistency KL term / of the MACER radius hinge"),
    ("--eta", "eta", float, "consistency: weight of the entropy of the mean prediction; smoothmix: weight of "
     "the mixup KL"),
    ("--gamma", "gamma", float, "macer: hinge margin on Phi^-1(pA) - Phi^-1(pB)"),
    ("--beta", "beta", float, "macer: inverse temperature of the softmax in the radius term"),
    ("--epsilon", "epsilon", float, "smoothadv: l2 attack radius in [0,1] pixel units"),
    ("--num-steps", "num_steps", int, "smoothadv: PGD steps (step size 2*epsilon/num_steps); smoothmix: PGD steps"),
    ("--warmup", "warmup", int, "smoothadv: epochs over which epsilon ramps up linearly; smoothmix: eta's ramp"),
    ("--step-scale", "step_scale", float, "smoothmix: PGD step size in units of sigma (2: the paper's 0.5/1.0/2.0 "
     "at sigma 0.25/0.5/1.0)"),
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion-mnist", help="dataset name (see diffsmooth.data.list_datasets)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the dataset files (default: searched)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and of all training noise")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="folder for the resumable training state (default: OUT.train next to --out)")
    p.add_argument("--resume", action="store_true", help="continue from the state in --checkpoint-dir")
    p.add_argument("--overwrite", action="store_true", help="replace the model at --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub, formatter) -> None:
    from diffsmooth.training.losses import list_losses, loss_defaults

    d = sub.add_parser(
        "train-diffusion", formatter_class=formatter,
        help="train a DDPM (epsilon prediction) for one-shot purification",
        description="Train our ADM UNet as a DDPM: epsilon prediction, MSE, uniform or focused timesteps "
        "(--focus-sigmas), AdamW, EMA of the "
        "weights, optional bf16 autocast on CUDA. Writes a resumable state every --checkpoint-every steps and the "
        "EMA model to --out (config.json + model.safetensors, read by load_diffusion_model).",
    )
    d.add_argument("--out", required=True, help="output folder of the trained model")
    d.add_argument("--variant", default="improved", help="UNet flag set: improved or guided")
    d.add_argument("--num-channels", type=int, default=32, help="base channel count of the UNet")
    d.add_argument("--channel-mult", default="1,2,2", help="channel multiplier per resolution")
    d.add_argument("--num-res-blocks", type=int, default=1, help="residual blocks per resolution")
    d.add_argument("--attention-resolutions", default="7",
                   help="comma list of feature-map sizes with self-attention ('' for none)")
    d.add_argument("--num-heads", type=int, default=1, help="attention heads")
    d.add_argument("--dropout", type=float, default=0.0, help="dropout in residual blocks")
    d.add_argument("--schedule", default="cosine", help="noise schedule: cosine or linear")
    d.add_argument("--diffusion-steps", type=int, default=1000, help="number of diffusion timesteps T")
    d.add_argument("--steps", type=int, default=5000, help="optimizer steps in total")
    d.add_argument("--batch-size", type=int, default=64, help="images per step")
    d.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate (cosine decay after warm-up)")
    d.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    d.add_argument("--warmup-steps", type=int, default=100, help="linear learning-rate warm-up steps")
    d.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights")
    d.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only; ignored on CPU)")
    d.add_argument("--norm-groups", type=int, default=None, help="GroupNorm groups (default: the official 32)")
    d.add_argument("--focus-sigmas", default=None, metavar="LO,HI",
                   help="smoothing sigmas (pixel units) whose t* range gets --focus-fraction of the timestep draws "
                   "(default: uniform timesteps)")
    d.add_argument("--focus-fraction", type=float, default=None,
                   help="share of timestep draws in the --focus-sigmas range, in (0, 1)")
    d.add_argument("--train-limit", type=int, default=None,
                   help="train on the first N training images only (hold the rest out)")
    d.add_argument("--checkpoint-every", type=int, default=500, help="steps between resumable checkpoints")
    d.add_argument("--stop-after", type=int, default=None,
                   help="end this call after N more steps (a multiple of --checkpoint-every), saving the model "
                   "marked unfinished; continue later with --resume")
    _common(d)
    d.set_defaults(func=_train_diffusion)

    c = sub.add_parser(
        "train-classifier", formatter_class=formatter,
        help="train a base classifier for randomized smoothing",
        description="Train a classifier with Gaussian augmentation (Cohen et al.), SmoothAdv (Salman et al.), "
        "Consistency (Jeong & Shin), MACER (Zhai et al.) or SmoothMix (Jeong et al.); noise is drawn fresh every batch. Writes OUT.safetensors "
        "+ OUT.json (read by load_classifier) and a resumable state after every epoch. Method defaults: "
        + "; ".join(f"{m}: " + (", ".join(f"{k}={v:g}" for k, v in loss_defaults(m).items()) or "none")
                    for m in list_losses()),
    )
    c.add_argument("--out", required=True, help="output path stem: writes OUT.safetensors and OUT.json")
    c.add_argument("--method", choices=list_losses(), default="gaussian", help="training objective")
    c.add_argument("--sigma", type=float, required=True, help="training noise std in [0,1] pixel units (0 = clean)")
    c.add_argument("--arch", default="fmnist_cnn", help="classifier architecture (registry name)")
    c.add_argument("--epochs", type=int, default=5, help="training epochs")
    c.add_argument("--batch-size", type=int, default=128, help="images per step")
    c.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (cosine decay to 0)")
    c.add_argument("--momentum", type=float, default=0.9, help="SGD Nesterov momentum")
    c.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    for flag, dest, typ, text in _HPARAMS:
        c.add_argument(flag, dest=dest, type=typ, default=None, help=text + " (default: the method's)")
    c.add_argument("--init", type=Path, default=None, help="start from this classifier checkpoint (fine-tuning)")
    c.add_argument("--finetune-on-purified", dest="purify", default=None, metavar="DENOISER",
                   help="diffusion model folder: train on purify(x + N(0, purify_sigma^2)) instead of x")
    c.add_argument("--purify-sigma", type=float, default=None, help="noise before purification (default: --sigma)")
    c.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    c.add_argument("--eval-limit", type=int, default=None, help="test images for the recorded accuracies (default all)")
    _common(c)
    c.set_defaults(func=_train_classifier)

    n = sub.add_parser(
        "train-denoiser", formatter_class=formatter,
        help="train a DnCNN denoiser for denoised smoothing (Salman et al.)",
        description="Train a DnCNN (depth 17, width 64) or DnCNN-wide (width 128) to remove N(0, sigma^2) noise "
        "in [0,1] pixels, with the MSE objective, the stability objective (cross-entropy of a frozen classifier on "
        "the denoised image against its clean prediction) or MSE then stability. Adam, cosine learning rate. Writes "
        "OUT.safetensors + OUT.json (read by load_denoiser and `certify --method denoised`) and a resumable state "
        "after every epoch.",
    )
    n.add_argument("--out", type=Path, required=True, help="output path stem: writes OUT.safetensors and OUT.json")
    n.add_argument("--arch", default="dncnn", help="dncnn or dncnn-wide")
    n.add_argument("--objective", default="mse", help="mse, stability or mse+stability")
    n.add_argument("--sigma", type=float, required=True, help="training noise std in [0,1] pixel units")
    n.add_argument("--classifier", default=None,
                   help="frozen classifier for the stability objective (default on fashion-mnist: the shipped clean one)")
    n.add_argument("--mse-epochs", type=int, default=None,
                   help="mse+stability: epochs of MSE before stability (default: half of --epochs)")
    n.add_argument("--init", type=Path, default=None, help="start from this denoiser checkpoint (ours or Salman et al.'s)")
    n.add_argument("--depth", type=int, default=None, help="convolutions (default: the arch's 17)")
    n.add_argument("--width", type=int, default=None, help="hidden channels (default: the arch's 64 or 128)")
    n.add_argument("--epochs", type=int, default=5, help="training epochs")
    n.add_argument("--batch-size", type=int, default=128, help="images per step")
    n.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (cosine decay to 0)")
    n.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay")
    n.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    n.add_argument("--eval-limit", type=int, default=None, help="test images for the recorded numbers (default all)")
    _common(n)
    n.set_defaults(func=_train_denoiser)


def _train_denoiser(args: argparse.Namespace) -> int:
    from diffsmooth.training import DenoiserTrainConfig, train_denoiser

    config = DenoiserTrainConfig(
        arch=args.arch, dataset=args.dataset, objective=args.objective, sigma=args.sigma,
        classifier=args.classifier, mse_epochs=args.mse_epochs, init=str(args.init) if args.init else None,
        depth=args.depth, width=args.width, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, data_dir=str(args.data_dir) if args.data_dir else None,
        train_limit=args.train_limit,
    )
    result = train_denoiser(config, args.out, checkpoint_dir=args.checkpoint_dir, device=args.device,
                            resume=args.resume, quiet=args.quiet, eval_limit=args.eval_limit)
    info = result.info
    accuracy = info.get("denoised_noisy_test_accuracy")
    print(f"wrote {result.path}; test MSE {info['test_mse']:.5f} (noisy input {info['test_mse_noisy_input']:.5f})"
          + (f", classifier accuracy on denoised noisy images {accuracy:.4f}" if accuracy is not None else ""))
    return 0


def _check_out(text: str, files: list[Path], overwrite: bool, what: str) -> None:
    """Refuse, before training, an --out that cannot be written or would replace a model unasked."""
    import os

    out = Path(text)
    if text.endswith(os.sep) and not out.is_dir():
        raise InputError(f"--out {text} ends with '{os.sep}' but is no folder; give the {what} path itself, "
                         f"e.g. {out / 'model'}")
    parent = out.parent
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder {parent} is not writable; choose another --out")
    existing = [f for f in files if f.exists() or f.is_symlink()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]} exists; pass --overwrite to replace the {what} or choose another --out")


def _train_classifier(args: argparse.Namespace) -> int:
    from diffsmooth.training import ClassifierTrainConfig, loss_defaults, train_classifier

    raw, args.out = args.out, Path(args.out)
    stem = args.out.with_suffix("") if args.out.suffix in (".safetensors", ".json") else args.out
    if stem.is_dir():
        raise InputError(f"--out {args.out} is a folder; give a path stem inside it, e.g. {stem / 'classifier'}")
    _check_out(raw, [stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")],
               args.overwrite or args.resume, "classifier")

    known = loss_defaults(args.method)
    given = {dest: getattr(args, dest) for _, dest, _, _ in _HPARAMS if getattr(args, dest) is not None}
    wrong = sorted(set(given) - set(known))
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise InputError(f"{flags} do(es) not apply to --method {args.method}; drop them or pick another method")
    config = ClassifierTrainConfig(
        arch=args.arch, dataset=args.dataset, method=args.method, sigma=args.sigma, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        seed=args.seed, hparams=given, init=str(args.init) if args.init else None,
        purify=str(args.purify) if args.purify else None, purify_sigma=args.purify_sigma,
        data_dir=str(args.data_dir) if args.data_dir else None, train_limit=args.train_limit,
    )
    result = train_classifier(config, args.out, checkpoint_dir=args.checkpoint_dir, device=args.device,
                              resume=args.resume, quiet=args.quiet, eval_limit=args.eval_limit)
    noisy = result.info.get("noisy_test_accuracy")
    print(f"wrote {result.path}; test accuracy {result.info['test_accuracy']:.4f}"
          + (f", under noise sigma={config.sigma:g}: {noisy:.4f}" if noisy is not None else ""))
    return 0


def _train_diffusion(args: argparse.Namespace) -> int:
    from diffsmooth.training import DiffusionTrainConfig, train_diffusion

    raw, args.out = args.out.rstrip("/") or args.out, Path(args.out)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file; the diffusion model is written as a folder, choose another path")
    _check_out(raw, [args.out / "config.json", args.out / "model.safetensors"],
               args.overwrite or args.resume, "diffusion model")

    config = DiffusionTrainConfig(
        dataset=args.dataset, variant=args.variant, num_channels=args.num_channels, channel_mult=args.channel_mult,
        num_res_blocks=args.num_res_blocks, attention_resolutions=args.attention_resolutions,
        num_heads=args.num_heads, dropout=args.dropout, schedule=args.schedule,
        diffusion_steps=args.diffusion_steps, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, ema=args.ema, amp=args.amp,
        seed=args.seed, data_dir=str(args.data_dir) if args.data_dir else None, train_limit=args.train_limit,
        norm_groups=args.norm_groups, focus_sigmas=args.focus_sigmas, focus_fraction=args.focus_fraction,
    )
    result = train_diffusion(config, args.out, checkpoint_dir=args.checkpoint_dir, device=args.device,
                             resume=args.resume, quiet=args.quiet, checkpoint_every=args.checkpoint_every,
                             stop_after=args.stop_after)
    done = "" if result.info["finished"] else f" (unfinished: step {result.info['steps_done']} of {config.steps})"
    print(f"wrote {result.path}; final mean loss {result.info['final_loss']:.4f}{done}")
    return 0
