"""Named recipes: every value against the reference scripts it was read from, the t* each implies,
`diffsmooth recipes`, --recipe end to end on CPU with small checkpoints of the reference layout,
explicit options over recipe values (recorded in the manifest), and refusals (exit 2, one line, no file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffsmooth.cli import main
from diffsmooth.diffusion.presets import get_preset
from diffsmooth.methods import MethodSpec
from diffsmooth.recipes import SETTINGS, get_recipe, list_recipes, resolve
from diffsmooth.runner import RunSpec
from diffsmooth.validate import InputError

from tiny_checkpoints import COHEN_R20, FIXTURES, improved_ddpm, tiny_vit, transformers_folder, write_cifar

# The values as read in the reference repositories (commits in recipes.json), transcribed independently of
# recipes.json: {recipe: {section: {name: (value, "owner/repository:path")}}}.
DS, DDS, DP, COHEN = "javyduck/DiffSmooth", "ethz-spylab/diffusion_denoised_smoothing", "Jayfeather1024/DensePure", \
    "locuslab/smoothing"
DS_RUN = {  # certify.py: --N0 100 --N 10000 --alpha 0.001 --batch 50 --skip 100; README: --m 5 --local_noise_sd 0.25;
    # architectures.py: softmax average over the m copies, fix_local_noise=True, seed=42
    "method": ("diffsmooth", f"{DS}:certify.py"), "n0": (100, f"{DS}:certify.py"), "n": (10000, f"{DS}:certify.py"),
    "alpha": (0.001, f"{DS}:certify.py"), "batch_size": (50, f"{DS}:certify.py"), "skip": (100, f"{DS}:certify.py"),
    "m": (5, f"{DS}:README.md"), "local_sigma": (0.25, f"{DS}:README.md"), "vote": ("soft", f"{DS}:architectures.py"),
    "local_noise": ("fixed", f"{DS}:architectures.py"), "local_noise_seed": (42, f"{DS}:architectures.py")}
DS_PREDICT = {  # predict.py: --N 100000 --batch 1000 --skip 1 --alpha 0.001
    "n": (100000, f"{DS}:predict.py"), "batch_size": (1000, f"{DS}:predict.py"), "skip": (1, f"{DS}:predict.py"),
    "alpha": (0.001, f"{DS}:predict.py")}
DS_CIFAR = {"files": {"denoiser": ("pretrained_models/cifar10_uncond_50M_500K.pt", f"{DS}:architectures.py"),
                      "classifier": ("pretrained_models/cohen/models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar",
                                     f"{DS}:README.md")},
            "info": {"denoiser_preset": ("improved-cifar10-uncond", f"{DS}:cifar_ddpm.py"),
                     "classifier_input_size": (32, f"{DS}:architectures.py")}}
DS_IMAGENET = {"files": {"denoiser": ("pretrained_models/256x256_diffusion_uncond.pt", f"{DS}:architectures.py"),
                         "classifier": ("pretrained_models/beit_large_patch16_224/noise_sd0.25/checkpoint.pth.tar",
                                        f"{DS}:README.md")},
               "info": {"denoiser_preset": ("guided-imagenet256-uncond", f"{DS}:imagenet_gdm.py"),
                        "classifier_input_size": (224, f"{DS}:architectures.py")}}


def _diffsmooth(dataset: str, sigma: float, t_star: int) -> dict:
    data = DS_CIFAR if dataset == "cifar10" else DS_IMAGENET
    sigma_source = f"{DS}:README.md" if sigma == 0.5 else f"{DS}:certify.py"  # the README's example is 0.50
    schedule_file = "cifar_ddpm.py" if dataset == "cifar10" else "imagenet_gdm.py"
    # The README pairs the noise_0.25 classifier with local sigma 0.25 at sigma 0.50 only: elsewhere it is ours.
    ours = {} if sigma == 0.5 else {"pairing": ("classifier trained at 0.25, local sigma 0.25", f"{DS}:README.md")}
    return {"settings": {**DS_RUN, "dataset": (dataset, f"{DS}:README.md"), "sigma": (sigma, sigma_source)},
            "predict": DS_PREDICT, "files": data["files"],
            "info": {**data["info"], "t_star": (t_star, f"{DS}:{schedule_file}")}, "asks": [], "differs": {}, "ours": ours}


def _blur_offset(dataset: str, t_star: int) -> dict:
    """The README's 'fine-tuned setting to offset blurring effect': local sigma 0.26 at sigma 0.50."""
    plain = _diffsmooth(dataset, 0.5, t_star)
    return {**plain, "settings": {**plain["settings"], "local_sigma": (0.26, f"{DS}:README.md")}}


