"""diffsmooth: certified l2 robustness by randomized smoothing, with diffusion
purification and local smoothing (DiffSmooth) and its baselines behind one API.

The names below are imported lazily, so that ``import diffsmooth.stats`` or the
command line's ``--help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_GROUPS: dict[str, dict[str, str]] = {
    # Certification: the smoothed classifier and its typed results.
    "certify": {"SmoothedClassifier": "diffsmooth.smoothing", "Certificate": "diffsmooth.smoothing",
                "Prediction": "diffsmooth.smoothing", "SequentialCertificate": "diffsmooth.smoothing"},
    # Methods: one spec builds a base classifier h, a grid of them, or the smoothed classifier g.
    "methods": {"MethodSpec": "diffsmooth.methods", "build_base": "diffsmooth.methods",
                "build_grid": "diffsmooth.methods", "build_smoothed": "diffsmooth.methods",
                "Gaussian": "diffsmooth.defenses", "DenoisedSmoothing": "diffsmooth.defenses",
                "DiffSmooth": "diffsmooth.defenses", "DensePure": "diffsmooth.defenses",
                "Grid": "diffsmooth.defenses"},
    # Models: diffusion purifiers and classifiers, their files, the shipped ones.
    "models": {"load_diffusion_model": "diffsmooth.diffusion", "save_diffusion_model": "diffsmooth.diffusion",
               "OneShotDenoiser": "diffsmooth.diffusion", "MultiStepDenoiser": "diffsmooth.diffusion",
               "NoiseSchedule": "diffsmooth.diffusion", "adm_unet": "diffsmooth.diffusion",
               "create_classifier": "diffsmooth.classifiers", "load_classifier": "diffsmooth.classifiers",
               "save_classifier": "diffsmooth.classifiers", "shipped_classifier": "diffsmooth.shipped",
               "shipped_diffusion": "diffsmooth.shipped", "accelerate": "diffsmooth.fast",
               "create_dncnn": "diffsmooth.denoisers", "load_denoiser": "diffsmooth.denoisers",
               "save_denoiser": "diffsmooth.denoisers"},
    # Data and runs: datasets, run specs, the purification picture.
    "runs": {"load_dataset": "diffsmooth.data", "RunSpec": "diffsmooth.runner",
             "purification_grid": "diffsmooth.purification"},
    # Training.
    "training": {"train_classifier": "diffsmooth.training", "train_diffusion": "diffsmooth.training",
                 "ClassifierTrainConfig": "diffsmooth.training", "DiffusionTrainConfig": "diffsmooth.training",
                 "train_denoiser": "diffsmooth.training", "DenoiserTrainConfig": "diffsmooth.training"},
    # Attacks and audits.
    "attacks": {"AttackConfig": "diffsmooth.attacks", "attack": "diffsmooth.attacks",
                "empirical_accuracy": "diffsmooth.attacks", "audit": "diffsmooth.attacks"},
    "errors": {"InputError": "diffsmooth.validate"},
}
_EXPORTS = {name: module for group in _GROUPS.values() for name, module in group.items()}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'diffsmooth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
