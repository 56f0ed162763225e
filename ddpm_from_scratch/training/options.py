"""Every training option as a typed field, and the presets that fill them.

`TrainingOptions` holds one field per command-line option (the same names), its default the value a
run gets when neither the user nor the preset sets it. The fields without a default are the ones
every preset sets (`PRESETS`); a preset fills every option the user did not give.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# diffusers.optimization.get_scheduler's names that need no extra option
LR_SCHEDULERS = ("constant_with_warmup", "constant", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
BUILTIN_DIGITS = "builtin:digits"
# the unet_preset of a run whose UNet comes from --model_config_name_or_path
CUSTOM_UNET = "custom"
# the trackers accelerate's `log_with` knows, and the package each one needs
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet_ml", "mlflow": "mlflow",
                    "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}

# options of diffusers' train_unconditional.py this trainer refuses, with what to use instead
DIFFUSERS_ONLY_OPTIONS = {
    "save_model_epochs": "this trainer saves the pipeline once, at the end, and the full training state every "
                         "--checkpointing_steps updates (load one with ddpm-sample CHECKPOINT or "
                         "ScratchUNet2DModel.from_pretrained(CHECKPOINT, subfolder='unet_ema')); use --checkpointing_steps",
    "enable_xformers_memory_efficient_attention": "ScratchUNet2DModel's attention already calls "
                         "torch.nn.functional.scaled_dot_product_attention, which picks the memory-efficient kernels "
                         "itself; drop the option",
}

# fields that are not worth recording with the model: a token, local paths that mean nothing elsewhere
NOT_FOR_MODEL_CARD = frozenset({"hub_token", "output_dir", "logging_dir", "cache_dir", "resume_from_checkpoint",
                                "overwrite_output_dir", "model_config_name_or_path", "unet_config", "local_rank",
                                "explicit", *DIFFUSERS_ONLY_OPTIONS})


@dataclass(kw_only=True)
class TrainingOptions:
    """All options after the preset and the defaults are applied."""

    preset: str = "digits"
    # data
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_data_dir: str | None = None
    split: str = "train"
    cache_dir: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    class_conditional: bool = False
    class_dropout_prob: float = 0.1
    resolution: int
    center_crop: bool = True
    random_flip: bool
    dataloader_num_workers: int
    # model and diffusion
    unet_preset: str  # a key of unet.UNET_PRESETS, or CUSTOM_UNET
    model_config_name_or_path: str | None = None
    unet_config: dict[str, Any] | None = None  # the ScratchUNet2DModel config read from model_config_name_or_path
    dropout: float
    prediction_type: str = "epsilon"
    variance_type: str = "fixed_small"
    loss_type: str = "simple"
    lambda_vlb: float = 0.001
    snr_gamma: float | None = None  # Min-SNR-gamma weight on L_simple (derivation L3); None: unweighted
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # optimisation
    train_batch_size: int
    max_train_steps: int
    num_epochs: int | None = None
    gradient_accumulation_steps: int = 1
    learning_rate: float
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    use_ema: bool = True
    ema_max_decay: float
    ema_min_decay: float = 0.0
    ema_inv_gamma: float = 1.0
    ema_power: float
    mixed_precision: str | None = None  # None: the accelerate config's
    gradient_checkpointing: bool = False
    # CPU runs: torch threads per process; None: the cores this process may use / processes on this machine
    num_threads: int | None = None
    seed: int = 0
    # checkpoints and outputs
    output_dir: str
    overwrite_output_dir: bool = False
    checkpointing_steps: int | None
    checkpoints_total_limit: int | None
    resume_from_checkpoint: str | None = None
    # logging and samples
    report_to: str = "tensorboard"
    logging_dir: str | None = None
    logging_steps: int
    save_images_steps: int
    save_images_epochs: int | None = None
    num_grid_images: int
    grid_inference_steps: int
    eval_batch_size: int = 128
    # the saved pipeline's default sampling setting (ScratchDDPMPipeline's default_num_inference_steps and
    # default_eta): what a call without num_inference_steps samples with; None records none (all T DDPM steps)
    default_inference_steps: int | None = None
    default_eta: float | None = None
    # diffusers' options with no counterpart here (refused, or ignored: local_rank)
    save_model_epochs: int | None = None
    enable_xformers_memory_efficient_attention: bool | None = None
    local_rank: int | None = None
    # Hugging Face Hub
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None
    hub_private_repo: bool = False

    # the options the user gave (on the command line or to fit), for the conflict checks and the model card
    explicit: frozenset[str] = field(default=frozenset(), repr=False)

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)

    @property
    def logging_path(self) -> Path:
        """--logging_dir, relative to --output_dir as in diffusers' scripts (an absolute path stays as it is)."""
        return self.output_path / (self.logging_dir or "logs")

    def for_model_card(self) -> dict[str, Any]:
        """The options worth recording with the model (no token, no local paths that mean nothing elsewhere)."""
        return {f.name: getattr(self, f.name) for f in sorted(fields(self), key=lambda f: f.name)
                if f.name not in NOT_FOR_MODEL_CARD}


# The options each preset sets: every field of TrainingOptions without a default, and a few with one.
PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to train on a 2-core CPU in well under 10 minutes, sampling included; the
    # numbers were picked by measurement (docs/training.md, "Presets").
    "digits": dict(
        unet_preset="digits",
        dataset_name=BUILTIN_DIGITS,
        resolution=8,
        random_flip=False,  # a mirrored 2 is not a digit
        train_batch_size=64,
        learning_rate=1e-3,
        lr_warmup_steps=100,
        # Nichol & Dhariwal's cosine schedule and 3,500 updates: the tuning over training seeds with the
        # evaluator at N = 1,000 (docs/experiments.md, "Tuning the digits preset") found these the closest
        # to real digits within 5 minutes of training on a 2-core CPU
        beta_schedule="squaredcos_cap_v2",
        max_train_steps=3500,
        ema_max_decay=0.999,
        ema_power=0.75,
        dropout=0.0,
        checkpointing_steps=500,
        checkpoints_total_limit=2,
        save_images_steps=0,  # only the final grid by default
        num_grid_images=100,
        # The default sampling setting the saved pipeline records, and the final grid's steps: 100 strided
        # DDPM steps (fixed_small, eta None), the fewest whose FD over 4 seeds of N = 1,000 lies within the
        # spread of 1000-step sampling (docs/experiments.md, "the trade-off"; benchmarks/tradeoff_seeds.py)
        grid_inference_steps=100,
        default_inference_steps=100,
        default_eta=None,
        logging_steps=10,
        dataloader_num_workers=0,
    ),
    # Ho et al. 2020, appendix B: batch 128, Adam lr 2e-4, 5000 warmup steps, dropout 0.1,
    # EMA 0.9999, random horizontal flips, 800k steps, grad clip 1.0.
    "cifar10": dict(
        unet_preset="cifar10",
        dataset_name="uoft-cs/cifar10",
        resolution=32,
        random_flip=True,
        train_batch_size=128,
        learning_rate=2e-4,
        lr_warmup_steps=5000,
        max_train_steps=800_000,
        ema_max_decay=0.9999,
        ema_power=2 / 3,
        dropout=0.1,
        checkpointing_steps=10_000,
        checkpoints_total_limit=3,
        save_images_steps=10_000,
        num_grid_images=64,
        grid_inference_steps=1000,
        logging_steps=50,
        dataloader_num_workers=4,
    ),
}