# What DensePure's runs do that its recipes do not (runners/diffpure_ddpm_densepure.py --use_t_steps; the
# learn_sigma checkpoints' LEARNED_RANGE variance; merge_results.py's max(list, key=list.count)).
DP_DIFFERS = {
    "steps": ("--num_t_steps k: k network calls at t*, t* - t*/k, ..., t*/k, x0 from the last",
              f"{DP}:runners/diffpure_ddpm_densepure.py"),
    "reverse_variance": ("the model's learned variance (learn_sigma checkpoints, LEARNED_RANGE)",
                         f"{DP}:improved_diffusion/script_util.py"),
    "vote_ties": ("the earliest run's label", f"{DP}:results/merge_results.py"),
}

REFERENCE = {
    **{f"diffsmooth-cifar10-{s:.2f}": _diffsmooth("cifar10", s, t) for s, t in ((0.25, 1158), (0.5, 1984), (1.0, 2809))},
    **{f"diffsmooth-imagenet-{s:.2f}": _diffsmooth("imagenet", s, t) for s, t in ((0.25, 145), (0.5, 259), (1.0, 396))},
    "diffsmooth-cifar10-0.50-blur-offset": _blur_offset("cifar10", 1984),
    "diffsmooth-imagenet-0.50-blur-offset": _blur_offset("imagenet", 259),
    # README evaluation commands: CIFAR-10 --skip 1 --N0 100 --N 100000 --batch_size 200;
    # ImageNet --skip 50 --N0 100 --N 10000 --batch_size 200; alpha: the scripts' default 0.001.
    **{f"dds-{data}": {"settings": {
        "method": ("dds", f"{DDS}:cifar10/DRM.py"), "dataset": (data, f"{DDS}:{data}/certify.py"),
        "n0": (100, f"{DDS}:README.md"), "n": (n, f"{DDS}:README.md"), "alpha": (0.001, f"{DDS}:{data}/certify.py"),
        "batch_size": (200, f"{DDS}:README.md"), "skip": (skip, f"{DDS}:README.md")}, "predict": {},
        "files": {"denoiser": (denoiser, f"{DDS}:{data}/DRM.py"), "classifier": (classifier, f"{DDS}:{data}/DRM.py")},
        "info": {"classifier_input_size": (size, f"{DDS}:{data}/DRM.py")}, "asks": ["sigma"], "ours": {},
        # q_sample's noise at the first t with ratio >= 2 sigma: up to 0.63% above sigma; we add exactly sigma.
        "differs": {"smoothing_noise": ("q_sample at the first t with sqrt(1 - abar_t) / sqrt(abar_t) >= 2 sigma",
                                        f"{DDS}:{data}/certify.py")}}
        for data, n, skip, denoiser, classifier, size in (
            ("cifar10", 100000, 1, "cifar10/cifar10_uncond_50M_500K.pt",
             "aaraki/vit-base-patch16-224-in21k-finetuned-cifar10", 224),
            ("imagenet", 10000, 50, "imagenet/256x256_diffusion_uncond.pt",
             "timm beit_large_patch16_512 (pretrained weights)", 512))},
    # run_scripts/densepure_*.sh: --N 100000 / 10000, --N0 100, --certified_batch 100 / 16, --sample_id every 20th /
    # 500th; results/merge_results.py: alpha 0.001, --majority_vote_num 10; the runner's reverse steps are stochastic.
    **{f"densepure-{data}": {"settings": {
        "method": ("densepure", f"{DP}:README.md"), "dataset": (data, f"{DP}:run_scripts/densepure_{data}.sh"),
        "n0": (100, f"{DP}:results/merge_results.py"), "n": (n, f"{DP}:run_scripts/densepure_{data}.sh"),
        "alpha": (0.001, f"{DP}:results/merge_results.py"), "batch_size": (batch, f"{DP}:run_scripts/densepure_{data}.sh"),
        "skip": (skip, f"{DP}:run_scripts/densepure_{data}.sh"), "runs": (10, f"{DP}:results/merge_results.py"),
        "reverse_chain": ("ddpm", f"{DP}:runners/diffpure_ddpm_densepure.py")}, "predict": {},
        "files": {"denoiser": (denoiser, f"{DP}:{runner}"), "classifier": (classifier, f"{DP}:eval_certified_densepure.py")},
        "info": {"classifier_input_size": (size, f"{DP}:eval_certified_densepure.py")}, "asks": ["sigma", "steps"],
        "ours": {"runs": (10, f"{DP}:results/merge_results.py")},
        "differs": {**DP_DIFFERS, **differs}}
        for data, n, batch, skip, denoiser, runner, classifier, size, differs in (
            ("cifar10", 100000, 100, 20, "pretrained/cifar10_uncond_50M_500K.pt", "runners/diffpure_ddpm_densepure.py",
             "aaraki/vit-base-patch16-224-in21k-finetuned-cifar10", 224, {
                 "t_star": ("nearest step of the closed-form cosine inverse (1159 / 1984 / 2810 at sigma 0.25 / 0.5 / "
                            "1.0)", f"{DP}:runners/diffpure_ddpm_densepure.py"),
                 "classifier_resize": ("the ViT's AutoFeatureExtractor on the reversed images (PIL resize to 224)",
                                       f"{DP}:eval_certified_densepure.py")}),
            ("imagenet", 10000, 16, 500, "pretrained/256x256_diffusion_uncond.pt", "runners/diffpure_guided_densepure.py",
             "pretrained/beit_large_patch16_512_pt22k_ft22kto1k.pth", 512, {
                 "t_star": ("nearest step of the 1000-step linear schedule (144 / 258 / 396 at sigma 0.25 / 0.5 / 1.0)",
                            f"{DP}:runners/diffpure_guided_densepure.py"),
                 "crop": ("Resize(256, bicubic) + CenterCrop(256)", f"{DP}:datasets.py"),
                 "precision": ("float16 diffusion model", f"{DP}:configs/imagenet.yml")}))},
    # code/certify.py: --N0 100 --N 100000 --alpha 0.001; experiments.MD: --batch 400, --skip 20 (CIFAR-10) / 100
    # (ImageNet); code/predict.py: --N 100000 --alpha 0.001 --batch 1000 --skip 1; ImageNet predictions --skip 100 --batch 400.
    **{f"cohen-{data}": {"settings": {
        "method": ("rs", f"{COHEN}:code/certify.py"), "dataset": (data, f"{COHEN}:experiments.MD"),
        "n0": (100, f"{COHEN}:code/certify.py"), "n": (100000, f"{COHEN}:code/certify.py"),
        "alpha": (0.001, f"{COHEN}:code/certify.py"), "batch_size": (400, f"{COHEN}:experiments.MD"),
        "skip": (skip, f"{COHEN}:experiments.MD")},
        "predict": {"n": (100000, f"{COHEN}:code/predict.py"), "alpha": (0.001, f"{COHEN}:code/predict.py"), **predict},
        "files": {"classifier": (classifier, f"{COHEN}:experiments.MD")},
        "info": {"sigmas": (sigmas, f"{COHEN}:experiments.MD")}, "asks": ["sigma"], "differs": {}, "ours": {}}
        for data, skip, predict, classifier, sigmas in (
            ("cifar10", 20, {"batch_size": (1000, f"{COHEN}:code/predict.py"), "skip": (1, f"{COHEN}:code/predict.py")},
             "models/cifar10/resnet110/noise_<sigma>/checkpoint.pth.tar", [0.12, 0.25, 0.5, 1.0]),
            ("imagenet", 100, {"batch_size": (400, f"{COHEN}:experiments.MD"), "skip": (100, f"{COHEN}:experiments.MD")},
             "models/imagenet/resnet50/noise_<sigma>/checkpoint.pth.tar", [0.25, 0.5, 1.0]))},
}


