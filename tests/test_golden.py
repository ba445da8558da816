"""Golden results of the shipped methods: any change to the noise streams, the chunking, the
packing or the models shows up here instead of passing silently.

The cases and how to rewrite the goldens after an intended change are in ``tests/golden.py``;
this module only compares.
"""

from __future__ import annotations

import pytest

from diffsmooth import shipped
from diffsmooth.cli import main
from diffsmooth.files import file_sha256
from diffsmooth.methods import MethodSpec, build_base

from golden import CASES, args, golden_path, without_time


@pytest.mark.parametrize("method", list(CASES))
def test_shipped_method_matches_its_golden_rows(tmp_path, fmnist_dir, method):
    golden = golden_path(method)
    assert golden.is_file(), f"{golden} is missing; write it with `.venv/bin/python tests/golden.py write`"
    out = tmp_path / f"{method}.tsv"
    assert main(args(method, fmnist_dir, out)) == 0
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
