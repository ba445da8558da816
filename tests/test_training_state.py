"""The resumable training-state format is a contract with runs in progress.

A DDPM started by an earlier commit is resumed by this code with ``train-diffusion --resume``: the
checkpoint folder it wrote (state.json keys, state.safetensors names) must load, and the config of
the same command must compare equal to the one saved.  ``fixtures/training/state_676e774`` was
written by ``save_state`` at commit 676e774 (before the #28 refactor): a ``Linear(3, 2)`` after
one AdamW step, its EMA, two generators, step 7, the config of
``DiffusionTrainConfig(dataset="digits", steps=40000)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from diffsmooth.training import (
    ClassifierTrainConfig,
    DenoiserTrainConfig,
    DiffusionTrainConfig,
    train_classifier,
    train_denoiser,
)
from diffsmooth.training.state import TrainState, load_state, save_state
from diffsmooth.validate import InputError

OLD_STATE = Path(__file__).parent / "fixtures" / "training" / "state_676e774"

# The keys of state.json and of DiffusionTrainConfig.to_dict() as the code before #28 wrote them.
STATE_KEYS = {"config", "epoch", "extra", "format", "generators", "git_commit", "optimizer", "step", "train_seconds"}
DIFFUSION_CONFIG_KEYS = {
    "amp", "attention_resolutions", "batch_size", "channel_mult", "data_dir", "dataset", "diffusion_steps",
    "dropout", "ema", "focus_fraction", "focus_sigmas", "learn_sigma", "lr", "norm_groups", "num_channels",
    "num_heads", "num_res_blocks", "schedule", "seed", "steps", "train_limit", "variant", "warmup_steps",
    "weight_decay",
}
# The "training" record of the classifier / denoiser JSON written by the trainers before #28.
RUN_KEYS = {"config", "epochs_done", "final_epoch_loss", "finished", "git_commit", "sigma", "steps_done", "task",
            "test_images", "torch", "train_seconds_this_run", "train_seconds_total"}
CLASSIFIER_KEYS = RUN_KEYS | {"hparams", "method", "noisy_test_accuracy", "test_accuracy"}
DENOISER_KEYS = RUN_KEYS | {"objective", "test_mse", "test_mse_noisy_input"}


def _fixture_run() -> TrainState:
    """The objects of the fixture's run, rebuilt as it built them (parameters after one AdamW step)."""
    torch.manual_seed(0)
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    generators = {"order": torch.Generator().manual_seed(1), "noise": torch.Generator().manual_seed(2)}
    torch.randn(5, generator=generators["noise"])
    return TrainState(model, optimizer, generators,
                      DiffusionTrainConfig(dataset="digits", steps=40000).to_dict(), ema)


def _fresh_run() -> TrainState:
    torch.manual_seed(123)  # other weights than the fixture's: loading must replace them
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    generators = {"order": torch.Generator(), "noise": torch.Generator()}
    return TrainState(model, torch.optim.AdamW(model.parameters(), lr=1e-3), generators,
                      DiffusionTrainConfig(dataset="digits", steps=40000).to_dict(), ema)


def test_diffusion_config_keeps_the_keys_and_values_of_saved_states():
    saved = json.loads((OLD_STATE / "state.json").read_text())
    assert set(DiffusionTrainConfig().to_dict()) == DIFFUSION_CONFIG_KEYS == set(saved["config"])
    # a resume compares these dicts: the same command must give the same values
    assert DiffusionTrainConfig(dataset="digits", steps=40000).to_dict() == saved["config"]


def test_a_state_written_before_the_refactor_loads_and_is_written_back_the_same(tmp_path):
    expected, run = _fixture_run(), _fresh_run()
    assert load_state(OLD_STATE, run) == (7, 0)
    for got, want in ((run.model, expected.model), (run.ema, expected.ema)):
        assert all(torch.equal(got.state_dict()[k], want.state_dict()[k]) for k in want.state_dict())
    for name in ("order", "noise"):
        assert torch.equal(run.generators[name].get_state(), expected.generators[name].get_state())
    got, want = run.optimizer.state_dict()["state"], expected.optimizer.state_dict()["state"]
    assert got.keys() == want.keys() and all(torch.equal(got[i][k], want[i][k]) for i in want for k in want[i])

    saved = json.loads((OLD_STATE / "state.json").read_text())
    save_state(tmp_path, run, step=7, epoch=0, extra={"loss": 0.5}, train_seconds=12.34)
    again = json.loads((tmp_path / "state.json").read_text())
    assert set(again) == set(saved) == STATE_KEYS
    del again["git_commit"], saved["git_commit"]  # the commit that wrote it
    assert again == saved
    old, new = load_file(str(OLD_STATE / "state.safetensors")), load_file(str(tmp_path / "state.safetensors"))
    assert set(new) == set(old) and all(torch.equal(new[k], old[k]) for k in old)


def test_trainers_record_the_same_training_keys(tmp_path):
    classifier = train_classifier(ClassifierTrainConfig(dataset="digits", sigma=0.25, epochs=1, batch_size=32,
                                                        train_limit=32), tmp_path / "c", quiet=True, eval_limit=8)
    denoiser = train_denoiser(DenoiserTrainConfig(dataset="digits", sigma=0.5, depth=3, width=8, epochs=1,
                                                  batch_size=32, train_limit=32), tmp_path / "d", quiet=True,
                              eval_limit=8)
    assert set(json.loads((tmp_path / "c.json").read_text())["training"]) == set(classifier.info) == CLASSIFIER_KEYS
    assert set(json.loads((tmp_path / "d.json").read_text())["training"]) == set(denoiser.info) == DENOISER_KEYS


def test_a_packed_state_unpacks_to_the_same_bytes_and_is_smaller(tmp_path):
    from diffsmooth.training.state import pack_file, unpack_file

    src = OLD_STATE / "state.safetensors"
    packed = tmp_path / "state.safetensors.xz"
    size = pack_file(src, packed)
    assert size == packed.stat().st_size < src.stat().st_size
    unpack_file(packed, tmp_path / "back.safetensors")
    assert (tmp_path / "back.safetensors").read_bytes() == src.read_bytes()
    # a length that is not a multiple of 4 keeps its tail
    odd = tmp_path / "odd.bin"
    odd.write_bytes(bytes(range(7)) * 3)
    pack_file(odd, tmp_path / "odd.xz")
    unpack_file(tmp_path / "odd.xz", tmp_path / "odd.back")
    assert (tmp_path / "odd.back").read_bytes() == odd.read_bytes()


def test_a_damaged_or_foreign_packed_state_is_named(tmp_path):
    from diffsmooth.training.state import pack_file, unpack_file

    packed = tmp_path / "p.xz"
    pack_file(OLD_STATE / "state.safetensors", packed)
    packed.write_bytes(packed.read_bytes()[:-20])
    with pytest.raises(InputError, match=r"p\.xz is damaged .*keep the state again"):
        unpack_file(packed, tmp_path / "out")
    (tmp_path / "foreign").write_bytes(b"hello")
    with pytest.raises(InputError, match="not a file packed by"):
        unpack_file(tmp_path / "foreign", tmp_path / "out")
    assert not (tmp_path / "out").exists()
