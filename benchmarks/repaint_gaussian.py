"""How far RePaint's samples are from the exact conditional: its exact moments on a Gaussian toy.

    python -m benchmarks.repaint_gaussian
    python -m benchmarks.repaint_gaussian --num-train-timesteps 400 --jump-lengths 1 5 --jump-n-samples 1 20 100

On Gaussian data x_0 ~ N(mu, Sigma) the optimal noise predictor is linear in x_t, so every step of
RePaint's walk (``ScratchInpaintPipeline``) is an affine map of x plus independent Gaussian noise:

    down at timestep t (unknown pixels):  x_s = c_0 x0_hat(x_t) + c_t x_t + sigma_t z       (P2 mean, E3)
    down (known pixels):                  x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s) z       (F2; x_0 on the last step)
    up:                                   x_t = sqrt(alpha_t) x_s + sqrt(beta_t) z          (F1)

and the law of its output is Gaussian with a mean and covariance that can be carried through the walk
exactly (no sampling). This script does that for the toy of tests/test_editing.py (2x2 images, the
upper row kept one standard deviation above its mean) and prints how far RePaint's lower row is from
the exact conditional N(mu_u + S_uk S_kk^-1 (x_k - mu_k), S_uu - S_uk S_kk^-1 S_ku): the mean's error
as a fraction of the shift from the prior mean, the covariance's relative error, and both in standard
errors of a Monte-Carlo estimate from N samples. tests/test_editing.py checks that the pipeline's
samples have these moments.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from benchmarks.common import print_table
from ddpm_from_scratch.editing.inpaint import repaint_schedule

TOY_MEAN = (0.1, -0.1, 0.0, 0.2)  # pixels in row-major order of a 2x2 image
TOY_STD = (0.25, 0.2, 0.22, 0.25)
TOY_CORR = ((1.0, 0.56, 0.63, 0.49), (0.56, 1.0, 0.525, 0.595), (0.63, 0.525, 1.0, 0.56), (0.49, 0.595, 0.56, 1.0))
KNOWN, UNKNOWN = [0, 1], [2, 3]  # the upper row is kept, the lower row filled
KNOWN_OFFSET_STDS = 1.0  # the kept row sits this many standard deviations above its mean


def toy_mean() -> torch.Tensor:
    return torch.tensor(TOY_MEAN, dtype=torch.float64)


def toy_covariance() -> torch.Tensor:
    std = torch.tensor(TOY_STD, dtype=torch.float64)
    return torch.tensor(TOY_CORR, dtype=torch.float64) * std[:, None] * std[None]


def toy_betas(num_train_timesteps: int) -> torch.Tensor:
    """The paper's linear betas stretched to T steps (abar_T ~ 4e-5 as at T = 1000)."""
    scale = 1000 / num_train_timesteps
    return torch.linspace(1e-4 * scale, 0.02 * scale, num_train_timesteps, dtype=torch.float64)


def known_row() -> torch.Tensor:
    return toy_mean()[KNOWN] + KNOWN_OFFSET_STDS * toy_covariance().diagonal()[KNOWN].sqrt()


