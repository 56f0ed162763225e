"""Stop a diverged run at once, naming the first update whose loss or gradient norm was not finite.

Reading a CUDA tensor on the host waits for the device, so the trainer does not look at every loss:
`DivergenceMonitor.record` keeps, on the device, the number of the first update with a non-finite
loss and of the first with a non-finite gradient norm; `check` reads them (one sync, all processes
together) at the logging steps and before every save, so a NaN never reaches a checkpoint or the
saved pipeline and the reported update is exact however rarely the host looks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch


class TrainingDiverged(RuntimeError):
    """The loss, the gradients or the weights stopped being finite; nothing was saved after that."""


class DivergenceMonitor:
    def __init__(self, device: torch.device, updates_done: int, watch_gradients: bool = True):
        # fp16's loss scaler skips the updates whose gradients overflow: those are expected there
        self.watch_gradients = watch_gradients
        self.update = torch.full((), updates_done, dtype=torch.int64, device=device)
        self.first_bad = torch.zeros(2, dtype=torch.int64, device=device)  # (loss, gradient norm); 0: none yet

    @torch.no_grad()
    def record(self, loss: torch.Tensor, grad_norm: torch.Tensor | float | None) -> None:
        """After an update (device ops only, no sync)."""
        self.update += 1
        norm = grad_norm if self.watch_gradients and grad_norm is not None else 0.0
        norm = torch.as_tensor(norm, device=loss.device).detach().float().reshape(())
        bad = ~torch.isfinite(torch.stack([loss.detach().float().reshape(()), norm]))
        self.first_bad.copy_(torch.where(bad & (self.first_bad == 0), self.update, self.first_bad))

    def check(self, accelerator, last_good: Path | None) -> None:
        """Raise TrainingDiverged on every process if any process saw a non-finite loss or gradient norm."""
        gathered = accelerator.gather(self.first_bad.reshape(1, 2)).reshape(-1, 2).cpu().tolist()
        first_loss = min((row[0] for row in gathered if row[0] > 0), default=0)
        first_grad = min((row[1] for row in gathered if row[1] > 0), default=0)
        if not (first_loss or first_grad):
            return
        causes = []
        if first_loss:
            causes.append(f"the loss was NaN or infinite at update {first_loss}")
        if first_grad:
            causes.append(f"the gradient norm was NaN or infinite at update {first_grad}")
        first = min(update for update in (first_loss, first_grad) if update)
        raise TrainingDiverged(
            f"training diverged: {' and '.join(causes)}. Nothing was saved from update {first} on; "
            f"{_where_to_restart(last_good)}"
        )


def _where_to_restart(last_good: Path | None) -> str:
    advice = "lower --learning_rate (or --lambda_vlb, --max_grad_norm) or check the data"
    if last_good is None:
        return f"no checkpoint was written. To start again, {advice}"
    return (f"the last good checkpoint, {last_good}, is intact: {advice}, and continue it with "
            "--resume_from_checkpoint latest")


def check_finite_weights(named_modules: Iterable[tuple[str, torch.nn.Module]], last_good: Path | None) -> None:
    """Raise TrainingDiverged if any weight of the modules is NaN or infinite (one sync per module)."""
    for name, module in named_modules:
        tensors = [tensor for tensor in module.state_dict().values() if tensor.is_floating_point()]
        if tensors and not torch.stack([torch.isfinite(tensor).all() for tensor in tensors]).all().item():
            bad = next(key for key, tensor in module.state_dict().items()
                       if tensor.is_floating_point() and not torch.isfinite(tensor).all())
            raise TrainingDiverged(f"training diverged: the {name} weights are not finite ({bad} holds NaN or "
                                   f"infinite values), so they were not saved; {_where_to_restart(last_good)}")