def test_the_recipes_are_the_papers_runs():
    assert list_recipes() == sorted(REFERENCE)
    # DiffSmooth at each sigma of its paper, on both datasets; DDS, DensePure and Cohen et al. on both.
    assert {r for r in REFERENCE if r.startswith("diffsmooth-")} == {
        f"diffsmooth-{d}-{s}" for d in ("cifar10", "imagenet") for s in ("0.25", "0.50", "1.00", "0.50-blur-offset")}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_every_value_is_the_reference_value_with_its_source(name):
    recipe, expected = get_recipe(name), REFERENCE[name]
    for section in ("settings", "predict", "files", "info", "differs", "ours"):
        got = {k: (v.value, v.source) for k, v in getattr(recipe, section).items()}
        assert got == expected[section], section
        assert all(v.detail for v in getattr(recipe, section).values())  # which flag or line of the file
    assert list(recipe.asks) == expected["asks"]
    repository = recipe.reference
    for value in [*recipe.settings.values(), *recipe.predict.values(), *recipe.files.values(), *recipe.info.values()]:
        assert value.source.startswith(repository + ":")
    assert len(recipe.commit) == 40


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_recipes_are_valid_runs(name):
    recipe = get_recipe(name)
    given = {"sigma": 0.5, "steps": 2}
    for mode in ("certify", "predict"):
        values = resolve(recipe, mode, {k: v for k, v in given.items() if k in recipe.asks}).values
        assert set(values) <= set(SETTINGS) and ("n0" in values) == (mode == "certify")
        method = MethodSpec(**{k: v for k, v in values.items() if k in MethodSpec.__dataclass_fields__})
        run = {k: v for k, v in values.items() if k in RunSpec.__dataclass_fields__ and k != "method"}
        RunSpec(mode, method, **run).validate()


