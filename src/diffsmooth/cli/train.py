"""``diffsmooth train-diffusion``, ``train-classifier`` and ``train-denoiser``: parse, validate, call training.

Every option that sets a field of the run's config (``DiffusionTrainConfig``, ``ClassifierTrainConfig``,
``DenoiserTrainConfig``) is named after that field and takes its default from it, and the config is
built from the options of the same names, so that the library and the command line cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from diffsmooth import validate
from diffsmooth.cli.options import default_of
from diffsmooth.validate import InputError

Config = TypeVar("Config")

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


def _option(p: argparse.ArgumentParser, source: type | Callable[..., Any], flag: str, help: str,
            **kwargs: Any) -> None:
    """Add ``flag`` for the field or parameter of ``source`` that it names (``--batch-size``:
    ``batch_size``, or ``dest=``), with the library's default."""
    dest = kwargs.pop("dest", flag[2:].replace("-", "_"))
    p.add_argument(flag, dest=dest, default=default_of(source, dest), help=help, **kwargs)


def _config(config: type[Config], args: argparse.Namespace, **given: Any) -> Config:
    """``config`` from the options named as its fields (paths as text) and ``given``."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config) if hasattr(args, f.name)}
    values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
    return config(**values, **given)


def _common(p: argparse.ArgumentParser, config: type) -> None:
    """The options of every trainer: data, seed, device and the checkpoint / output handling."""
    _option(p, config, "--dataset", "dataset name (see diffsmooth.data.list_datasets)")
    _option(p, config, "--data-dir", "folder with the dataset files (default: searched)", type=Path)
    _option(p, config, "--seed", "seed of the data order and of all training noise", type=int)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="folder for the resumable training state (default: OUT.train next to --out)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the state in --checkpoint-dir")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace the model at --out and start afresh over an unfinished run's state")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _epoch_options(p: argparse.ArgumentParser, config: type, optimizer: str, recorded: str) -> None:
    """The options that train-classifier and train-denoiser share: the schedule of an epoch-based
    run with ``optimizer`` and the images used, defaults from ``config``."""
    _option(p, config, "--epochs", "training epochs", type=int)
    _option(p, config, "--batch-size", "images per step", type=int)
    _option(p, config, "--lr", f"{optimizer} learning rate (cosine decay to 0)", type=float)
    _option(p, config, "--weight-decay", f"{optimizer} weight decay", type=float)
    _option(p, config, "--train-limit", "use only the first N training images", type=int)
    p.add_argument("--eval-limit", type=int, default=None,
                   help=f"test images for the recorded {recorded} (default all)")


def register(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    from diffsmooth.training import (
        ClassifierTrainConfig,
        DenoiserTrainConfig,
        DiffusionTrainConfig,
        list_losses,
        loss_defaults,
    )

    method_defaults = "; ".join(f"{m}: " + (", ".join(f"{k}={v:g}" for k, v in loss_defaults(m).items()) or "none")
                                for m in list_losses())
    commands = (
        ("train-diffusion", DiffusionTrainConfig, _diffusion_options, _train_diffusion,
         "train a DDPM (epsilon prediction) for one-shot purification",
         "Train our ADM UNet as a DDPM: epsilon prediction, MSE, uniform or focused timesteps (--focus-sigmas), "
         "AdamW, EMA of the weights, optional bf16 autocast on CUDA. Writes a resumable state every "
         "--checkpoint-every steps and the EMA model to --out (config.json + model.safetensors, read by "
         "load_diffusion_model)."),
        ("train-classifier", ClassifierTrainConfig, _classifier_options, _train_classifier,
         "train a base classifier for randomized smoothing",
         "Train a classifier with Gaussian augmentation (Cohen et al.), SmoothAdv (Salman et al.), Consistency "
         "(Jeong & Shin), MACER (Zhai et al.) or SmoothMix (Jeong et al.); noise is drawn fresh every batch. Writes "
         "OUT.safetensors + OUT.json (read by load_classifier) and a resumable state after every epoch. Method "
         "defaults: " + method_defaults),
        ("train-denoiser", DenoiserTrainConfig, _denoiser_options, _train_denoiser,
         "train a DnCNN denoiser for denoised smoothing (Salman et al.)",
         "Train a DnCNN (depth 17, width 64) or DnCNN-wide (width 128) to remove N(0, sigma^2) noise in [0,1] "
         "pixels, with the MSE objective, the stability objective (cross-entropy of a frozen classifier on the "
         "denoised image against its clean prediction) or MSE then stability. Adam, cosine learning rate. Writes "
         "OUT.safetensors + OUT.json (read by load_denoiser and `certify --method denoised`) and a resumable state "
         "after every epoch."),
    )
    for name, config, add_options, run, summary, description in commands:
        p = sub.add_parser(name, formatter_class=formatter, help=summary, description=description)
        add_options(p, config)
        _common(p, config)
        p.set_defaults(func=run)


def _diffusion_options(d: argparse.ArgumentParser, config: type) -> None:
    from diffsmooth.training import train_diffusion

    d.add_argument("--out", required=True, help="output folder of the trained model")
    _option(d, config, "--variant", "UNet flag set: improved or guided")
    _option(d, config, "--num-channels", "base channel count of the UNet", type=int)
    _option(d, config, "--channel-mult", "channel multiplier per resolution")
    _option(d, config, "--num-res-blocks", "residual blocks per resolution", type=int)
    _option(d, config, "--attention-resolutions", "comma list of feature-map sizes with self-attention ('' for none)")
    _option(d, config, "--num-heads", "attention heads", type=int)
    _option(d, config, "--dropout", "dropout in residual blocks", type=float)
    _option(d, config, "--schedule", "noise schedule: cosine or linear")
    _option(d, config, "--diffusion-steps", "number of diffusion timesteps T", type=int)
    _option(d, config, "--steps", "optimizer steps in total", type=int)
    _option(d, config, "--batch-size", "images per step", type=int)
    _option(d, config, "--lr", "AdamW learning rate (cosine decay after warm-up)", type=float)
    _option(d, config, "--weight-decay", "AdamW weight decay", type=float)
    _option(d, config, "--warmup-steps", "linear learning-rate warm-up steps", type=int)
    _option(d, config, "--ema", "EMA decay of the weights", type=float)
    _option(d, config, "--amp", "bf16 autocast (CUDA only; ignored on CPU)", action="store_true")
    _option(d, config, "--norm-groups", "GroupNorm groups (default: the official 32)", type=int)
    _option(d, config, "--focus-sigmas", "smoothing sigmas (pixel units) whose t* range gets --focus-fraction of the "
            "timestep draws (default: uniform timesteps)", metavar="LO,HI")
    _option(d, config, "--focus-fraction", "share of timestep draws in the --focus-sigmas range, in (0, 1)", type=float)
    _option(d, config, "--train-limit", "train on the first N training images only (hold the rest out)", type=int)
    _option(d, train_diffusion, "--checkpoint-every", "steps between resumable checkpoints", type=int)
    _option(d, train_diffusion, "--stop-after", "end this call after N more steps (a multiple of "
            "--checkpoint-every), saving the model marked unfinished; continue later with --resume", type=int)


def _classifier_options(c: argparse.ArgumentParser, config: type) -> None:
    from diffsmooth.training import list_losses

    c.add_argument("--out", required=True, help="output path stem: writes OUT.safetensors and OUT.json")
    _option(c, config, "--method", "training objective", choices=list_losses())
    c.add_argument("--sigma", type=float, required=True, help="training noise std in [0,1] pixel units (0 = clean)")
    _option(c, config, "--arch", "classifier architecture (registry name)")
    _epoch_options(c, config, "SGD", "accuracies")
    _option(c, config, "--momentum", "SGD Nesterov momentum", type=float)
    for flag, dest, typ, text in _HPARAMS:
        c.add_argument(flag, dest=dest, type=typ, default=None, help=text + " (default: the method's)")
    _option(c, config, "--init", "start from this classifier checkpoint (fine-tuning)", type=Path)
    _option(c, config, "--finetune-on-purified", "diffusion model folder: train on purify(x + N(0, purify_sigma^2)) "
            "instead of x", dest="purify", metavar="DENOISER")
    _option(c, config, "--purify-sigma", "noise before purification (default: --sigma)", type=float)
    _option(c, config, "--purify-draws", "purify K noise draws per training image once, before training, and give "
            "each image of a batch one of them (default: purify every batch afresh)", type=int, metavar="K")
    _option(c, config, "--purify-cache", "keep the purified draws in DIR and reuse them in later runs with the same "
            "purifier, sigma, seed and images", metavar="DIR")


def _denoiser_options(n: argparse.ArgumentParser, config: type) -> None:
    n.add_argument("--out", required=True, help="output path stem: writes OUT.safetensors and OUT.json")
    _option(n, config, "--arch", "dncnn or dncnn-wide")
    _option(n, config, "--objective", "mse, stability or mse+stability")
    n.add_argument("--sigma", type=float, required=True, help="training noise std in [0,1] pixel units")
    _option(n, config, "--classifier", "frozen classifier for the stability objective (default on fashion-mnist: the "
            "shipped clean one)")
    _option(n, config, "--mse-epochs", "mse+stability: epochs of MSE before stability (default: half of --epochs)",
            type=int)
    _option(n, config, "--init", "start from this denoiser checkpoint (ours or Salman et al.'s)", type=Path)
    _option(n, config, "--depth", "convolutions (default: the arch's 17)", type=int)
    _option(n, config, "--width", "hidden channels (default: the arch's 64 or 128)", type=int)
    _epoch_options(n, config, "Adam", "numbers")


def _train_denoiser(args: argparse.Namespace) -> int:
    from diffsmooth.training import DenoiserTrainConfig, train_denoiser

    args.out = _model_out(args, "denoiser")
    config = _config(DenoiserTrainConfig, args)
    result = train_denoiser(config, args.out, checkpoint_dir=args.checkpoint_dir, device=args.device,
                            resume=args.resume, quiet=args.quiet, eval_limit=args.eval_limit)
    info = result.info
    accuracy = info.get("denoised_noisy_test_accuracy")
    print(f"wrote {result.path}; test MSE {info['test_mse']:.5f} (noisy input {info['test_mse_noisy_input']:.5f})"
          + (f", classifier accuracy on denoised noisy images {accuracy:.4f}" if accuracy is not None else ""))
    return 0


def _model_out(args: argparse.Namespace, what: str) -> Path:
    """The one check of a trainer's outputs, before anything loads: ``--out`` (a folder for the
    diffusion model, a path stem of OUT.safetensors + OUT.json otherwise) in a writable folder, no
    model replaced without ``--overwrite`` (or ``--resume``), and a ``--checkpoint-dir`` that can be
    written and holds no unfinished run unless ``--resume`` continues it or ``--overwrite`` starts
    afresh.  Returns the path to hand to the trainer."""
    from diffsmooth.training.loop import checkpoint_folder

    if what == "diffusion model":
        out = validate.output_folder(args.out, "--out")
        files = [out / "config.json", out / "model.safetensors"]
    else:
        stem = validate.output_stem(args.out, "--out")
        out, files = stem, [stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")]
    validate.not_replaced(files, args.overwrite or args.resume, what)
    state = validate.output_folder(checkpoint_folder(out, args.checkpoint_dir), "--checkpoint-dir")
    if (state / "state.json").exists() and not (args.resume or args.overwrite):
        raise InputError(f"an unfinished training run is in {state}: pass --resume to continue it or --overwrite "
                         "to start afresh")
    return out


def _train_classifier(args: argparse.Namespace) -> int:
    from diffsmooth.training import ClassifierTrainConfig, loss_defaults, train_classifier

    args.out = _model_out(args, "classifier")

    known = loss_defaults(args.method)
    given = {dest: getattr(args, dest) for _, dest, _, _ in _HPARAMS if getattr(args, dest) is not None}
    wrong = sorted(set(given) - set(known))
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise InputError(f"{flags} do(es) not apply to --method {args.method}; drop them or pick another method")
    config = _config(ClassifierTrainConfig, args, hparams=given)
    if args.purify_cache is not None:
        validate.output_folder(args.purify_cache, "--purify-cache")
    result = train_classifier(config, args.out, checkpoint_dir=args.checkpoint_dir, device=args.device,
                              resume=args.resume, quiet=args.quiet, eval_limit=args.eval_limit)
    noisy = result.info.get("noisy_test_accuracy")
    print(f"wrote {result.path}; test accuracy {result.info['test_accuracy']:.4f}"
          + (f", under noise sigma={config.sigma:g}: {noisy:.4f}" if noisy is not None else ""))
    return 0


def _train_diffusion(args: argparse.Namespace) -> int:
    from diffsmooth.training import DiffusionTrainConfig, train_diffusion

    args.out = _model_out(args, "diffusion model")

    config = _config(DiffusionTrainConfig, args)
    result = train_diffusion(config, args.out, checkpoint_dir=args.checkpoint_dir, device=args.device,
                             resume=args.resume, quiet=args.quiet, checkpoint_every=args.checkpoint_every,
                             stop_after=args.stop_after)
    done = "" if result.info["finished"] else f" (unfinished: step {result.info['steps_done']} of {config.steps})"
    print(f"wrote {result.path}; final mean loss {result.info['final_loss']:.4f}{done}")
    return 0
