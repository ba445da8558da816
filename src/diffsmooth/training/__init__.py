"""Training: DDPM denoisers and base classifiers for randomized smoothing.

``train_classifier(ClassifierTrainConfig(...), out)`` with the methods of ``losses``
(gaussian, smoothadv, consistency, macer, smoothmix), ``train_denoiser(DenoiserTrainConfig(...), out)``
(DnCNN for Denoised Smoothing) and ``train_diffusion(DiffusionTrainConfig(...), out)``;
all write resumable safetensors + JSON states and final artifacts that the loaders read.
"""

from diffsmooth.training.classifier import ClassifierTrainConfig, accuracy, train_classifier
from diffsmooth.training.denoiser import (
                                         DenoiserTrainConfig,
                                         denoiser_mse_loss,
                                         denoiser_stability_loss,
                                         evaluate_denoiser,
                                         train_denoiser,
)
from diffsmooth.training.diffusion import (
                                         DiffusionTrainConfig,
                                         DiffusionTrainResult,
                                         ddpm_loss,
                                         ema_update,
                                         sample_timesteps,
                                         timestep_probabilities,
                                         train_diffusion,
)
from diffsmooth.training.loop import TrainResult
from diffsmooth.training.losses import (
                                         LossInput,
                                         LossOutput,
                                         consistency_terms,
                                         get_loss,
                                         list_losses,
                                         loss_defaults,
                                         macer_radius_term,
                                         register_loss,
                                         smoothadv_attack,
                                         smoothed_soft_loss,
                                         smoothmix_attack,
                                         smoothmix_mixup,
)

__all__ = [
    "ClassifierTrainConfig", "DiffusionTrainConfig", "DiffusionTrainResult", "ddpm_loss", "ema_update",
    "train_diffusion", "LossInput", "LossOutput", "TrainResult", "accuracy", "consistency_terms", "get_loss",
    "list_losses", "loss_defaults", "macer_radius_term", "register_loss", "smoothadv_attack",
    "smoothed_soft_loss", "train_classifier", "sample_timesteps", "timestep_probabilities",
    "DenoiserTrainConfig", "denoiser_mse_loss", "denoiser_stability_loss",
    "evaluate_denoiser", "train_denoiser", "smoothmix_attack", "smoothmix_mixup",
]
