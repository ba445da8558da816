"""Trained denoisers for Denoised Smoothing (Salman et al., NeurIPS 2020): DnCNN and DnCNN-wide.

``create_dncnn("dncnn" | "dncnn-wide", in_channels)`` builds one; ``save_denoiser`` /
``load_denoiser`` write and read our safetensors + JSON format, and ``load_denoiser`` also reads
Salman et al.'s torch checkpoints (weights only, strict keys, DataParallel ``module.`` accepted).
A denoiser maps noisy images in [0,1] pixels to denoised ones, like the diffusion purifiers.
"""

from diffsmooth.denoisers.checkpoint import SALMAN_ARCHS, load_denoiser, save_denoiser
from diffsmooth.denoisers.dncnn import PRESETS, DnCNN, DnCNNConfig, create_dncnn

__all__ = ["PRESETS", "SALMAN_ARCHS", "DnCNN", "DnCNNConfig", "create_dncnn", "load_denoiser", "save_denoiser"]
