"""Small tensor helpers and argument checks shared by the scheduler, the likelihood code and training.

The checks run where an argument enters the library, so that a bad value fails with its name and the
allowed values instead of deep inside torch (or, worse, not at all: ``torch.linspace`` takes a bool,
``.long()`` truncates 5.7 to 5). They look at types, shapes, dtypes and devices only, which costs
nothing on an accelerator; ``require_finite`` reads values and is for opt-in checks.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. Also a ValueError, so that callers catching bad input as
    ValueError (the command-line tools do) report it the same way."""


def require_real(name: str, value) -> float:
    """``value`` as a float if it is a finite real number (int, float, numpy scalar; not bool or str)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a finite real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def require_int(name: str, value, minimum: int | None = None) -> int:
    """``value`` as an int if it is an integer (int or numpy integer; bool is not one), >= ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def require_bool(name: str, value) -> bool:
    """``value`` if it is a bool (or numpy bool): a string such as "False" would otherwise read as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def as_timesteps(name: str, timesteps) -> int | torch.Tensor:
    """Timesteps as an int (a scalar) or an integer tensor, refusing anything that would be truncated.

    Allowed: a Python or numpy int, an integer-dtype tensor or array, a sequence of ints. Floats are
    refused whatever their value (5.7 and 5.0 alike): telling an integral float tensor from a
    fractional one means reading it, a device sync on an accelerator. Bools are refused too.
    """
    if isinstance(timesteps, torch.Tensor):  # first: the sampling loop's case, checked from metadata only
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise ArgumentTypeError(
                f"{name} must have an integer dtype (as scheduler.timesteps has), got a {timesteps.dtype} tensor; "
                "timesteps are never rounded or truncated here: convert them explicitly, e.g. t.round().long()"
            )
        return timesteps
    if isinstance(timesteps, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be an integer timestep, got bool {timesteps!r}")
    if isinstance(timesteps, numbers.Integral):
        return int(timesteps)
    if isinstance(timesteps, (np.ndarray, list, tuple)):
        array = np.asarray(timesteps)
        if array.dtype.kind not in "iu" and not (array.size == 0 and array.dtype.kind == "f"):
            raise ArgumentTypeError(
                f"{name} must be integers, got {array.dtype} values {array.tolist()!r}; timesteps are never "
                "rounded or truncated here: convert them explicitly"
            )
        return torch.as_tensor(array.astype(np.int64))
    raise ArgumentTypeError(
        f"{name} must be an int, an integer tensor or a sequence of ints, got {type(timesteps).__name__} {timesteps!r}"
    )


def require_finite(timestep, **tensors: torch.Tensor) -> None:
    """Raise if any of ``tensors`` holds NaN or inf. Reads the values: one device sync per call."""
    for name, tensor in tensors.items():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            where = timestep.tolist() if isinstance(timestep, torch.Tensor) else timestep
            raise ValueError(
                f"{name} has {bad} non-finite (NaN or inf) values out of {finite.numel()} at timestep {where}"
            )


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
    a Python int, a 0-d tensor or a (B,) tensor whose B matches ``like.shape[0]``, of an integer
    type (``as_timesteps``: a float is refused, never truncated).
    """
    timesteps = torch.as_tensor(as_timesteps("timesteps", timesteps), device=table.device).long()
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
    """Standard normal noise of ``shape``: diffusers' ``randn_tensor``, the very draws DDPMScheduler.step
    makes from the same generator (a CPU generator draws on the CPU and the result is moved, so a seed
    means the same noise on every device; a list holds one generator per batch element).

    Ours only in this: a list of generators must hold one per batch element (or just one), where
    ``randn_tensor`` silently ignores the extra ones.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) not in (1, shape[0]):
            raise ValueError(
                f"got a list of {len(generator)} generators for a batch of {shape[0]}; pass one per sample"
            )
        generator = list(generator)
    return randn_tensor(tuple(shape), generator=generator, device=torch.device(device), dtype=dtype)
