"""diffsmooth: certified l2 robustness by randomized smoothing, with diffusion
purification and local smoothing (DiffSmooth) and its baselines behind one API.

The names below are imported lazily, so that ``import diffsmooth.stats`` or the
command line's ``--help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "SmoothedClassifier": "diffsmooth.smoothing",
    "Certificate": "diffsmooth.smoothing",
    "Prediction": "diffsmooth.smoothing",
    "SequentialCertificate": "diffsmooth.smoothing",
    "InputError": "diffsmooth.errors",
    "Gaussian": "diffsmooth.defenses",
    "DenoisedSmoothing": "diffsmooth.defenses",
    "DiffSmooth": "diffsmooth.defenses",
    "OneShotDenoiser": "diffsmooth.diffusion",
    "load_diffusion_model": "diffsmooth.diffusion",
    "adm_unet": "diffsmooth.diffusion",
    "create_classifier": "diffsmooth.classifiers",
    "load_classifier": "diffsmooth.classifiers",
    "save_classifier": "diffsmooth.classifiers",
    "load_dataset": "diffsmooth.data",
    "MultiStepDenoiser": "diffsmooth.diffusion",
    "save_diffusion_model": "diffsmooth.diffusion",
    "NoiseSchedule": "diffsmooth.diffusion",
    "train_classifier": "diffsmooth.training",
    "train_diffusion": "diffsmooth.training",
    "ClassifierTrainConfig": "diffsmooth.training",
    "DiffusionTrainConfig": "diffsmooth.training",
    "shipped_classifier": "diffsmooth.shipped",
    "shipped_diffusion": "diffsmooth.shipped",
    "accelerate": "diffsmooth.fast",
    "auto_batch_size": "diffsmooth.fast",
    "MethodSpec": "diffsmooth.methods",
    "build_base": "diffsmooth.methods",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'diffsmooth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
