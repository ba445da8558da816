"""OneShotDenoiser: equality with the reference purification, reported noise levels, input checks."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffsmooth.diffusion import DiffusionModel, NoiseSchedule, OneShotDenoiser, adm_unet
from diffsmooth.validate import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "diffusion"


def _model(name, variant):
    doc = json.loads((FIXTURES / f"{name}_config.json").read_text())
    config = doc["config"]
    unet = adm_unet(variant, **config)
    unet.load_state_dict(load_file(FIXTURES / f"{name}_weights.safetensors"), strict=True)
    schedule = NoiseSchedule(config["noise_schedule"], config["diffusion_steps"])
    model = DiffusionModel(unet.eval(), schedule, config["rescale_timesteps"], 3, config["image_size"], name)
    return model, doc, load_file(FIXTURES / f"{name}_io.safetensors")


@pytest.fixture(scope="module")
def improved():
    return _model("improved_small", "improved")


@pytest.fixture(scope="module")
def guided():
    return _model("guided_small", "guided")


@pytest.mark.parametrize("which", ["improved", "guided"])
@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0])
def test_purification_matches_reference(which, sigma, request):
    model, doc, io = request.getfixturevalue(which)
    denoiser = OneShotDenoiser(model, sigma)
    assert denoiser.t_star == doc[f"t_star_sigma{sigma}"]
    with torch.no_grad():
        out = denoiser(io["denoise.input01"])  # guided: 48x48 on a 64 model
    ref = io[f"denoise.sigma{sigma}.output01"]
    assert float((out - ref).norm() / ref.norm()) < 1e-4
    assert out.min() >= 0 and out.max() <= 1


def test_reports_t_star_effective_sigma_and_describe(improved):
    model, _, _ = improved
    denoiser = OneShotDenoiser(model, 0.25)
    assert (denoiser.sigma, denoiser.t_star) == (0.25, 1158)
    abar = float(model.schedule.alphas_cumprod[1158])
    assert denoiser.effective_sigma == pytest.approx((1 - abar) ** 0.5 / (2 * abar ** 0.5))
    assert 0.25 <= denoiser.effective_sigma < 0.2505
    info = json.loads(json.dumps(denoiser.describe()))
    assert info["t_star"] == 1158 and info["network_timestep"] == 289.5  # 1158 * 1000 / 4000
    assert info["schedule"] == {"name": "cosine", "num_timesteps": 4000} and info["mode"] == "one-shot"


def test_hand_computation_and_out_of_range_inputs(guided):
    model, _, io = guided
    denoiser = OneShotDenoiser(model, 0.5)
    # Noisy inputs legitimately leave [0,1]; they are accepted and the output is in [0,1].
    x = io["denoise.input01"][:1] * 1.6 - 0.3
    assert x.min() < 0 and x.max() > 1
    abar = model.schedule.alphas_cumprod[259].float()
    x_t = abar.sqrt() * (2 * x - 1)
    with torch.no_grad():
        eps = model.unet(x_t, torch.tensor([259]))[:, :3]
        expected = (((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1) + 1) / 2
        assert torch.allclose(denoiser(x), expected, atol=1e-5)


def test_dtype_follows_input(guided):
    model, _, io = guided
    denoiser = OneShotDenoiser(model, 0.25).double()
    with torch.no_grad():
        out = denoiser(io["denoise.input01"][:1].double())
    assert out.dtype == torch.float64
    denoiser.float()


@pytest.mark.parametrize("shape,match", [((1, 1, 48, 48), "channels|3, H, W"), ((3, 48, 48), "B, 3, H, W")])
def test_wrong_shapes_are_refused(guided, shape, match):
    with pytest.raises(InputError, match=match):
        OneShotDenoiser(guided[0], 0.25)(torch.zeros(shape))


def test_bad_sigma_is_refused(guided):
    # NaN images are refused by the certifier (SmoothedClassifier) before any noise is drawn;
    # the purifier itself skips a finiteness check that would synchronise the host per batch.
    with pytest.raises(InputError, match="sigma"):
        OneShotDenoiser(guided[0], 0.0)


def test_multistep_with_one_step_is_one_shot(guided):
    from diffsmooth.diffusion import MultiStepDenoiser

    model, _, io = guided
    x = io["denoise.input01"][:1]
    with torch.no_grad():
        assert torch.allclose(MultiStepDenoiser(model, 0.5, steps=1)(x), OneShotDenoiser(model, 0.5)(x), atol=1e-6)


def test_multistep_ddim_matches_hand_computation(guided):
    from diffsmooth.diffusion import MultiStepDenoiser

    model, _, io = guided
    denoiser = MultiStepDenoiser(model, 0.25, steps=2, method="ddim")
    assert denoiser.timesteps == [145, 0] and denoiser.describe()["mode"] == "multi-step-ddim"
    x = io["denoise.input01"][:1]
    abar = model.schedule.alphas_cumprod.float()
    with torch.no_grad():
        x_t = abar[145].sqrt() * (2 * x - 1)
        eps = model.unet(x_t, torch.tensor([145]))[:, :3]
        x0 = ((x_t - (1 - abar[145]).sqrt() * eps) / abar[145].sqrt()).clamp(-1, 1)
        eps = (x_t - abar[145].sqrt() * x0) / (1 - abar[145]).sqrt()
        x_0 = abar[0].sqrt() * x0 + (1 - abar[0]).sqrt() * eps
        eps = model.unet(x_0, torch.tensor([0]))[:, :3]
        expected = (((x_0 - (1 - abar[0]).sqrt() * eps) / abar[0].sqrt()).clamp(-1, 1) + 1) / 2
        assert torch.allclose(denoiser(x), expected, atol=1e-5)


def test_multistep_ddpm_is_reproducible_with_a_generator(guided):
    from diffsmooth.diffusion import MultiStepDenoiser

    model, _, io = guided
    denoiser = MultiStepDenoiser(model, 0.25, steps=3, method="ddpm")
    assert denoiser.timesteps == [145, 72, 0]
    x = io["denoise.input01"][:1]
    with torch.no_grad():
        a = denoiser(x, generator=torch.Generator().manual_seed(5))
        b = denoiser(x, generator=torch.Generator().manual_seed(5))
        c = denoiser(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    with pytest.raises(InputError, match="choose one of: ddim, ddpm"):
        MultiStepDenoiser(model, 0.25, steps=3, method="euler")
    with pytest.raises(InputError, match="steps"):
        MultiStepDenoiser(model, 0.25, steps=147)
