"""NoiseSchedule: the reference t* table, the closed forms of both schedules, JSON round trip."""

import json
import math
from pathlib import Path

import pytest
import torch

from diffsmooth.diffusion import NoiseSchedule
from diffsmooth.validate import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "diffusion"


@pytest.mark.parametrize("key,schedule", [
    ("improved_cifar10_cosine4000", NoiseSchedule("cosine", 4000)),
    ("guided_imagenet_linear1000", NoiseSchedule("linear", 1000)),
])
def test_t_star_reproduces_reference_table(key, schedule):
    table = json.loads((FIXTURES / "t_star_reference.json").read_text())[key]
    assert {s: schedule.t_star(float(s)) for s in table} == table


def test_t_star_is_the_first_step_reaching_twice_sigma():
    schedule = NoiseSchedule("linear", 1000)
    t = schedule.t_star(0.25)
    levels = schedule.noise_levels()
    assert levels[t] >= 0.5 > levels[t - 1]
    assert schedule.effective_sigma(t) == pytest.approx(float(levels[t]) / 2)
    assert 0.25 <= schedule.effective_sigma(t) < 0.252


def test_linear_betas_closed_form():
    schedule = NoiseSchedule("linear", 4000)  # endpoints scale by 1000/T
    betas = schedule.betas
    assert betas.dtype == torch.float64 and betas.shape == (4000,)
    assert float(betas[0]) == pytest.approx(0.25e-4) and float(betas[-1]) == pytest.approx(0.005)
    abar = schedule.alphas_cumprod
    assert float(abar[1]) == pytest.approx((1 - float(betas[0])) * (1 - float(betas[1])), rel=1e-14)


def test_cosine_alphas_cumprod_follows_squared_cosine():
    schedule = NoiseSchedule("cosine", 4000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar = schedule.alphas_cumprod
    # Away from the 0.999 cap, abar_t = f((t+1)/T) / f(0) exactly up to rounding.
    for t in (0, 573, 2000, 3500):
        assert float(abar[t]) == pytest.approx(f((t + 1) / 4000) / f(0), rel=1e-9)
    assert float(schedule.betas.max()) == pytest.approx(0.999)


def test_custom_linear_endpoints_and_dict_round_trip():
    schedule = NoiseSchedule("linear", 10, beta_start=0.1, beta_end=0.2)
    assert schedule.betas.tolist() == pytest.approx([0.1 + 0.1 * i / 9 for i in range(10)])
    assert NoiseSchedule.from_dict(json.loads(json.dumps(schedule.to_dict()))) == schedule
    assert NoiseSchedule("cosine", 4000).to_dict() == {"name": "cosine", "num_timesteps": 4000}


@pytest.mark.parametrize("sigma", [0.0, -0.1, float("nan"), 100.0])
def test_bad_sigma_is_refused(sigma):
    with pytest.raises(InputError, match="sigma"):
        NoiseSchedule("linear", 1000).t_star(sigma)


def test_unknown_schedule_lists_known_ones():
    with pytest.raises(InputError, match="choose one of: cosine, linear"):
        NoiseSchedule("sigmoid", 1000)
    with pytest.raises(InputError, match="keys"):
        NoiseSchedule.from_dict({"name": "linear"})
