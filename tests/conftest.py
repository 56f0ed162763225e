"""Fixtures every test module gets without importing them.

Helpers a test calls with arguments (tiny models, the loopback Hub, a perturbed UNet, a free port,
a read-only folder) are plain functions in `_pipeline_fixtures.py` and `_helpers.py`, imported by name.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread():
    """Run torch on one thread in the test process (children launched by tests set OMP_NUM_THREADS).

    The models are tiny: with several OpenMP threads on a busy CPU, threads waiting for each other
    cost far more than the work (a tiny UNet forward can take seconds instead of milliseconds), and
    under pytest-xdist every worker gets one core's worth of threads. Session scope: it is set before
    any module-scoped fixture builds a model, and no test needs another thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def digits_classifier_cache(tmp_path_factory):
    """A private cache folder for the digits classifier, set as $DDPM_FROM_SCRATCH_CACHE for the session.

    The evaluation tests train the classifier once (seconds) into it and share it; code that uses the
    default cache, and every process a test starts, reads and writes here, never in the user's ~/.cache."""
    from ddpm_from_scratch.digits.classifier import CACHE_ENV_VAR

    folder = tmp_path_factory.mktemp("classifier_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV_VAR, str(folder))
        yield folder
