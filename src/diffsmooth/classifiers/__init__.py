"""Base classifiers f: (B, C, H, W) images in [0,1] pixels -> logits (B, num_classes).

Every model is a ``Classifier`` = ``nn.Sequential(NormalizeLayer, net)`` so that
smoothing noise is added before normalization and state-dict keys match Cohen et al.'s
checkpoints (``1.*``). Models are built by name (``create_classifier``), loaded from
Cohen/SmoothAdv, timm/torchvision, Hugging Face transformers folders or our safetensors+JSON files
(``load_classifier``) and saved with ``save_classifier``. Registered: ``cifar_resnet20``,
``cifar_resnet110``, ``resnet50``, ``beit_large_patch16_224``, ``vit_base_patch16_224``, ``fmnist_cnn``,
``transformers`` (built from a transformers config).
"""

from diffsmooth.classifiers.config import ClassifierConfig
from diffsmooth.classifiers.normalize import NormalizeLayer
from diffsmooth.classifiers.registry import (
    Classifier,
    create_classifier,
    list_classifiers,
    register_classifier,
)

# Importing the architecture modules registers them.
from diffsmooth.classifiers import (  # noqa: F401  isort: skip
    cifar_resnet, small_cnn, timm_models, torchvision_models, transformers_models,
)
from diffsmooth.classifiers.checkpoint import load_classifier, save_classifier
from diffsmooth.files import file_sha256

__all__ = [
    "Classifier",
    "ClassifierConfig",
    "NormalizeLayer",
    "create_classifier",
    "file_sha256",
    "list_classifiers",
    "load_classifier",
    "register_classifier",
    "save_classifier",
]
