"""diffusers backend: a tiny UNet2DModel folder loads offline and purifies like DDPMScheduler says."""

import json

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffsmooth.diffusion import OneShotDenoiser, load_diffusion_model
from diffsmooth.diffusion.checkpoints import file_sha256
from diffsmooth.validate import InputError


def _tiny_unet():
    with torch.random.fork_rng():  # diffusers initialises from the global generator
        torch.manual_seed(0)
        return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                           block_out_channels=(32, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same tiny model in the flat (google/ddpm-cifar10-32) and the pipeline layout."""
    unet = _tiny_unet().eval()
    flat = tmp_path_factory.mktemp("ddpm-tiny")
    unet.save_pretrained(flat)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(flat)
    pipeline = tmp_path_factory.mktemp("ddpm-pipeline")
    unet.save_pretrained(pipeline / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(pipeline / "scheduler")
    return unet, flat, pipeline


def test_purifies_as_the_scheduler_computes(folders, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    unet, flat, _ = folders
    model = load_diffusion_model(flat)
    assert (model.in_channels, model.image_size, model.rescale_timesteps) == (3, 8, False)
    assert model.sha256 == file_sha256(flat / "diffusion_pytorch_model.safetensors")
    scheduler = DDPMScheduler.from_pretrained(flat, local_files_only=True)
    abar = scheduler.alphas_cumprod.double()
    assert torch.allclose(model.schedule.alphas_cumprod, abar, rtol=1e-5)

    sigma = 0.25
    denoiser = OneShotDenoiser(model, sigma)
    t = int(torch.nonzero((1 - abar).sqrt() / abar.sqrt() >= 2 * sigma)[0, 0])
    assert denoiser.t_star == t == 145
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    noisy = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x_t = scheduler.alphas_cumprod[t].sqrt() * (2 * noisy - 1)
        eps = unet(x_t, torch.full((2,), t)).sample
        # DDPMScheduler's x0 prediction, clipped to [-1,1] (clip_sample=True by default).
        x0 = scheduler.step(eps, t, x_t, generator=torch.Generator().manual_seed(3)).pred_original_sample
        expected = (x0 + 1) / 2
        out = denoiser(noisy)
    assert float((out - expected).norm() / expected.norm()) < 1e-4


def test_pipeline_layout_and_cosine_schedule(folders):
    _, _, pipeline = folders
    model = load_diffusion_model(pipeline)
    assert model.schedule.name == "cosine" and model.schedule.num_timesteps == 1000
    scheduler = DDPMScheduler.from_pretrained(pipeline / "scheduler", local_files_only=True)
    assert torch.allclose(model.schedule.alphas_cumprod, scheduler.alphas_cumprod.double(), rtol=1e-5)
    with torch.no_grad():
        assert OneShotDenoiser(model, 0.5)(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)


@pytest.mark.parametrize("change,match", [
    ({"beta_schedule": "scaled_linear"}, "beta_schedule"),
    ({"prediction_type": "v_prediction"}, "epsilon"),
])
def test_unsupported_schedulers_are_refused(folders, tmp_path, change, match):
    _, flat, _ = folders
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (tmp_path / name).write_bytes((flat / name).read_bytes())
    config = json.loads((flat / "scheduler_config.json").read_text())
    (tmp_path / "scheduler_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(InputError, match=match):
        load_diffusion_model(tmp_path)


def test_missing_weights_are_reported(folders, tmp_path):
    _, flat, _ = folders
    for name in ("config.json", "scheduler_config.json"):
        (tmp_path / name).write_bytes((flat / name).read_bytes())
    with pytest.raises(InputError, match="diffusion_pytorch_model"):
        load_diffusion_model(tmp_path)


def test_missing_diffusers_package_says_how_to_install(folders, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(InputError, match="pip install diffusers"):
        load_diffusion_model(folders[1])