@pytest.mark.parametrize("name", [n for n in sorted(REFERENCE) if n.startswith("diffsmooth-")])
def test_t_star_of_each_recipe_is_what_our_schedule_gives(name):
    """The t* the reference's get_t finds equals ours on the preset's schedule, and the conformance data."""
    recipe = get_recipe(name)
    preset = get_preset(recipe.info["denoiser_preset"].value)
    sigma = recipe.settings["sigma"].value
    assert preset.schedule.t_star(sigma) == recipe.info["t_star"].value
    reference = json.loads((FIXTURES / "diffusion" / "t_star_reference.json").read_text())
    key = "improved_cifar10_cosine4000" if recipe.dataset == "cifar10" else "guided_imagenet_linear1000"
    assert reference[key][str(sigma)] == recipe.info["t_star"].value


def test_resolve_lets_given_values_win_and_records_both():
    recipe = get_recipe("diffsmooth-cifar10-0.50")
    resolved = resolve(recipe, "certify", {"batch_size": 1000, "n": 20})
    assert resolved.values["batch_size"] == 1000 and resolved.values["m"] == 5 and resolved.values["sigma"] == 0.5
    record = resolved.record()
    assert record["settings"]["batch_size"] == {"value": 1000, "from": "command line", "recipe_value": 50,
                                                "source": f"{DS}:certify.py", "detail": "--batch default 50"}
    assert record["settings"]["m"]["from"] == "recipe" and record["name"] == "diffsmooth-cifar10-0.50"
    assert resolve(recipe, "predict", {}).values["n"] == 100000  # predict.py's own default
    with pytest.raises(InputError, match="is a cifar10 run, not dataset imagenet; .*diffsmooth-imagenet-0.25"):
        resolve(recipe, "certify", {"dataset": "imagenet"})
    with pytest.raises(InputError, match="leaves sigma and steps to you"):
        resolve(get_recipe("densepure-cifar10"), "certify", {})


# ---- the command line ----------------------------------------------------------------------------