def exact_conditional(x_known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean mu_u + S_uk S_kk^-1 (x_k - mu_k) and covariance S_uu - S_uk S_kk^-1 S_ku of the unknown pixels."""
    mu, sigma = toy_mean(), toy_covariance()
    s_uk, s_kk = sigma[UNKNOWN][:, KNOWN], sigma[KNOWN][:, KNOWN]
    mean = mu[UNKNOWN] + s_uk @ torch.linalg.solve(s_kk, x_known - mu[KNOWN])
    return mean, sigma[UNKNOWN][:, UNKNOWN] - s_uk @ torch.linalg.solve(s_kk, s_uk.T)


@dataclass
class Gaussian:
    mean: torch.Tensor  # (d,)
    covariance: torch.Tensor  # (d, d)

    def affine(self, matrix: torch.Tensor, shift: torch.Tensor, noise_covariance: torch.Tensor) -> "Gaussian":
        """The law of matrix x + shift + noise, noise ~ N(0, noise_covariance) independent of x."""
        return Gaussian(matrix @ self.mean + shift, matrix @ self.covariance @ matrix.T + noise_covariance)


def repaint_moments(num_train_timesteps: int, jump_length: int, jump_n_sample: int,
                    variance: str = "fixed_large") -> Gaussian:
    """The exact law of the lower row after RePaint's walk over the whole chain (K = T), optimal model.

    `variance`: "fixed_large" (beta_t) or "fixed_small" (beta~_t) on every step but the last, which adds
    no noise (as DDPM's sampler); or "exact", the true reverse covariance of the toy on every step,
    the last included (no sampler of this package does that: it separates RePaint's error from the
    noiseless last step's).
    """
    # The tables are computed here from the betas, not taken from DiffusionChain: the test checks the pipeline
    # (which steps through DiffusionChain) against this law, so the two must not share code.
    betas = toy_betas(num_train_timesteps)
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    mu, sigma, eye = toy_mean(), toy_covariance(), torch.eye(4, dtype=torch.float64)
    x_known = known_row()
    unknown, known = torch.zeros(4, 4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64)
    unknown[UNKNOWN, UNKNOWN], known[KNOWN, KNOWN] = 1.0, 1.0

    x = Gaussian(torch.zeros(4, dtype=torch.float64), eye.clone())  # x_T ~ N(0, I)
    schedule = repaint_schedule(num_train_timesteps, jump_length, jump_n_sample)
    last = schedule[0] + 1
    for entry in schedule:
        if entry < last:  # down from timestep t = entry to s = t - 1
            t = entry
            # optimal eps = G (x_t - sqrt(abar_t) mu); x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
            gain = (1 - abar[t]).sqrt() * torch.linalg.inv(abar[t] * sigma + (1 - abar[t]) * eye)
            x0_matrix = (eye - (1 - abar[t]).sqrt() * gain) / abar[t].sqrt()
            x0_shift = (1 - abar[t]).sqrt() * gain @ mu
            c_0 = abar_prev[t].sqrt() * betas[t] / (1 - abar[t])  # E3's coefficients of x0_hat and x_t
            c_t = alphas[t].sqrt() * (1 - abar_prev[t]) / (1 - abar[t])
            posterior_variance = betas[t] * (1 - abar_prev[t]) / (1 - abar[t])
            if variance == "exact":  # Cov(x_s | x_t) = beta~_t I + c_0^2 Cov(x_0 | x_t), the last step included
                x0_covariance = torch.linalg.inv(torch.linalg.inv(sigma) + abar[t] / (1 - abar[t]) * eye)
                noise_covariance = posterior_variance * eye + c_0**2 * x0_covariance
            else:
                noise_covariance = (0.0 if t == 0 else betas[t] if variance == "fixed_large" else posterior_variance) * eye
            reverse = x.affine(c_0 * x0_matrix + c_t * eye, c_0 * x0_shift, noise_covariance)
            known_mean = torch.zeros(4, dtype=torch.float64)
            known_mean[KNOWN] = abar_prev[t].sqrt() * x_known
            x = Gaussian(unknown @ reverse.mean + known_mean,
                         unknown @ reverse.covariance @ unknown + (1 - abar_prev[t]) * known)
        else:  # up: F1 of the step t = entry - 1
            t = entry - 1
            x = x.affine(alphas[t].sqrt() * eye, torch.zeros(4, dtype=torch.float64), betas[t] * eye)
        last = entry
    return Gaussian(x.mean[UNKNOWN], x.covariance[UNKNOWN][:, UNKNOWN])


def standard_errors(covariance: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo standard errors of a mean, sqrt(S_ii / N), and of a covariance entry, sqrt((S_ii S_jj + S_ij^2) / N)."""
    diagonal = covariance.diagonal()
    return ((diagonal / num_samples).sqrt(),
            ((diagonal[:, None] * diagonal[None] + covariance**2) / num_samples).sqrt())


def bias_row(num_train_timesteps: int, jump_length: int, jump_n_sample: int, num_samples: int,
             variance: str) -> list[str]:
    mean, covariance = exact_conditional(known_row())
    law = repaint_moments(num_train_timesteps, jump_length, jump_n_sample, variance)
    shift = mean - toy_mean()[UNKNOWN]
    mean_se, cov_se = standard_errors(covariance, num_samples)
    mean_error, cov_error = law.mean - mean, (law.covariance - covariance)[[0, 0, 1], [0, 1, 1]]
    return [str(num_train_timesteps), variance, str(jump_length), str(jump_n_sample),
            ", ".join(f"{value:+.1%}" for value in mean_error / shift),
            ", ".join(f"{value:+.1f}" for value in mean_error / mean_se),
            ", ".join(f"{value:+.1%}" for value in cov_error / covariance[[0, 0, 1], [0, 1, 1]]),
            ", ".join(f"{value:+.1f}" for value in cov_error / cov_se[[0, 0, 1], [0, 1, 1]])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train-timesteps", type=int, nargs="+", default=[200, 400])
    parser.add_argument("--jump-lengths", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--jump-n-samples", type=int, nargs="+", default=[1, 5, 20, 100])
    parser.add_argument("--variance", nargs="+", choices=["fixed_large", "fixed_small", "exact"], default=["fixed_large"])
    parser.add_argument("--num-samples", type=int, default=2000, help="N of the standard-error columns")
    args = parser.parse_args(argv)
    rows = [bias_row(steps, jump, r, args.num_samples, variance) for steps in args.num_train_timesteps
            for variance in args.variance for jump in args.jump_lengths for r in args.jump_n_samples]
    print_table(["T", "variance", "j", "r", "mean error / shift", f"mean error, SE at N={args.num_samples}",
                 "covariance error (S_22, S_23, S_33)", f"covariance error, SE at N={args.num_samples}"], rows)


if __name__ == "__main__":
    main()
