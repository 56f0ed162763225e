"""The figures of docs/derivation.md, drawn from the package's own functions.

    python -m benchmarks.derivation_figures --out docs/assets

writes five PNGs (CPU only, no network, well under a minute) and prints a table of what each shows:

- derivation_forward_digit.png: one built-in digit noised by F2 at several t (``add_noise``);
- derivation_schedules.png: abar_t and SNR_t = abar_t / (1 - abar_t) of every beta schedule
  (``beta_schedules.make_betas``);
- derivation_variances.png: beta_t, beta~_t (E3), the source text's E3 slip and the analytic variance
  (A1 clipped to A2) of the Gaussian toy, over t;
- derivation_bound_terms.png: the bound's terms per t (L_{t-1}, L_0, L_T) of the Gaussian toy for
  three variance types (``bound.likelihood.nll_bits_per_dim``);
- derivation_gamma.png: Gamma_t (A3) of the Gaussian toy in closed form and by Monte Carlo
  (``bound.analytic_variance.estimate_eps_sq_mean``).

The Gaussian toy: data x_0 ~ N(0, tau^2 I) per pixel, tau = TOY_STD. Its optimal noise predictor is
linear, eps*(x_t, t) = E[eps | x_t] = sqrt(1 - abar_t) x_t / v_t with v_t = abar_t tau^2 + 1 - abar_t,
so Gamma_t = (1 - abar_t) / v_t in closed form (derivation.md, section 5). It stands in for a trained
model: no weights are needed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import torch  # noqa: E402

from ddpm_from_scratch.beta_schedules import make_betas  # noqa: E402
from ddpm_from_scratch.scheduler import ScratchDDPMScheduler  # noqa: E402

DEFAULT_OUT = Path("docs/assets")
FIGURES = (
    "derivation_forward_digit.png",
    "derivation_schedules.png",
    "derivation_variances.png",
    "derivation_bound_terms.png",
    "derivation_gamma.png",
)
TOY_STD = 0.25  # tau: the toy data N(0, tau^2) per pixel lie in [-1, 1] up to 4 standard deviations
TOY_IMAGE_SHAPE = (1, 8, 8)  # the digits' shape, d = 64
# the paper's t (1..T) at which the digit is shown; code index = t - 1
DIGIT_TIMESTEPS = (1, 50, 100, 250, 500, 750, 1000)
DPI = 120
F64 = torch.float64


# ---- the Gaussian toy (section 5 of docs/derivation.md) ------------------------------------------


def toy_gamma(alphas_cumprod: torch.Tensor, std: float = TOY_STD) -> torch.Tensor:
    """Gamma_t = E ||E[eps | x_t]||^2 / d (A3) for data N(mu, tau^2 I), tau = ``std``:
    (1 - abar_t) / (abar_t tau^2 + 1 - abar_t) (derivation.md, section 5, the toy model)."""
    return (1 - alphas_cumprod) / (alphas_cumprod * std**2 + 1 - alphas_cumprod)


class ToyEps:
    """The optimal noise predictor of the toy, eps*(x_t, t) = sqrt(1 - abar_t) x_t / v_t, for (B,) timesteps."""

    def __init__(self, alphas_cumprod: torch.Tensor, std: float = TOY_STD):
        self.alphas_cumprod, self.std = alphas_cumprod.to(F64), std

    def __call__(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod[timesteps.cpu()].to(x_t).reshape(-1, *([1] * (x_t.ndim - 1)))
        return (1 - abar).sqrt() * x_t / (abar * self.std**2 + 1 - abar)


def toy_images(n: int, generator: torch.Generator, std: float = TOY_STD) -> torch.Tensor:
    """n toy images (n, 1, 8, 8) on the 8-bit grid k / 127.5 - 1, where the bound's decoder needs them
    (clamped to [-1, 1]: a fraction 6e-5 of the pixels at std = 0.25)."""
    x = std * torch.randn(n, *TOY_IMAGE_SHAPE, generator=generator, dtype=F64)
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def texts_e3_slip(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """What the source text gives as the posterior variance (slip E3): alpha_t / (1 - alpha_t) + 1 / (1 - abar_{t-1}).

    (T - 1,) for the paper's t = 2..T (at t = 1, 1 - abar_0 = 0). It is the precision A, 1 / beta~_t.
    """
    alphas = alphas_cumprod[1:] / alphas_cumprod[:-1]
    return alphas / (1 - alphas) + 1 / (1 - alphas_cumprod[:-1])


# ---- the figures ---------------------------------------------------------------------------------


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def figure_forward_digit(out: Path) -> Path:
    """(a) x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (F2) for one digit and one eps, at DIGIT_TIMESTEPS."""
    from ddpm_from_scratch.digits.data import digits_as_uint8

    images, labels = digits_as_uint8()
    digit = images[int((labels == 3).nonzero()[0][0])]  # the first "3"
    x_start = torch.as_tensor(digit, dtype=torch.float32)[None, None] / 127.5 - 1  # (1, 1, 8, 8) in [-1, 1]
    noise = torch.randn(x_start.shape, generator=torch.Generator().manual_seed(0))
    scheduler = ScratchDDPMScheduler()
    abar = scheduler.forward_chain.alphas_cumprod
    fig, axes = plt.subplots(1, len(DIGIT_TIMESTEPS), figsize=(1.6 * len(DIGIT_TIMESTEPS), 2.1))
    for ax, t in zip(axes, DIGIT_TIMESTEPS):
        x_t = scheduler.add_noise(x_start, noise, torch.tensor([t - 1]))  # code index t - 1
        ax.imshow(x_t[0, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"t = {t}\nabar_t = {abar[t - 1].item():.4g}", fontsize=8)
        ax.set_axis_off()
    fig.suptitle("F2: one digit, one eps, linear schedule (shown clipped to [-1, 1])", fontsize=9)
    return _save(fig, out / "derivation_forward_digit.png")


def schedule_alphas_cumprod() -> dict[str, torch.Tensor]:
    """abar_t (T = 1000) of each schedule of beta_schedules, with the end points it is used with."""
    specs = {
        "linear (1e-4, 0.02)": ("linear", 1e-4, 0.02, False),
        "scaled_linear (0.00085, 0.012)": ("scaled_linear", 0.00085, 0.012, False),
        "squaredcos_cap_v2": ("squaredcos_cap_v2", 1e-4, 0.02, False),
        "sigmoid (1e-4, 0.02)": ("sigmoid", 1e-4, 0.02, False),
        "linear, zero terminal SNR": ("linear", 1e-4, 0.02, True),
    }
    return {
        name: torch.cumprod(1 - make_betas(schedule, 1000, start, end, rescale_betas_zero_snr=rescale), dim=0)
        for name, (schedule, start, end, rescale) in specs.items()
    }


def figure_schedules(out: Path) -> Path:
    """(b) abar_t and log SNR_t for every schedule."""
    fig, (ax_abar, ax_snr) = plt.subplots(1, 2, figsize=(10, 3.8))
    t = torch.arange(1, 1001)
    for name, abar in schedule_alphas_cumprod().items():
        style = "--" if "zero terminal" in name else "-"  # it lies on "linear" except near t = T
        ax_abar.plot(t, abar, style, label=name)
        snr = abar / (1 - abar)
        keep = snr > 0  # SNR_T = 0 under zero terminal SNR: not on a log axis
        ax_snr.plot(t[keep], snr[keep], style, label=name)
    ax_abar.set(xlabel="t", ylabel="abar_t", title="abar_t = alpha_1 ... alpha_t")
    ax_snr.set(xlabel="t", ylabel="SNR_t = abar_t / (1 - abar_t)", yscale="log", title="signal-to-noise ratio")
    ax_abar.legend(fontsize=7)
    return _save(fig, out / "derivation_schedules.png")


def figure_variances(out: Path) -> Path:
    """(c) beta_t, beta~_t, the text's E3 slip and the toy's analytic variance over t (training chain):
    on one log scale, and as a fraction of beta_t."""
    abar = ScratchDDPMScheduler().forward_chain.alphas_cumprod
    chain = ScratchDDPMScheduler(variance_type="analytic", analytic_eps_sq_mean=toy_gamma(abar).tolist()).forward_chain
    t = torch.arange(1, 1001)
    beta, beta_tilde, analytic = chain.betas, chain.posterior_variance, chain.analytic_log_variance.exp()
    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4))
    ax.plot(t[1:], texts_e3_slip(abar), label="the text's E3 (slip): alpha_t/(1-alpha_t) + 1/(1-abar_{t-1})", color="C3")
    ax.plot(t, beta, label="beta_t (fixed_large)", color="C0")
    ax.plot(t[1:], analytic[1:], label=f"analytic (A1 clipped to A2), Gaussian toy tau = {TOY_STD}", color="C2")
    ax.plot(t[1:], beta_tilde[1:], label="beta~_t (E3 corrected, fixed_small)", color="C1")
    ax.set(xlabel="t", ylabel="variance of p(x_{t-1} | x_t)", yscale="log", title="Reverse-step variances (t = 2..1000)")
    ax.legend(fontsize=7)
    ax_ratio.plot(t[1:], (beta / beta)[1:], color="C0", label="beta_t / beta_t")
    ax_ratio.plot(t[1:], (analytic / beta)[1:], color="C2", label=f"analytic / beta_t, tau = {TOY_STD}")
    ax_ratio.plot(t[1:], (beta_tilde / beta)[1:], color="C1", label="beta~_t / beta_t")
    ax_ratio.set(xlabel="t", xscale="log", ylabel="fraction of beta_t", title="The same, as a fraction of beta_t")
    ax_ratio.legend(fontsize=7)
    return _save(fig, out / "derivation_variances.png")


def toy_bounds(num_images: int = 128, seed: int = 0) -> dict:
    """The bound of the toy's optimal predictor for fixed_small, fixed_large and analytic (no clipping)."""
    from ddpm_from_scratch.bound.likelihood import nll_bits_per_dim

    abar = ScratchDDPMScheduler().forward_chain.alphas_cumprod
    model, x_start = ToyEps(abar), toy_images(num_images, torch.Generator().manual_seed(seed))
    bounds = {}
    for variance_type in ("fixed_small", "fixed_large", "analytic"):
        extra = {"analytic_eps_sq_mean": toy_gamma(abar).tolist()} if variance_type == "analytic" else {}
        scheduler = ScratchDDPMScheduler(clip_sample=False, variance_type=variance_type, **extra)
        # the same seed for every variance type: the curves differ by the variance, not by the draws
        bounds[variance_type] = nll_bits_per_dim(model, scheduler, x_start, generator=torch.Generator().manual_seed(seed),
                                                 progress=False)
    return bounds


