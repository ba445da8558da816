"""Hugging Face transformers image classifiers: a saved folder loads into a ``Classifier`` whose logits
are transformers' own forward on the same resized, normalized input; bad folders are refused."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers  # the test extra installs it: pip install -e '.[test]'

from diffsmooth.classifiers import load_classifier, save_classifier
from diffsmooth.classifiers.transformers_models import labels
from diffsmooth.cli import main
from diffsmooth.files import file_sha256
from diffsmooth.validate import InputError

from tiny_checkpoints import tiny_convnext, tiny_vit, transformers_folder

CLASSES = [f"class{k}" for k in range(10)]

CASES = {
    "vit-3ch": (tiny_vit, 3, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], {"height": 32, "width": 32}, 32),
    "vit-1ch": (tiny_vit, 1, [0.3], [0.2], {"height": 32, "width": 32}, 32),
    "convnext-3ch": (tiny_convnext, 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], {"shortest_edge": 24}, 24),
    "convnext-1ch": (tiny_convnext, 1, [0.3], [0.2], {"shortest_edge": 24}, 24),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: transformers_folder(root / name, make(channels), mean, std, size)
            for name, (make, channels, mean, std, size, _) in CASES.items()}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list(CASES))
def test_logits_equal_transformers_forward_on_the_resized_normalized_input(folders, name):
    _, channels, mean, std, _, size = CASES[name]
    model = load_classifier(folders[name])
    assert (model.config.arch, model.config.num_classes, model.config.in_channels) == ("transformers", 10, channels)
    assert model.config.image_size == size and model.config.mean == tuple(mean) and model.config.std == tuple(std)
    assert not model.training and model.checkpoint_path == str(folders[name] / "model.safetensors")
    reference = transformers.AutoModelForImageClassification.from_pretrained(folders[name]).eval()
    x = torch.rand(3, channels, 28, 28, generator=torch.Generator().manual_seed(1))  # pixels in [0,1]
    resized = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    normalized = (resized - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        ours, theirs = model(x), reference(pixel_values=normalized).logits
        assert rel_l2(ours, theirs) < 1e-5
        # At the model's own size nothing is resized.
        at_size = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(2))
        plain = (at_size - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        assert rel_l2(model(at_size), reference(pixel_values=plain).logits) < 1e-5


def test_labels_and_manifest_facts(folders):
    model = load_classifier(folders["vit-3ch"])
    assert labels(model) == CLASSES
    assert model.training_info == {"model_type": "vit", "architecture": "ViTForImageClassification",
                                   "folder": str(folders["vit-3ch"])}
    assert model.config.extra["hf_config"]["model_type"] == "vit"
    json.dumps(model.config.to_dict())  # goes into manifests as it is


def test_weights_only_bin_loads_like_the_safetensors(folders, tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((folders["vit-1ch"] / name).read_bytes())
    torch.save(load_file(folders["vit-1ch"] / "model.safetensors"), folder / "pytorch_model.bin")
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(load_classifier(folder)(x), load_classifier(folders["vit-1ch"])(x))


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').close()",))


def test_pickled_bin_is_refused_not_executed(folders, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((folders["vit-3ch"] / name).read_bytes())
    target = tmp_path / "pwned"
    torch.save({"classifier.weight": _Evil(target)}, folder / "pytorch_model.bin")
    with pytest.raises(InputError, match="refused to load .*pytorch_model.bin"):
        load_classifier(folder)
    assert not target.exists()
    pickle.loads(pickle.dumps(_Evil(target)))  # control: the payload does run when unpickled naively
    assert target.exists()


def test_save_classifier_round_trip(folders, tmp_path):
    model = load_classifier(folders["convnext-3ch"])
    loaded = load_classifier(save_classifier(tmp_path / "mine", model))
    assert (loaded.config.arch, loaded.config.image_size, loaded.config.mean) == ("transformers", 24, model.config.mean)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_folders_that_do_not_fit_are_refused_with_the_fix(folders, tmp_path):
    with pytest.raises(InputError, match="classifies 10 labels .*not 5"):
        load_classifier(folders["vit-3ch"], num_classes=5)
    with pytest.raises(InputError, match="drop arch="):
        load_classifier(folders["vit-3ch"], arch="cifar_resnet20")

    def copy(name: str, drop: str = "") -> Path:
        folder = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for file in folders[name].iterdir():
            if file.name != drop:
                (folder / file.name).write_bytes(file.read_bytes())
        return folder

    with pytest.raises(InputError, match="lacks preprocessor_config.json"):
        load_classifier(copy("vit-3ch", "preprocessor_config.json"))
    with pytest.raises(InputError, match="has no model.safetensors or pytorch_model.bin"):
        load_classifier(copy("vit-3ch", "model.safetensors"))
    # Weights of another model under this config: the keys are named, nothing is half-loaded.
    mixed = copy("vit-3ch")
    (mixed / "model.safetensors").write_bytes((folders["convnext-3ch"] / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match="does not fit the ViTForImageClassification .*missing .*unexpected"):
        load_classifier(mixed)
    odd = copy("vit-3ch")
    doc = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**doc, "model_type": "my_custom_net"}))
    with pytest.raises(InputError, match="'my_custom_net' is not an image classifier .*custom code is never run"):
        load_classifier(odd)
    zero = copy("vit-3ch")
    doc = json.loads((zero / "preprocessor_config.json").read_text())
    (zero / "preprocessor_config.json").write_text(json.dumps({**doc, "image_std": [0.0, 0.0, 0.0]}))
    with pytest.raises(InputError, match=r"preprocessor_config\.json: image_std must be finite and > 0 per channel .*"
                                         r"std \[0\.0, 0\.0, 0\.0\]; fix the file"):
        load_classifier(zero)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="is a folder but not a transformers image-classification folder"):
        load_classifier(tmp_path / "empty")


def test_without_transformers_the_error_says_how_to_install_it(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(InputError, match=r"pip install 'diffsmooth\[hub\]'"):
        load_classifier(folders["vit-3ch"])


# ---- the command line ----------------------------------------------------------------------------


def certify_args(fmnist_dir: Path, folder: Path, out: Path) -> list[str]:
    return ["certify", "--method", "rs", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--sigma", "0.25",
            "--classifier", str(folder), "--n0", "10", "--n", "20", "--max", "2", "--device", "cpu", "--quiet",
            "--out", str(out)]


def test_certify_with_a_transformers_folder_end_to_end(tmp_path, fmnist_dir, folders):
    out = tmp_path / "vit.tsv"
    assert main(certify_args(fmnist_dir, folders["vit-1ch"], out)) == 0  # 28 px images, resized to the ViT's 32
    assert [line.split("\t")[0] for line in out.read_text().splitlines()] == ["idx", "0", "1"]
    classifier = json.loads((tmp_path / "vit.tsv.json").read_text())["base"]["classifier"]
    assert classifier["arch"] == "transformers" and classifier["image_size"] == 32
    assert classifier["sha256"] == file_sha256(folders["vit-1ch"] / "model.safetensors")


def test_folders_that_do_not_fit_the_dataset_are_one_line_and_exit_2(tmp_path, fmnist_dir, folders, capsys):
    five = transformers_folder(tmp_path / "five", tiny_vit(1, labels=5), [0.5], [0.5], {"height": 32, "width": 32})
    evil = tmp_path / "evil"
    evil.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (evil / name).write_bytes((folders["vit-1ch"] / name).read_bytes())
    torch.save({"classifier.weight": _Evil(tmp_path / "pwned")}, evil / "pytorch_model.bin")
    capsys.readouterr()  # save_pretrained's progress bar
    cases = [(five, "gives (5,) scores per image but the dataset has 10 classes"),  # labels
             (folders["vit-3ch"], "expects 3-channel images but the input gives 1"),  # channels
             (evil, "refused to load")]  # pickled code
    for folder, phrase in cases:
        out = tmp_path / "out.tsv"
        assert main(certify_args(fmnist_dir, folder, out)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and phrase in err, err
        assert not out.exists() and not (tmp_path / "out.tsv.json").exists()
    assert not (tmp_path / "pwned").exists()
