"""Golden results of the shipped methods: any change to the noise streams, the chunking, the
packing or the models shows up here instead of passing silently.

Each shipped method certifies three images of the synthetic Fashion-MNIST fixture (n0 = 10,
n = 70 with batch 32: full chunks, remainders packed across images).  The TSVs in
``tests/fixtures/golden/`` were written by this code; after an intended change (new shipped
models, a new noise scheme) rewrite them with ``DIFFSMOOTH_WRITE_GOLDEN=1`` and say why in the
commit.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diffsmooth import shipped
from diffsmooth.cli import main
from diffsmooth.files import file_sha256
from diffsmooth.methods import MethodSpec, build_base

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
METHODS = ("rs", "dds", "diffsmooth")


def without_time(text: str) -> list[list[str]]:
    return [line.split("\t")[:-1] for line in text.splitlines()]


@pytest.mark.parametrize("method", METHODS)
def test_shipped_method_matches_its_golden_rows(tmp_path, fmnist_dir, method):
    out = tmp_path / f"{method}.tsv"
    assert main(["certify", "--method", method, "--data-dir", str(fmnist_dir), "--sigma", "0.25", "--n0", "10",
                 "--n", "70", "--batch", "32", "--max", "3", "--m", "3", "--seed", "11", "--device", "cpu",
                 "--quiet", "--out", str(out)]) == 0
    golden = GOLDEN / f"{method}_sigma0.25.tsv"
    if os.environ.get("DIFFSMOOTH_WRITE_GOLDEN") == "1":
        golden.write_text(out.read_text())
    assert without_time(out.read_text()) == without_time(golden.read_text())


@pytest.mark.parametrize("method,classifier,denoiser", [
    ("rs", ("gaussian", 0.25), None),
    ("dds", ("clean", 0.0), "fmnist_ddpm"),
    ("diffsmooth", ("gaussian", 0.25), "fmnist_ddpm"),
])
def test_each_method_picks_its_documented_shipped_models(method, classifier, denoiser):
    """methods.py's docstring: RS uses the Gaussian classifier for sigma, DDS the clean one, DiffSmooth
    the Gaussian classifier for local_sigma; DDS and DiffSmooth the shipped DDPM."""
    spec = MethodSpec(method, "fashion-mnist", 0.5 if method == "diffsmooth" else 0.25, local_sigma=0.25, m=2)
    info = build_base(spec).describe()
    assert info["classifier"]["sha256"] == file_sha256(shipped.shipped_classifier(*classifier))
    if denoiser is not None:
        assert info["denoiser"]["sha256"] == file_sha256(shipped.shipped_diffusion(denoiser) / "model.safetensors")