def test_recipes_command_lists_and_explains(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in REFERENCE)
    assert main(["recipes", "dds-cifar10"]) == 0
    out = capsys.readouterr().out
    assert "--batch 200" in out and f"{DDS}:README.md" in out and "you give: --sigma" in out
    assert main(["recipes", "cohen-imagenet", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc[0]["settings"]["skip"]["value"] == 100 and doc[0]["reference"]["repository"] == COHEN


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory) -> Path:
    return improved_ddpm(tmp_path_factory.mktemp("ddpm") / "improved_small")


def fast(*args: str) -> list[str]:
    return [*args, "--n0", "10", "--n", "20", "--device", "cpu", "--quiet"]


def test_diffsmooth_recipe_end_to_end_with_given_options_winning(tmp_path, cifar, ddpm):
    out = tmp_path / "ds.tsv"
    # --batch 1000 is our own default: typed, it still beats the recipe's 50.
    assert main(fast("certify", "--recipe", "diffsmooth-cifar10-0.50", "--data-dir", str(cifar), "--denoiser",
                     str(ddpm), "--classifier", str(COHEN_R20), "--batch", "1000", "--max", "2",
                     "--out", str(out))) == 0
    rows = out.read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["0", "100"]  # the recipe's --skip 100
    manifest = json.loads((tmp_path / "ds.tsv.json").read_text())
    spec, recipe = manifest["spec"], manifest["recipe"]
    assert (spec["n0"], spec["n"], spec["batch_size"], spec["alpha"]) == (10, 20, 1000, 0.001)
    method = spec["method"]
    names = ("method", "dataset", "sigma", "m", "local_sigma", "vote", "local_noise", "local_noise_seed")
    assert [method[k] for k in names] == ["diffsmooth", "cifar10", 0.5, 5, 0.25, "soft", "fixed", 42]
    assert recipe["name"] == "diffsmooth-cifar10-0.50" and recipe["reference"]["repository"] == DS
    settings = recipe["settings"]
    assert settings["batch_size"]["from"] == "command line" and settings["batch_size"]["recipe_value"] == 50
    assert settings["n"] == {"value": 20, "from": "command line", "recipe_value": 10000, "source": f"{DS}:certify.py",
                             "detail": "--N default 10000; the README's certification commands do not change it"}
    assert settings["skip"]["from"] == "recipe" and settings["skip"]["value"] == 100
    assert settings["m"] == {"value": 5, "from": "recipe", "source": f"{DS}:README.md",
                             "detail": "certification commands pass --m 5 (also certify.py's default)"}
    # The purifier runs at the t* the reference's get_t gives for sigma 0.5 on this schedule.
    assert manifest["base"]["denoiser"]["t_star"] == recipe["info"]["t_star"]["value"] == 1984


def test_dds_recipe_with_a_transformers_classifier_folder(tmp_path, cifar, ddpm):
    """DDS's CIFAR-10 run: its classifier is a transformers folder (mean/std 0.5 as the reference's ViT), the
    32 px purified images resized to its input size, bicubic and antialiased."""
    vit = transformers_folder(tmp_path / "vit", tiny_vit(3, image_size=48), [0.5] * 3, [0.5] * 3,
                              {"height": 48, "width": 48})
    out = tmp_path / "dds.tsv"
    assert main(fast("certify", "--recipe", "dds-cifar10", "--sigma", "0.25", "--data-dir", str(cifar), "--denoiser",
                     str(ddpm), "--classifier", str(vit), "--max", "2", "--out", str(out))) == 0
    assert [r.split("\t")[0] for r in out.read_text().splitlines()[1:]] == ["0", "1"]  # README: --skip 1
    manifest = json.loads((tmp_path / "dds.tsv.json").read_text())
    assert manifest["spec"]["batch_size"] == 200 and manifest["spec"]["method"]["method"] == "dds"
    assert manifest["base"]["classifier"]["image_size"] == 48 and manifest["base"]["denoiser"]["t_star"] == 1158
    assert manifest["recipe"]["settings"]["sigma"] == {"value": 0.25, "from": "command line"}


def test_cohen_recipe_predict_takes_the_predict_script_settings(tmp_path, cifar):
    out = tmp_path / "p.tsv"
    args = ["predict", "--recipe", "cohen-cifar10", "--sigma", "0.25", "--data-dir", str(cifar), "--classifier",
            str(COHEN_R20), "--n", "20", "--max", "3", "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert [r.split("\t")[0] for r in out.read_text().splitlines()[1:]] == ["0", "1", "2"]  # predict.py's --skip 1
    manifest = json.loads((tmp_path / "p.tsv.json").read_text())
    assert manifest["spec"]["batch_size"] == 1000 and manifest["spec"]["method"]["method"] == "rs"
    assert manifest["recipe"]["settings"]["batch_size"]["source"] == f"{COHEN}:code/predict.py"
    assert manifest["recipe"]["settings"]["sigma"] == {"value": 0.25, "from": "command line"}
    assert "n0" not in manifest["recipe"]["settings"]


def refused(capsys, tmp_path: Path, args: list[str], *phrases: str) -> None:
    """exit 2, one line naming the problem, and no file written."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    assert list(tmp_path.glob("out*")) == []


def test_bad_recipes_are_one_line_and_exit_2(capsys, tmp_path, cifar, ddpm):
    out = ["--out", str(tmp_path / "out.tsv")]
    common = ["--data-dir", str(cifar), "--denoiser", str(ddpm), "--classifier", str(COHEN_R20)]
    refused(capsys, tmp_path, fast("certify", "--recipe", "diffsmooth-cifar", *common, *out),
            "unknown recipe 'diffsmooth-cifar'", ", ".join(list_recipes()))
    refused(capsys, tmp_path, fast("certify", "--recipe", "diffsmooth-cifar10-0.50", "--dataset", "imagenet", *common,
                                   *out),
            "recipe diffsmooth-cifar10-0.50 is a cifar10 run, not --dataset imagenet", "diffsmooth-imagenet-0.50")
    refused(capsys, tmp_path, fast("certify", "--recipe", "dds-cifar10", *common, *out), "leaves --sigma to you")
    refused(capsys, tmp_path, fast("certify", "--recipe", "diffsmooth-cifar10-0.50", "--data-dir", str(cifar), *out),
            "needs --denoiser", "cifar10_uncond_50M_500K.pt")
    refused(capsys, tmp_path, fast("certify", "--recipe", "cohen-imagenet", "--sigma", "0.5", *out),
            "needs --classifier", "models/imagenet/resnet50/noise_<sigma>/checkpoint.pth.tar")
    refused(capsys, tmp_path, fast("certify", "--data-dir", str(cifar), "--dataset", "cifar10", "--method", "rs",
                                   "--classifier", str(COHEN_R20), *out), "--sigma is required")