def figure_bound_terms(out: Path, bounds: dict) -> Path:
    """(d) the bound's terms per t (L_0 at t = 1, L_{t-1} at t = 2..T), and their running total."""
    fig, (ax, ax_total) = plt.subplots(1, 2, figsize=(11, 4))
    t = torch.arange(1, 1001)
    for variance_type, bound in bounds.items():
        terms = bound.terms_per_timestep()  # (T,) bits/dim; index 0 is L_0, index i >= 1 is L_i
        label = (f"{variance_type}: L_0 {float(bound.decoder_bpd.mean()):.3f}, "
                 f"L_T {float(bound.prior_bpd.mean()):.1e}, total {bound.bits_per_dim:.3f} bits/dim")
        ax.plot(t[1:], terms[1:], label=label, linewidth=1)
        ax_total.plot(t, terms.cumsum(0), label=variance_type, linewidth=1)
    ax.set(xlabel="t", ylabel="L_{t-1} (bits/dim)", xscale="log", yscale="log",
           title=f"L_{{t-1}} per t, Gaussian toy tau = {TOY_STD}, its eps*")
    ax.legend(fontsize=7)
    ax_total.set(xlabel="t", ylabel="L_0 + sum of L_{t'-1}, t' = 2..t (bits/dim)", xscale="log",
                 title="Running total over t (add L_T for the bound)")
    ax_total.legend(fontsize=7)
    return _save(fig, out / "derivation_bound_terms.png")


