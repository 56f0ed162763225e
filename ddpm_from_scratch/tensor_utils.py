"""Small tensor helpers shared by the scheduler, the likelihood code and training."""

from __future__ import annotations

import torch


def append_dims(x: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """Append trailing singleton dims to ``x`` until it has ``target_ndim`` dims.

    Used to broadcast per-sample coefficients of shape (B,) against images of shape
    (B, C, H, W). Fails loudly instead of silently broadcasting along the wrong axis.
    """
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(
            f"append_dims: input has {x.ndim} dims but target_ndim is {target_ndim}; "
            "target_ndim must be >= the input's number of dims"
        )
    return x.reshape(*x.shape, *([1] * missing))


def extract(table: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``table[timesteps]`` and shape it to broadcast against ``like``.

    ``table`` is a per-timestep float64 table; the result is cast to ``like``'s dtype and
    device *after* the lookup, so the table itself keeps full precision. ``timesteps`` may be
    a Python int, a 0-d tensor or a (B,) tensor whose B matches ``like.shape[0]``.
    """
    timesteps = torch.as_tensor(timesteps, device=table.device).long()
    if timesteps.ndim > 1:
        raise ValueError(f"timesteps must be a scalar or a 1-d batch, got shape {tuple(timesteps.shape)}")
    if timesteps.ndim == 1 and like.ndim > 0 and timesteps.shape[0] not in (1, like.shape[0]):
        raise ValueError(
            f"timesteps has batch size {timesteps.shape[0]} but the sample has batch size {like.shape[0]}"
        )
    # index_select rather than table[timesteps]: indexing with a 0-d tensor reads the index back to
    # the host (.item()), which is a device sync per lookup on a GPU and an error inside CUDA-graph
    # capture.
    values = table.index_select(0, timesteps.reshape(-1)).reshape(timesteps.shape)
    values = values.to(device=like.device, dtype=like.dtype)
    if values.ndim == 0 or like.ndim == 0:
        return values
    return append_dims(values, like.ndim)


def add_scaled(x: torch.Tensor, scale: "float | torch.Tensor", y: torch.Tensor) -> torch.Tensor:
    """x + scale * y, as one fused kernel when ``scale`` is a Python number."""
    if isinstance(scale, (int, float)):
        return torch.add(x, y, alpha=scale)
    return x + scale * y


def draw_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Standard normal noise of ``shape``, reproducible for a generator or a list of them.

    Matches diffusers' ``randn_tensor`` stream for stream, so that the same generator gives the
    same images as diffusers: a CPU generator draws on the CPU and the result is moved (so a seed
    means the same noise on every device); a list holds one generator per batch element (a list of
    one is the same as that generator).
    """
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(
                f"got a list of {len(generator)} generators for a batch of {shape[0]}; pass one per sample"
            )
        return torch.cat([draw_noise((1, *shape[1:]), g, device, dtype) for g in generator]).to(device)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    rand_device = generator.device
    if rand_device == device:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if rand_device.type != "cpu":
        raise ValueError(f"generator is on {rand_device} but the noise is wanted on {device}; use a CPU generator")
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)
