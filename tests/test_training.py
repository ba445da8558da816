"""Training: each method's loss on a tiny model, the defining quantities by hand, DDPM, resume, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffsmooth.classifiers import create_classifier, load_classifier
from diffsmooth.cli import main
from diffsmooth.data import load_dataset
from diffsmooth.diffusion import (
    NoiseSchedule,
    OneShotDenoiser,
    adm_unet,
    load_diffusion_model,
)
from diffsmooth.shipped import shipped_classifier
from diffsmooth.training import (
    ClassifierTrainConfig,
    DenoiserTrainConfig,
    DiffusionTrainConfig,
    LossInput,
    consistency_terms,
    ddpm_loss,
    get_loss,
    list_losses,
    loss_defaults,
    macer_radius_term,
    sample_timesteps,
    smoothadv_attack,
    smoothed_soft_loss,
    timestep_probabilities,
    train_classifier,
    train_diffusion,
)
from diffsmooth.validate import InputError


@pytest.fixture(scope="module")
def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits", split="train").tensors()
    return x[:32], y[:32]


def _tiny_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # parameter init only; training noise comes from explicit generators
    return create_classifier("fmnist_cnn", 10, dataset="digits", width=8, hidden=32, dropout=0.0)


SMALL = {"gaussian": {}, "consistency": {"m_train": 2}, "macer": {"m_train": 4, "lbd": 1.0},
         "smoothadv": {"m_train": 2, "epsilon": 0.25, "num_steps": 1, "warmup": 1},
         "smoothmix": {"m_train": 2, "num_steps": 2}}


def test_registry_lists_all_methods_and_rejects_unknown():
    assert list_losses() == ["consistency", "gaussian", "macer", "smoothadv", "smoothmix"]
    assert loss_defaults("macer") == {"m_train": 16, "lbd": 12.0, "gamma": 8.0, "beta": 16.0}
    with pytest.raises(InputError, match="consistency, gaussian, macer, smoothadv, smoothmix"):
        get_loss("mixup")


@pytest.mark.parametrize("method", sorted(SMALL))
def test_loss_is_finite_and_falls_on_a_fixed_batch(method, digits_batch):
    x, y = digits_batch
    model = _tiny_classifier()
    loss_fn, hp = get_loss(method), SMALL[method]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(loss_fn(LossInput(model, x, y, 0.25, torch.Generator().manual_seed(7), 0), **hp).loss)

    before = fixed_loss()
    gen = torch.Generator().manual_seed(1)
    for _ in range(15):
        out = loss_fn(LossInput(model, x, y, 0.25, gen, 0), **hp)
        assert math.isfinite(float(out.loss.detach()))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = fixed_loss()
    assert after < 0.7 * before, (before, after)


def test_macer_radius_term_matches_hand_computation():
    # copies of image 0 have softmax (0.7, 0.2, 0.1) and (0.5, 0.3, 0.2): mean (0.6, 0.25, 0.15)
    probs0 = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]], dtype=torch.float64)
    # image 1: top class 2 but label 0 -> not counted
    probs1 = torch.tensor([[0.1, 0.2, 0.7], [0.1, 0.2, 0.7]], dtype=torch.float64)
    logits = torch.stack([probs0.log(), probs1.log()])
    y = torch.tensor([0, 0])
    got = macer_radius_term(logits, y, sigma=0.5, gamma=1.0, beta=1.0)
    # Phi^-1(0.6) = 0.2533471031, Phi^-1(0.25) = -0.6744897502; margin 0.9278368533
    # (sigma / 2) * (gamma - margin) = 0.25 * 0.0721631467, summed and divided by B = 2
    assert float(got) == pytest.approx(0.25 * (1.0 - 0.9278368533) / 2, abs=1e-9)
    # beyond the margin gamma the hinge is zero
    assert float(macer_radius_term(logits, y, sigma=0.5, gamma=0.9, beta=1.0)) == pytest.approx(0.0, abs=1e-12)


def test_consistency_kl_zero_when_copies_agree_and_hand_value_otherwise():
    same = torch.tensor([[[2.0, -1.0, 0.5]] * 3])  # (B=1, m=3, K=3), identical copies
    y = torch.tensor([0])
    ce, kl, ent = consistency_terms(same, y)
    p = F.softmax(same[0, 0], -1)
    assert float(kl) == pytest.approx(0.0, abs=1e-7)
    assert float(ent) == pytest.approx(float(-(p * p.log()).sum()), abs=1e-6)
    assert float(ce) == pytest.approx(float(-p[0].log()), abs=1e-6)
    # copies (0.8, 0.2) and (0.4, 0.6): mean (0.6, 0.4); KLs 0.1046496 and 0.0810930 -> mean 0.0928713
    two = torch.tensor([[[0.8, 0.2], [0.4, 0.6]]], dtype=torch.float64).log()
    _, kl2, _ = consistency_terms(two, torch.tensor([0]))
    assert float(kl2) == pytest.approx(0.0928713, abs=1e-6)


def test_smoothadv_attack_increases_smoothed_loss_within_the_ball(digits_batch):
    x, y = digits_batch
    model = _tiny_classifier(3).eval()
    noise = 0.25 * torch.randn((len(x), 4, *x.shape[1:]), generator=torch.Generator().manual_seed(0))
    x_adv = smoothadv_attack(model, x, y, noise, epsilon=0.5, num_steps=3)
    with torch.no_grad():
        base, adv = smoothed_soft_loss(model, x, y, noise), smoothed_soft_loss(model, x_adv, y, noise)
    assert float(adv.mean()) > float(base.mean()) + 1e-3
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


class _Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


def test_gaussian_noise_is_fresh_every_batch_and_reproducible(digits_batch):
    x, y = digits_batch
    rec, gen = _Recorder(), torch.Generator().manual_seed(5)
    loss = get_loss("gaussian")
    loss(LossInput(rec, x, y, 0.5, gen))
    loss(LossInput(rec, x, y, 0.5, gen))
    assert not torch.equal(rec.seen[0], rec.seen[1])
    noise = rec.seen[0] - x
    assert float(noise.std()) == pytest.approx(0.5, rel=0.05)
    loss(LossInput(rec, x, y, 0.5, torch.Generator().manual_seed(5)))
    assert torch.equal(rec.seen[2], rec.seen[0])


def _tiny_unet() -> nn.Module:
    torch.manual_seed(0)
    return adm_unet("improved", image_size=8, in_channels=1, num_channels=32, channel_mult="1,2",
                    num_res_blocks=1, attention_resolutions="", num_heads=1)


def test_ddpm_loss_falls_on_tiny_unet(digits_batch):
    x0 = digits_batch[0][:8] * 2 - 1
    unet, schedule = _tiny_unet(), NoiseSchedule("cosine", 1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-3)

    def fixed() -> float:
        with torch.no_grad():
            return float(ddpm_loss(unet, x0, schedule, torch.Generator().manual_seed(3)))

    before, gen = fixed(), torch.Generator().manual_seed(4)
    for _ in range(15):
        loss = ddpm_loss(unet, x0, schedule, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed()
    assert math.isfinite(after) and after < 0.6 * before, (before, after)


def test_focused_timesteps_hit_the_t_star_range_at_the_stated_rate_and_reach_every_t():
    schedule = NoiseSchedule("cosine", 1000)
    lo, hi = schedule.t_star(0.12), schedule.t_star(1.0)
    assert (lo, hi) == (143, 702)
    probs = timestep_probabilities(schedule, (0.12, 1.0), 0.9)
    assert probs.shape == (1000,) and math.isclose(float(probs.sum()), 1.0, rel_tol=1e-12)
    assert math.isclose(float(probs[lo:hi + 1].sum()), 0.9, rel_tol=1e-12)
    assert torch.allclose(probs[lo:hi + 1], torch.full((560,), 0.9 / 560, dtype=torch.float64))
    assert torch.allclose(probs[:lo], torch.full((lo,), 0.1 / 440, dtype=torch.float64))
    n = 200_000
    t = sample_timesteps(1000, n, torch.Generator().manual_seed(0), torch.device("cpu"), probs)
    inside = float(((t >= lo) & (t <= hi)).float().mean())
    # binomial standard error sqrt(0.9 * 0.1 / n) = 6.7e-4; 5 of them
    assert abs(inside - 0.9) < 5 * math.sqrt(0.09 / n), inside
    # every t is drawn: the rarest has probability 0.1/440, about 45 expected hits
    assert torch.bincount(t, minlength=1000).min() > 0
    uniform = timestep_probabilities(schedule)
    assert torch.equal(uniform, torch.full((1000,), 1e-3, dtype=torch.float64))


@pytest.mark.parametrize("focus,fraction,match", [
    ((0.5, 0.25), 0.9, "0 < lo < hi"),
    ((0.12, 1.0), 1.0, "every timestep stays reachable"),
    ((0.12, 1.0), None, "every timestep stays reachable"),
])
def test_focused_timesteps_reject_bad_settings(focus, fraction, match):
    with pytest.raises(InputError, match=match):
        timestep_probabilities(NoiseSchedule("cosine", 1000), focus, fraction)


def test_diffusion_config_needs_both_focus_settings():
    with pytest.raises(InputError, match="--focus-sigmas and --focus-fraction go together"):
        DiffusionTrainConfig(focus_sigmas="0.12,1.0").validate()
    with pytest.raises(InputError, match="two sigmas 'lo,hi'"):
        DiffusionTrainConfig(focus_sigmas="0.12", focus_fraction=0.5).validate()


def add_earlier_seconds(state_dir, seconds: float) -> None:
    """Add ``seconds`` to the training time a checkpoint records (a long earlier run, simulated)."""
    meta_path = state_dir / "state.json"
    meta = json.loads(meta_path.read_text())
    assert meta["train_seconds"] >= 0  # recorded by the first run
    meta["train_seconds"] += seconds
    meta_path.write_text(json.dumps(meta))


def test_classifier_resume_matches_uninterrupted(tmp_path):
    cfg = ClassifierTrainConfig(arch="fmnist_cnn", dataset="digits", method="consistency", sigma=0.25, epochs=2,
                                batch_size=64, lr=0.05, seed=3, hparams={"m_train": 2}, train_limit=128)
    full = train_classifier(cfg, tmp_path / "full", quiet=True, eval_limit=50)
    part = train_classifier(cfg, tmp_path / "part", quiet=True, eval_limit=50, stop_after=1)
    assert part.info["finished"] is False and part.info["epochs_done"] == 1
    add_earlier_seconds(tmp_path / "part.train", 1000.0)  # as if the first run had lasted 1000 s more
    resumed = train_classifier(cfg, tmp_path / "part", quiet=True, eval_limit=50, resume=True)
    assert resumed.info["finished"] is True
    # the total counts every run: the first's (with the 1000 s) plus this one's
    assert resumed.info["train_seconds_total"] >= 1000 + resumed.info["train_seconds_this_run"]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "part.train" / "state.json").read_text())
    assert meta["epoch"] == 2 and meta["step"] == 4
    assert meta["train_seconds"] == pytest.approx(resumed.info["train_seconds_total"], abs=1.0)


def test_resume_refuses_a_different_config(tmp_path):
    cfg = ClassifierTrainConfig(dataset="digits", sigma=0.25, epochs=1, batch_size=64, train_limit=64)
    train_classifier(cfg, tmp_path / "m", quiet=True, eval_limit=10)
    other = ClassifierTrainConfig(dataset="digits", sigma=0.5, epochs=2, batch_size=64, train_limit=64)
    with pytest.raises(InputError, match="different settings \\(sigma\\)"):
        train_classifier(other, tmp_path / "m", quiet=True, resume=True)


@pytest.mark.parametrize("extra", [{"num_channels": 32}, {"num_channels": 16, "norm_groups": 8,
                                                             "focus_sigmas": "0.12,1.0", "focus_fraction": 0.9}])
def test_diffusion_resume_matches_uninterrupted(tmp_path, extra):
    cfg = DiffusionTrainConfig(dataset="digits", channel_mult="1,2", attention_resolutions="",
                               steps=4, batch_size=8, lr=1e-3, warmup_steps=1, ema=0.9, train_limit=32, **extra)
    full = train_diffusion(cfg, tmp_path / "full", quiet=True, checkpoint_every=2)
    train_diffusion(cfg, tmp_path / "part", quiet=True, checkpoint_every=2, stop_after=2)
    add_earlier_seconds(tmp_path / "part.train", 1000.0)
    resumed = train_diffusion(cfg, tmp_path / "part", quiet=True, checkpoint_every=2, resume=True)
    a, b = full.ema.state_dict(), resumed.ema.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.info["finished"] is True and resumed.info["steps_this_run"] == 2
    saved = json.loads((tmp_path / "part" / "config.json").read_text())
    assert saved["extra"]["train_seconds_total"] >= 1000 + resumed.info["train_seconds_this_run"]


def test_cli_focused_narrow_ddpm_records_its_settings_and_stops_and_resumes(tmp_path, capsys):
    ddpm = tmp_path / "ddpm"
    argv = ["train-diffusion", "--dataset", "digits", "--num-channels", "16", "--norm-groups", "8",
            "--channel-mult", "1,2", "--attention-resolutions", "", "--focus-sigmas", "0.12,1.0",
            "--focus-fraction", "0.9", "--train-limit", "16", "--steps", "2", "--batch-size", "8",
            "--checkpoint-every", "1", "--out", str(ddpm), "--quiet"]
    assert main(argv + ["--stop-after", "1"]) == 0
    assert "(unfinished: step 1 of 2)" in capsys.readouterr().out
    assert json.loads((ddpm / "config.json").read_text())["extra"]["finished"] is False
    assert main(argv + ["--resume"]) == 0
    doc = json.loads((ddpm / "config.json").read_text())
    assert doc["extra"]["finished"] is True and doc["extra"]["steps_this_run"] == 1
    assert doc["flags"]["norm_groups"] == 8 and doc["flags"]["num_channels"] == 16
    cfg = doc["extra"]["config"]
    assert (cfg["focus_sigmas"], cfg["focus_fraction"], cfg["train_limit"]) == ("0.12,1.0", 0.9, 16)
    unet = load_diffusion_model(ddpm).unet
    assert {m.num_groups for m in unet.modules() if isinstance(m, nn.GroupNorm)} == {8}


@pytest.mark.parametrize("argv, expected", [
    (["train-diffusion", "--out", "d"], DiffusionTrainConfig()),
    (["train-classifier", "--out", "c", "--sigma", "0.25"], ClassifierTrainConfig(sigma=0.25)),
    (["train-denoiser", "--out", "n", "--sigma", "0.25"], DenoiserTrainConfig(sigma=0.25)),
])
def test_cli_defaults_are_the_library_defaults(tmp_path, monkeypatch, argv, expected):
    import functools

    from diffsmooth import training

    class Called(Exception):
        pass

    def recorder(trainer):
        @functools.wraps(trainer)  # the command line reads the trainer's keyword defaults
        def record(config, out, **kwargs):
            raise Called(config)
        return record

    for name in ("train_diffusion", "train_classifier", "train_denoiser"):
        monkeypatch.setattr(training, name, recorder(getattr(training, name)))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Called) as called:
        main(argv)
    assert called.value.args[0] == expected


def test_cli_trains_and_writes_loadable_files(tmp_path, capsys):
    ddpm = tmp_path / "ddpm"
    assert main(["train-diffusion", "--dataset", "digits", "--num-channels", "32", "--channel-mult", "1,2",
                 "--attention-resolutions", "", "--steps", "3", "--batch-size", "8", "--out", str(ddpm),
                 "--quiet"]) == 0
    dm = load_diffusion_model(ddpm)
    x = load_dataset("digits", split="test").tensors()[0][:4]
    with torch.no_grad():
        out = OneShotDenoiser(dm, 0.25)(x + 0.25 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert dm.schedule.num_timesteps == 1000
    stem = tmp_path / "clf"
    assert main(["train-classifier", "--dataset", "digits", "--method", "macer", "--sigma", "0.25",
                 "--m-train", "2", "--epochs", "1", "--batch-size", "32", "--train-limit", "64",
                 "--eval-limit", "20", "--out", str(stem), "--quiet"]) == 0
    model = load_classifier(stem)
    assert model.training_info["method"] == "macer" and model.training_info["hparams"]["m_train"] == 2
    assert model(x).shape == (4, 10)
    pur = tmp_path / "pur"
    assert main(["train-classifier", "--dataset", "digits", "--sigma", "0", "--purify-sigma", "0.5",
                 "--finetune-on-purified", str(ddpm), "--init", str(stem), "--epochs", "1", "--batch-size", "32",
                 "--train-limit", "32", "--eval-limit", "20", "--out", str(pur), "--quiet"]) == 0
    assert load_classifier(pur).training_info["config"]["purify"] == str(ddpm)
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--method", "gaussian", "--sigma", "0.25", "--eta", "1"], "--eta do(es) not apply"),
    (["--method", "gaussian", "--sigma", "-1"], "--sigma must be a finite noise level >= 0"),
    (["--method", "macer", "--sigma", "0"], "macer needs --sigma > 0"),
    (["--sigma", "0.25", "--dataset", "nope"], "unknown dataset 'nope'"),
])
def test_cli_rejects_bad_values_with_exit_code_2(tmp_path, capsys, argv, message):
    code = main(["train-classifier", *argv, "--epochs", "1", "--train-limit", "32", "--out", str(tmp_path / "x"),
                 "--quiet"] + (["--dataset", "digits"] if "--dataset" not in argv else []))
    assert code == 2
    assert message in capsys.readouterr().err


def test_init_takes_a_shipped_classifier_by_name(tmp_path, capsys):
    # --init resolves like certify's --classifier: a path, a trainer's --out stem or a shipped name
    out = tmp_path / "ft"
    assert main(["train-classifier", "--dataset", "fashion-mnist", "--sigma", "0", "--init", "fmnist_cnn_clean",
                 "--lr", "1e-9", "--momentum", "0", "--weight-decay", "0", "--epochs", "1", "--batch-size", "32",
                 "--train-limit", "32", "--eval-limit", "20", "--out", str(out), "--quiet"]) == 0
    tuned, shipped = load_classifier(out).state_dict(), load_classifier(shipped_classifier("clean")).state_dict()
    weights = [k for k in shipped if k.endswith("weight")]
    assert weights and all(torch.allclose(tuned[k], shipped[k], atol=1e-6) for k in weights)
    assert main(["train-classifier", "--dataset", "fashion-mnist", "--sigma", "0", "--init", "fmnist_cnn_nope",
                 "--epochs", "1", "--train-limit", "32", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--init 'fmnist_cnn_nope' is neither an existing path nor a shipped model" in err
    assert len(err.splitlines()) == 1 and not list(tmp_path.glob("x*"))