def figure_gamma(out: Path, num_images: int = 200, seed: int = 0) -> Path:
    """(e) Gamma_t: closed form for tau = 0, TOY_STD, 1, and the Monte-Carlo estimate at tau = TOY_STD."""
    from ddpm_from_scratch.bound.analytic_variance import estimate_eps_sq_mean

    scheduler = ScratchDDPMScheduler()
    abar = scheduler.forward_chain.alphas_cumprod
    t = torch.arange(1, 1001)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t, toy_gamma(abar, 0.0), label="tau = 0 (one point): Gamma_t = 1, A1 = beta~_t", color="C1")
    ax.plot(t, toy_gamma(abar), label=f"tau = {TOY_STD}: (1 - abar_t) / (abar_t tau^2 + 1 - abar_t)", color="C2")
    ax.plot(t, toy_gamma(abar, 1.0), label="tau = 1 (N(0, I)): Gamma_t = 1 - abar_t, A1 = beta_t", color="C0")
    generator = torch.Generator().manual_seed(seed)
    images = TOY_STD * torch.randn(num_images, *TOY_IMAGE_SHAPE, generator=generator, dtype=F64)
    estimate = estimate_eps_sq_mean(ToyEps(abar), scheduler, images, num_timesteps_sampled=30, generator=generator,
                                    progress=False)
    k = estimate.timesteps
    ax.errorbar(k + 1, estimate.eps_sq_mean[k], yerr=2 * estimate.standard_error[k], fmt="o", markersize=3,
                color="k", label=f"estimate_eps_sq_mean, {num_images} images, +-2 standard errors")
    a2_floor = (1 - abar / (1 - abar)).clamp(min=0)  # Gamma_t >= 1 - r^2 abar_t / (1 - abar_t), r = 1 (A2)
    ax.plot(t, a2_floor, "--", color="grey", label="lowest Gamma_t the upper bound of A2 allows (r = 1)")
    ax.set(xlabel="t", ylabel="Gamma_t = E ||eps*(x_t, t)||^2 / d", title="Gamma_t of Gaussian data N(0, tau^2 I)",
           ylim=(-0.03, 1.05))
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out / "derivation_gamma.png")


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for the PNGs (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bounds = toy_bounds()
    paths = [
        figure_forward_digit(args.out),
        figure_schedules(args.out),
        figure_variances(args.out),
        figure_bound_terms(args.out, bounds),
        figure_gamma(args.out),
    ]
    print(f"{'variance_type':<14} {'bound (bits/dim)':>17} {'L_0':>8} {'L_T':>9}   (Gaussian toy tau = {TOY_STD})")
    for variance_type, bound in bounds.items():
        print(f"{variance_type:<14} {bound.bits_per_dim:>17.3f} {float(bound.decoder_bpd.mean()):>8.3f} "
              f"{float(bound.prior_bpd.mean()):>9.2e}")
    print(f"\n{'figure':<40} {'bytes':>8}")
    for path in paths:
        print(f"{str(path):<40} {path.stat().st_size:>8}")
    print(f"{time.perf_counter() - started:.1f} s")
    return paths


if __name__ == "__main__":
    main()
