"""The training objective: one function from a batch of clean images to a scalar loss.

L_simple (L2 in docs/derivation.md): E_{t, x_0, eps} || target - model(x_t, t) ||^2 with t ~ U{0..T-1} and
x_t from the closed-form forward process (F2). The target is the noise (the paper), x_0 or v,
whichever the scheduler's `prediction_type` says (`scheduler.training_target`).

Everything before the network runs in float32, whatever the mixed-precision setting: sqrt(1 - abar_t)
is ~0.01 at small t, and a bf16 x_t there would round away most of the noise the model must find.
The model output is cast back to float32 before the loss for the same reason.

`loss_type="hybrid"` adds lambda L_vlb (Nichol & Dhariwal 2021) to train a learned variance, and
`snr_gamma` weights each image's L_simple term by Min-SNR-gamma (Hang et al. 2023; L3); the losses
themselves live in `ddpm_from_scratch.bound.losses`, shared with the likelihood code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpm_from_scratch.bound.losses import DEFAULT_LAMBDA_VLB, training_loss


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, float32, differentiable


def draw_timesteps(batch_size: int, num_train_timesteps: int, generator: torch.Generator, device) -> torch.Tensor:
    """t ~ Uniform{0, ..., T-1} (diffusers' 0-based index for the paper's t = 1..T)."""
    return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=generator.device).to(device)


def diffusion_loss(
    model: torch.nn.Module,
    noise_scheduler,
    clean_images: torch.Tensor,
    generator: torch.Generator,
    class_labels: torch.Tensor | None = None,
    loss_type: str = "simple",
    lambda_vlb: float = DEFAULT_LAMBDA_VLB,
    snr_gamma: float | None = None,
) -> LossOutput:
    """L_simple (or the hybrid loss) for one micro-batch. clean_images: (B, C, H, W) in [-1, 1].

    The body of Ho et al.'s Algorithm 1 (docs/derivation.md, section 4), one line each:

        x_0 ~ q(x_0)                                     clean_images, the batch the trainer drew
        t ~ Uniform({1, ..., T})                         draw_timesteps (code index t - 1 in 0..T-1)
        eps ~ N(0, I)                                    noise, float32
        x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps    add_noise (F2)
        loss = || eps - eps_theta(x_t, t) ||^2           training_loss (L2)

    The target is eps, x_0 or v as the scheduler's ``prediction_type`` says. ``snr_gamma`` (None: the
    unweighted loss above) multiplies each image's squared error by the Min-SNR-gamma weight at its t
    (L3, ``bound.losses.min_snr_weight``) before the batch mean. The gradient step and the
    "repeat ... until converged" loop are the trainer's (``trainer.py``: backward, Adam, EMA).
    """
    clean_images = clean_images.float()
    noise = torch.randn(clean_images.shape, generator=generator, device=generator.device, dtype=torch.float32)
    noise = noise.to(clean_images.device)
    timesteps = draw_timesteps(clean_images.shape[0], noise_scheduler.config.num_train_timesteps, generator,
                               clean_images.device)
    noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)  # F2, float32
    extra = {} if class_labels is None else {"class_labels": class_labels}
    model_output = model(noisy_images, timesteps, **extra).sample.float()
    chain = noise_scheduler.diffusion_chain(device=clean_images.device)  # the training chain t -> t - 1
    loss = training_loss(loss_type, model_output, chain, noise_scheduler.reverse_step_config, clean_images,
                         noisy_images, noise, timesteps, lambda_vlb=lambda_vlb, snr_gamma=snr_gamma)
    return LossOutput(loss=loss)


def random_horizontal_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (the paper's CIFAR-10 augmentation)."""
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device) < 0.5
    flip = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def drop_class_labels(labels: torch.Tensor, probability: float, null_label: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by `null_label` with `probability`, so one network learns both eps(x, t, y)
    and eps(x, t) (classifier-free guidance, Ho & Salimans 2022)."""
    if probability == 0:
        return labels
    drop = torch.rand(labels.shape[0], generator=generator, device=generator.device) < probability
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_label), labels)


def update_generator(seed: int, update: int, micro_batch: int, process_index: int, device: torch.device) -> torch.Generator:
    """The generator for one micro-batch: a pure function of where the run is, so resuming repeats it."""
    state = np.random.SeedSequence([seed, update, micro_batch, process_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))
