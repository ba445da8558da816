"""Paths of the models that ship inside the package (``diffsmooth/weights/``).

The files are data, trained by ``scripts/train_shipped.sh`` (see MODEL_CARD.md):
``fmnist_ddpm/`` (config.json + model.safetensors, read by ``load_diffusion_model``) and
``fmnist_cnn_<method>[_<sigma>]`` (.safetensors + .json, read by ``load_classifier``) and
``fmnist_dncnn_<sigma>`` (.safetensors + .json, read by ``load_denoiser``).
These helpers only return paths; loading stays with the loaders.
"""

from __future__ import annotations

from pathlib import Path

from diffsmooth.validate import InputError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def list_shipped() -> list[str]:
    """Names of the shipped models present in this installation, sorted."""
    if not WEIGHTS_DIR.is_dir():
        return []
    names = {p.stem for p in WEIGHTS_DIR.glob("*.safetensors")}
    names |= {p.name for p in WEIGHTS_DIR.iterdir() if (p / "config.json").is_file()}
    return sorted(names)


def shipped_path(name: str) -> Path:
    """The path of shipped model ``name``: a directory for diffusion models, else the ``.safetensors`` file.

    Raises ``InputError`` listing the shipped names when ``name`` is not there.
    """
    directory = WEIGHTS_DIR / name
    if (directory / "config.json").is_file():
        return directory
    weights = WEIGHTS_DIR / f"{name}.safetensors"
    if weights.is_file() and weights.with_suffix(".json").is_file():
        return weights
    known = ", ".join(list_shipped()) or "none (run scripts/train_shipped.sh)"
    raise InputError(f"no shipped model {name!r}; shipped: {known}")


def resolve_model(source: str, what: str) -> Path:
    """Where model ``source`` is: the path as given, the ``.safetensors`` of a model saved under that
    name (what a trainer's ``--out`` names), or the shipped model of that name.

    ``what`` names the option in the error (``"denoiser"``, ``"classifier"`` ...); raises
    ``InputError`` listing the shipped names when none of these exists."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    saved = path.with_name(path.name + ".safetensors")
    if path.name and saved.is_file():
        return saved
    if source in list_shipped():
        return shipped_path(source)
    raise InputError(f"{what} {source!r} is neither an existing path nor a shipped model "
                     f"({', '.join(list_shipped())}); check the path")


def classifier_name(method: str = "clean", sigma: float = 0.0, arch: str = "fmnist_cnn") -> str:
    """The shipped name of the classifier trained with ``method`` at noise ``sigma``, shipped or not:
    ``"fmnist_cnn_clean"`` (sigma ignored) or ``"fmnist_cnn_<method>_<sigma:.2f>"``."""
    return f"{arch}_clean" if method == "clean" else f"{arch}_{method}_{float(sigma):.2f}"


def shipped_classifier(method: str = "clean", sigma: float = 0.0, arch: str = "fmnist_cnn") -> Path:
    """Path of the shipped classifier trained with ``method`` at noise ``sigma``.

    ``method``: ``"clean"`` (sigma ignored) or a training method (``"gaussian"``,
    ``"consistency"`` ...) with its sigma, e.g. ``shipped_classifier("gaussian", 0.25)``.
    """
    return shipped_path(classifier_name(method, sigma, arch))


def shipped_diffusion(name: str = "fmnist_ddpm") -> Path:
    """Directory of the shipped diffusion model (pass it to ``load_diffusion_model``)."""
    return shipped_path(name)


def shipped_denoiser(sigma: float, arch: str = "fmnist_dncnn") -> Path:
    """Path of the shipped DnCNN denoiser trained at noise ``sigma`` (read by ``load_denoiser``)."""
    return shipped_path(f"{arch}_{float(sigma):.2f}")
