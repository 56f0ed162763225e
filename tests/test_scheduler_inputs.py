"""Every bad input to the scheduler is caught where it enters, with the argument's name and what is allowed.

One test per class of input, parametrised over its cases: config values, timesteps (never truncated),
the tensors ``step``/``add_noise`` take, and the opt-in finite check of ``step``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ddpm_from_scratch.beta_schedules import check_beta_range
from ddpm_from_scratch.diffusion_math import p_mean_variance
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler
from ddpm_from_scratch.tensor_utils import ArgumentTypeError

NAN, INF = math.nan, math.inf
BETA_RULE = r"0 < beta_start <= beta_end < 1"


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(trained_betas=[0.1, NAN, 0.2], num_train_timesteps=3), ValueError, r"open interval \(0, 1\); trained_betas"),
        (dict(trained_betas=[0.1, INF], num_train_timesteps=2), ValueError, r"open interval \(0, 1\); trained_betas"),
        (dict(trained_betas=["0.1", "0.2"], num_train_timesteps=2), ArgumentTypeError, "trained_betas must be real numbers"),
        (dict(beta_start=NAN), ValueError, "beta_start must be a finite real number, got nan"),
        (dict(beta_end=INF), ValueError, "beta_end must be a finite real number, got inf"),
        (dict(beta_start=0.03), ValueError, BETA_RULE + ", got beta_start=0.03, beta_end=0.02"),
        (dict(beta_start=0.03, beta_schedule="scaled_linear"), ValueError, BETA_RULE),
        (dict(beta_start=0.03, beta_schedule="sigmoid"), ValueError, BETA_RULE),
        (dict(beta_start=0.0), ValueError, BETA_RULE),
        (dict(beta_start="0.0001"), ArgumentTypeError, "beta_start must be a finite real number, got str '0.0001'"),
        (dict(beta_end=True), ArgumentTypeError, "beta_end must be a finite real number, got bool"),
        (dict(num_train_timesteps=True), ArgumentTypeError, "num_train_timesteps must be an int, got bool"),
        (dict(num_train_timesteps=10.0), ArgumentTypeError, "num_train_timesteps must be an int, got float"),
        (dict(num_train_timesteps="10"), ArgumentTypeError, "num_train_timesteps must be an int, got str"),
        (dict(num_train_timesteps=0), ValueError, "num_train_timesteps must be an int >= 1, got 0"),
        (dict(clip_sample_range=0.0), ValueError, "clip_sample_range must be a finite number > 0, got 0.0"),
        (dict(clip_sample_range=-1.0), ValueError, "clip_sample_range must be a finite number > 0"),
        (dict(clip_sample_range=NAN), ValueError, "clip_sample_range must be a finite real number"),
        (dict(sample_max_value=-2.0), ValueError, "sample_max_value must be a finite number > 0, got -2.0"),
        (dict(sample_max_value=INF), ValueError, "sample_max_value must be a finite real number"),
        (dict(dynamic_thresholding_ratio=NAN), ValueError, "dynamic_thresholding_ratio must be a finite real number"),
        (dict(dynamic_thresholding_ratio=0.0), ValueError, r"dynamic_thresholding_ratio must be in \(0, 1\]"),
        (dict(steps_offset=-1), ValueError, "steps_offset must be an int >= 0"),
        (dict(steps_offset=1.5), ArgumentTypeError, "steps_offset must be an int, got float"),
        (dict(clip_sample="False"), ArgumentTypeError, "clip_sample must be True or False, got str 'False'"),
        (dict(thresholding=1), ArgumentTypeError, "thresholding must be True or False, got int"),
        (dict(variance_type="analytic"), ValueError, "needs analytic_eps_sq_mean.*`ddpm-estimate-variance PATH"),
        (dict(analytic_eps_sq_mean=[0.5] * 999), ValueError, r"one value per training timestep, shape \(1000,\)"),
        (dict(analytic_eps_sq_mean=[0.5] * 999 + [NAN]), ValueError, "analytic_eps_sq_mean must be finite and >= 0"),
        (dict(analytic_eps_sq_mean=[-0.1] * 1000), ValueError, "analytic_eps_sq_mean must be finite and >= 0"),
        (dict(analytic_eps_sq_mean=["0.5"] * 1000), ArgumentTypeError, "analytic_eps_sq_mean must be real numbers"),
    ],
)
def test_bad_config_values_are_refused_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        ScratchDDPMScheduler(**kwargs)
    # a type error is also a ValueError, which is what the command-line tools report cleanly
    assert issubclass(error, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_train_timesteps=np.int64(10)),
        dict(num_train_timesteps=np.int32(10), steps_offset=np.int64(1), beta_start=np.float32(1e-3),
             beta_end=np.float64(0.2), clip_sample=np.bool_(False), clip_sample_range=np.float32(2.0)),
        dict(beta_start=0.01, beta_end=0.01),  # a constant schedule
        dict(beta_schedule="squaredcos_cap_v2", beta_start=0.5, beta_end=0.1),  # end points unused by the cosine
        dict(trained_betas=np.linspace(1e-3, 0.1, 10, dtype=np.float32), num_train_timesteps=np.int64(10)),
    ],
)
def test_numpy_numbers_are_accepted_and_stored_as_python_ones(kwargs, tmp_path):
    sched = ScratchDDPMScheduler(**kwargs)
    for key in ("num_train_timesteps", "steps_offset"):
        assert type(sched.config[key]) is int
    for key in ("beta_start", "beta_end", "clip_sample_range", "sample_max_value"):
        assert type(sched.config[key]) is float
    assert type(sched.config.clip_sample) is bool
    sched.save_pretrained(tmp_path)  # the config is plain JSON
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["num_train_timesteps"] == sched.config.num_train_timesteps
    assert ScratchDDPMScheduler.from_pretrained(tmp_path).config.num_train_timesteps == sched.config.num_train_timesteps


def test_the_beta_rule_is_one_importable_function():
    """training/config.py calls the same rule for --beta_start/--beta_end."""
    assert check_beta_range(1e-4, 0.02) == (1e-4, 0.02)
    assert check_beta_range(np.float32(0.01), 0.01) == (pytest.approx(0.01), 0.01)
    for start, end in [(0.03, 0.02), (0.0, 0.02), (1e-4, 1.0), (-1e-4, 0.02)]:
        with pytest.raises(ValueError, match=rf"{BETA_RULE}, got beta_start={start}, beta_end={end}"):
            check_beta_range(start, end)
    with pytest.raises(ArgumentTypeError, match="beta_start must be a finite real number, got str"):
        check_beta_range("1e-4", 0.02)
    with pytest.raises(ValueError, match="beta_end must be a finite real number, got nan"):
        check_beta_range(1e-4, NAN)


def _sched():
    sched = ScratchDDPMScheduler(num_train_timesteps=10)
    sched.set_timesteps(5)
    return sched


X = torch.randn(2, 1, 3, 3)
TIMESTEP_TYPE = "must have an integer dtype|must be integers|must be an integer timestep|must be an int"


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.set_timesteps(timesteps=[9.7, 5.2, 0.9]), id="set_timesteps-fractional-list"),
        pytest.param(lambda s: s.set_timesteps(timesteps=[9.0, 5.0, 0.0]), id="set_timesteps-integral-float-list"),
        pytest.param(lambda s: s.set_timesteps(timesteps=torch.tensor([9.0, 5.0, 0.0])), id="set_timesteps-float-tensor"),
        pytest.param(lambda s: s.set_timesteps(timesteps=np.array([9.5, 5.0])), id="set_timesteps-float-array"),
        pytest.param(lambda s: s.set_timesteps(timesteps=[True, False]), id="set_timesteps-bools"),
        pytest.param(lambda s: s.set_timesteps(num_inference_steps=True), id="num_inference_steps-bool"),
        pytest.param(lambda s: s.set_timesteps(num_inference_steps=5.0), id="num_inference_steps-float"),
        pytest.param(lambda s: s.step(X, torch.tensor(5.7), X), id="step-float-tensor"),
        pytest.param(lambda s: s.step(X, torch.tensor(6.0), X), id="step-integral-float-tensor"),
        pytest.param(lambda s: s.step(X, 5.7, X), id="step-python-float"),
        pytest.param(lambda s: s.step(X, 6.0, X), id="step-integral-python-float"),
        pytest.param(lambda s: s.step(X, np.float64(6.0), X), id="step-numpy-float"),
        pytest.param(lambda s: s.step(X, True, X), id="step-bool"),
        pytest.param(lambda s: s.step(X, torch.tensor([6.0, 4.0]), X), id="step-batched-float"),
        pytest.param(lambda s: s.step(X, "6", X), id="step-string"),
        pytest.param(lambda s: s.add_noise(X, X, [3.5, 2.2]), id="add_noise-fractional-list"),
        pytest.param(lambda s: s.add_noise(X, X, torch.tensor([3.0, 2.0])), id="add_noise-float-tensor"),
        pytest.param(lambda s: s.add_noise(X, X, torch.tensor([True, False])), id="add_noise-bool-tensor"),
        pytest.param(lambda s: s.get_velocity(X, X, torch.tensor([3.0, 2.0])), id="get_velocity-float-tensor"),
        pytest.param(lambda s: s.previous_timestep(5.5), id="previous_timestep-float"),
        pytest.param(lambda s: p_mean_variance(s.diffusion_chain(), X, X, torch.tensor([3, 2.0]), s.reverse_step_config),
                     id="p_mean_variance-float-tensor"),
        pytest.param(lambda s: s.diffusion_chain().q_sample(X, X, torch.tensor([3.0, 2.0])), id="q_sample-float-tensor"),
        pytest.param(lambda s: s.q_posterior_mean_variance(X, X, torch.tensor([3.5, 2.0])), id="posterior-float"),
        pytest.param(lambda s: s._get_variance(6.0), id="_get_variance-float"),
    ],
)
def test_fractional_timesteps_are_never_truncated(call):
    """Floats are refused whatever their value: telling 6.0 from 5.7 in a CUDA tensor would need a sync."""
    sched = _sched()
    with pytest.raises(ArgumentTypeError, match=TIMESTEP_TYPE):
        call(sched)


@pytest.mark.parametrize(
    "timestep", [6, np.int64(6), torch.tensor(6), torch.tensor(6, dtype=torch.int32), torch.tensor([6, 6])],
    ids=["int", "numpy-int", "tensor", "int32-tensor", "batched"],
)
def test_integer_timesteps_of_any_kind_take_the_same_step(timestep):
    sched = _sched()
    expected = sched.step(X, 6, X, generator=torch.Generator().manual_seed(0)).prev_sample
    got = sched.step(X, timestep, X, generator=torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    sched.set_timesteps(timesteps=np.array([9, 5, 0]))
    sched.set_timesteps(timesteps=torch.tensor([9, 5, 0], dtype=torch.int32))
    assert sched.timesteps.tolist() == [9, 5, 0]
    torch.testing.assert_close(sched.add_noise(X, X, [3, 2]), sched.add_noise(X, X, torch.tensor([3, 2])))


META = torch.empty(2, 1, 3, 3, device="meta")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda s: s.step(torch.randn(3, 1, 3, 3), 6, X), r"model_output of shape \(3, 1, 3, 3\) does not fit sample of shape \(2, 1, 3, 3\)"),
        (lambda s: s.step(torch.randn(2, 1, 3, 4), 6, X), r"model_output of shape \(2, 1, 3, 4\) does not fit sample"),
        (lambda s: s.step(torch.randn(2, 1, 9), 6, X), r"model_output of shape \(2, 1, 9\) does not fit"),
        (lambda s: s.step(torch.randn(2, 3, 3, 3), 6, X), r"model_output has 3 channels; expected 1 .* or 2"),
        (lambda s: s.step(torch.ones(2, 1, 3, 3, dtype=torch.long), 6, X), "model_output must have a floating-point dtype, got torch.int64"),
        (lambda s: s.step(X, 6, torch.ones(2, 1, 3, 3, dtype=torch.uint8)), "sample must have a floating-point dtype, got torch.uint8"),
        (lambda s: s.step(X.numpy(), 6, X), "model_output must be a torch.Tensor, got ndarray"),
        (lambda s: s.step(META, 6, X), "model_output and sample must be on the same device, got meta and cpu"),
        (lambda s: s.step(X, 6, X, variance_noise=torch.randn(1, 1, 3, 3)), "shapes must match"),
        (lambda s: s.step(X, 6, X, variance_noise=META), "tensors must be on one device"),
        (lambda s: s.add_noise(X, META, torch.tensor([1, 2])), "tensors must be on one device"),
        (lambda s: s.add_noise(X.long(), X, torch.tensor([1, 2])), "original_samples must have a floating-point dtype"),
        (lambda s: s.get_velocity(X, X[:1], torch.tensor([1, 2])), "shapes must match"),
        (lambda s: s.add_noise(X, X, torch.tensor([0, 1, 2])), "batch size 3"),
    ],
)
def test_step_and_add_noise_check_their_tensors(call, match):
    with pytest.raises(ValueError, match=match):
        call(_sched())


def test_2c_outputs_and_mixed_float_dtypes_are_accepted():
    learned = ScratchDDPMScheduler(num_train_timesteps=10, variance_type="learned_range")
    assert learned.step(torch.zeros(2, 2, 3, 3), 6, X).prev_sample.shape == X.shape
    # 2C channels under a fixed variance: the variance half is ignored, so the step is the C-channel one, draw for draw
    out = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    for t in (6, 0):
        full = _sched().step(out, t, X, generator=torch.Generator().manual_seed(2))
        half = _sched().step(out[:, :1], t, X, generator=torch.Generator().manual_seed(2))
        assert torch.equal(full.prev_sample, half.prev_sample)
        assert torch.equal(full.pred_original_sample, half.pred_original_sample)
    assert not torch.equal(full.prev_sample, _sched().step(out[:, 1:], 0, X).prev_sample)  # the halves differ
    assert _sched().step(X.half(), 6, X).prev_sample.shape == X.shape


@pytest.mark.parametrize(
    "model_output,sample,match",
    [
        (torch.full((2, 1, 3, 3), NAN), X, r"model_output has 18 non-finite \(NaN or inf\) values out of 18 at timestep 6"),
        (X.clone().index_fill_(0, torch.tensor([1]), INF), X, r"model_output has 9 non-finite"),
        (X, X.clone().index_fill_(2, torch.tensor([0]), -INF), r"sample has 6 non-finite"),
    ],
)
def test_the_finite_check_is_opt_in(model_output, sample, match):
    sched = _sched()
    # off by default: the hot path reads nothing back, and NaN/inf flow on as in diffusers (or are
    # hidden by x_0 clipping: inf clips to -1, which is what the check is for)
    sched.step(model_output, 6, sample)
    sched.check_finite = True
    with pytest.raises(ValueError, match=match):
        sched.step(model_output, 6, sample)
    with pytest.raises(ValueError, match=match.replace("at timestep 6", r"at timestep \[6, 6\]")):
        sched.step(model_output, torch.tensor([6, 6]), sample)
    assert "check_finite" not in sched.config  # an attribute: configs shared via from_config are unchanged
    assert ScratchDDPMScheduler.from_config(sched.config).check_finite is False
    assert torch.isfinite(sched.step(X, 6, X).prev_sample).all()
