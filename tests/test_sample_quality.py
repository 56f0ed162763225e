"""Sample-quality evaluator: the formulas against closed forms, the classifier, and the figures on real data.

The classifier is trained once per session into a temporary cache (conftest.py; about 5-10 s on one core).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_from_scratch.digits import classifier as dc
from ddpm_from_scratch.digits.classifier import (
    DigitsClassifierConfig,
    load_digits_classifier,
    train_digits_classifier,
)
from ddpm_from_scratch.digits.data import as_uint8_images
from ddpm_from_scratch.digits.metrics import (
    class_coverage,
    classifier_score,
    frechet_distance,
    histogram_entropy_bits,
    kernel_inception_distance,
    knn_coverage,
    knn_density,
    knn_precision,
    knn_recall,
    label_histogram,
    near_copy_threshold,
    nearest_neighbour_distances,
    nearest_neighbour_radii,
)
from ddpm_from_scratch.digits.quality import SampleQualityEvaluator, evaluate_samples, reference_report


def random_spd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T + (0.0 if rank else 0.1) * np.eye(d)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def points_with_moments(rng: np.random.Generator, mean: np.ndarray, cov: np.ndarray, n: int = 200) -> np.ndarray:
    """n points whose sample mean and unbiased sample covariance are exactly ``mean`` and ``cov``.

    The Frechet distance of two such sets is the closed form of the two Gaussians, with no sampling error."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance exactly I
    return mean + z @ psd_sqrt(cov)


# ----------------------------------------------------------------------------- Frechet distance (torchmetrics)


def test_frechet_distance_matches_closed_form_for_diagonal_covariances():
    # Commuting covariances: d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 4.0, size=6), rng.uniform(0.1, 4.0, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    x1, x2 = points_with_moments(rng, mu1, np.diag(a)), points_with_moments(rng, mu2, np.diag(b), n=50)
    assert frechet_distance(x1, x2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_closed_form_for_non_commuting_covariances():
    # cov1 = I: tr((I B)^(1/2)) = sum sqrt(eig(B)), so d^2 = |dmu|^2 + sum (1 - sqrt(lambda_i))^2;
    # cov1 = c^2 B: d^2 = (1 - c)^2 tr(B) for any B.
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    cov = random_spd(rng, 5)
    eigenvalues = np.linalg.eigvalsh(cov)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((1 - np.sqrt(eigenvalues)) ** 2)
    identity_points = points_with_moments(rng, mu1, np.eye(5))
    assert frechet_distance(identity_points, points_with_moments(rng, mu2, cov)) == pytest.approx(expected, rel=1e-9)
    scaled = points_with_moments(rng, mu1, 9.0 * cov)
    assert frechet_distance(scaled, points_with_moments(rng, mu1, cov)) == pytest.approx(4.0 * np.trace(cov), rel=1e-9)


def test_frechet_distance_agrees_with_scipy_sqrtm_and_is_symmetric():
    # The formula written out with scipy's general matrix square root, on the sets' own statistics.
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    for _ in range(3):
        x1 = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) + rng.normal(size=8)
        x2 = rng.normal(size=(120, 8)) @ rng.normal(size=(8, 8))
        cov1, cov2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
        covmean = scipy_linalg.sqrtm(cov1 @ cov2).real
        expected = np.sum((x1.mean(0) - x2.mean(0)) ** 2) + np.trace(cov1 + cov2 - 2 * covmean)
        assert frechet_distance(x1, x2) == pytest.approx(expected, rel=1e-8)
        assert frechet_distance(x1, x2) == pytest.approx(frechet_distance(x2, x1), rel=1e-10)


def test_frechet_distance_handles_singular_covariances():
    # Dead ReLU features give exactly rank-deficient covariances (the digits classifier has ~23 of 64).
    rng = np.random.default_rng(3)
    x = points_with_moments(rng, rng.normal(size=10), random_spd(rng, 10, rank=3))
    assert 0.0 <= frechet_distance(x, x) < 1e-5
    a, b = np.array([2.0, 0.0, 0.0]), np.array([0.5, 0.0, 3.0])
    x1, x2 = points_with_moments(rng, np.zeros(3), np.diag(a)), points_with_moments(rng, np.zeros(3), np.diag(b))
    assert frechet_distance(x1, x2) == pytest.approx(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-6)


def test_frechet_distance_of_sampled_gaussians_converges_to_closed_form():
    rng = np.random.default_rng(4)
    mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, -0.5, 0.0])
    cov1, cov2 = random_spd(rng, 4), random_spd(rng, 4)
    exact = frechet_distance(points_with_moments(rng, mu1, cov1), points_with_moments(rng, mu2, cov2))
    x1 = rng.multivariate_normal(mu1, cov1, size=40_000)
    x2 = rng.multivariate_normal(mu2, cov2, size=40_000)
    assert frechet_distance(x1, x2) == pytest.approx(exact, rel=0.05)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


# ----------------------------------------------------------------------------- KID (torchmetrics)


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Binkowski et al. 2018's estimate written out: k(a, b) = (a.b / D + 1)^3, equal set sizes m."""
    kernel = lambda a, b: (a @ b.T / x.shape[1] + 1.0) ** 3  # noqa: E731
    m = len(x)
    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    off = lambda k: k.sum() - np.trace(k)  # noqa: E731
    return (off(k_xx) + off(k_yy)) / (m * (m - 1)) - 2.0 * k_xy.sum() / m**2


def test_kid_equals_the_unbiased_mmd_formula_and_a_closed_form():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(40, 6)), rng.normal(0.3, 1.0, size=(40, 6))
    # subsets as large as both sets hold every row: each subset gives the full-set estimate, spread 0
    mean, std, size = kernel_inception_distance(x, y, subsets=5, subset_size=40)
    assert size == 40 and std == pytest.approx(0.0, abs=1e-9)
    assert mean == pytest.approx(unbiased_mmd2(x, y), rel=1e-10)
    # two point masses a = 1, b = 0 in 1-d: k(a, a) + k(b, b) - 2 k(a, b) = 2^3 + 1 - 2 = 7
    mean, std, _ = kernel_inception_distance(np.ones((10, 1)), np.zeros((10, 1)), subsets=3)
    assert mean == pytest.approx(7.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift_reproducibly():
    rng = np.random.default_rng(9)
    real = rng.normal(size=(400, 8))
    same, std_same, size = kernel_inception_distance(real, rng.normal(size=(400, 8)))
    assert size == 200 and abs(same) < 3 * std_same  # unbiased: 0 within its spread
    shifted = [kernel_inception_distance(real, rng.normal(shift, 1.0, size=(400, 8)))[0] for shift in (0.3, 0.6)]
    assert std_same < shifted[0] < shifted[1]
    state = torch.random.get_rng_state()
    again = kernel_inception_distance(real, real[::-1] + 0.1, seed=4)
    assert again == kernel_inception_distance(real, real[::-1] + 0.1, seed=4)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(real, real[:10], subset_size=11)


# ----------------------------------------------------------------------------- precision, recall, density, coverage


def test_knn_figures_of_identical_sets_and_of_far_apart_sets():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(50, 4))
    k = 5
    assert knn_precision(x, x, k) == knn_recall(x, x, k) == knn_coverage(x, x, k) == 1.0
    # each real ball holds its own centre and its k neighbours (no ties): sum = (k + 1) M
    assert knn_density(x, x, k) == pytest.approx((k + 1) / k)
    far = x + 1e3
    for figure in (knn_precision, knn_recall, knn_density, knn_coverage):
        assert figure(x, far, k) == 0.0


def test_knn_figures_of_a_hand_computed_example():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])  # k = 1: every real radius is 1
    fake = np.array([[0.5], [10.0], [3.2]])  # radii among fakes: 2.7, 6.8, 2.7
    np.testing.assert_allclose(nearest_neighbour_radii(real, 1), [1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(nearest_neighbour_radii(fake, 1), [2.7, 6.8, 2.7])
    assert knn_precision(real, fake, 1) == pytest.approx(2 / 3)  # 0.5 (balls of 0 and 1), 3.2 (ball of 3)
    assert knn_recall(real, fake, 1) == 1.0  # 0, 1, 2, 3 all within 2.7 of 0.5 or 3.2
    assert knn_density(real, fake, 1) == pytest.approx(3 / 3)  # 2 + 0 + 1 ball memberships over k M = 3
    assert knn_coverage(real, fake, 1) == pytest.approx(3 / 4)  # 2's nearest fake is 1.2 away
    with pytest.raises(ValueError, match="N >= 5"):
        knn_precision(real, fake, 4)
    with pytest.raises(ValueError, match="k"):
        knn_precision(real, fake, 0)


# ----------------------------------------------------------------------------- score and coverage


def test_classifier_score_extremes():
    one_hot_all_classes = np.eye(10)[np.arange(100) % 10]
    assert classifier_score(one_hot_all_classes) == pytest.approx(10.0)
    assert classifier_score(np.eye(10)[np.zeros(50, dtype=int)]) == pytest.approx(1.0)
    assert classifier_score(np.full((20, 10), 0.1)) == pytest.approx(1.0)
    two_classes = np.eye(10)[np.arange(40) % 2]
    assert classifier_score(two_classes) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="rows summing to 1"):
        classifier_score(np.full((3, 10), 0.5))


def test_coverage_and_entropy_of_one_class_and_all_classes():
    one_class = np.eye(10)[np.full(30, 7)]
    assert class_coverage(one_class) == pytest.approx(0.1)
    assert histogram_entropy_bits(label_histogram(one_class)) == 0.0
    all_classes = np.eye(10)[np.arange(30) % 10]
    assert class_coverage(all_classes) == 1.0
    assert histogram_entropy_bits(label_histogram(all_classes)) == pytest.approx(np.log2(10))
    unsure = np.full((30, 10), 0.1)
    assert class_coverage(unsure, confidence=0.5) == 0.0
    with pytest.raises(ValueError, match="confidence"):
        class_coverage(all_classes, confidence=0.0)


def test_nearest_neighbour_distances_match_brute_force():
    rng = np.random.default_rng(5)
    queries = rng.integers(0, 256, size=(7, 8, 8), dtype=np.uint8)
    references = rng.integers(0, 256, size=(11, 8, 8), dtype=np.uint8)
    q = queries.reshape(7, -1) / 255.0
    r = references.reshape(11, -1) / 255.0
    brute = np.linalg.norm(q[:, None] - r[None], axis=-1)
    np.testing.assert_allclose(nearest_neighbour_distances(queries, references, chunk_size=3), brute.min(1), rtol=1e-9)
    within = np.linalg.norm(r[:, None] - r[None], axis=-1)
    np.fill_diagonal(within, np.inf)
    np.testing.assert_allclose(
        nearest_neighbour_distances(references, references, exclude_self=True, chunk_size=4), within.min(1), rtol=1e-9
    )
    with pytest.raises(ValueError, match="quantile"):
        near_copy_threshold(references, quantile=1.5)


# ----------------------------------------------------------------------------- image input


def test_as_uint8_images_accepts_the_usual_layouts():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    for variant in (
        images,
        images[:, None],
        images[..., None],
        torch.from_numpy(images[:, None]),
        [Image.fromarray(im, mode="L") for im in images],
        images.astype(np.float32) / 255.0,
    ):
        np.testing.assert_array_equal(as_uint8_images(variant), images)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 3, 8, 8), np.uint8), "shape"),
        (np.zeros((4, 16, 16), np.uint8), "shape"),
        (np.full((2, 8, 8), -0.5, np.float32), r"\[0, 1\]"),
        (np.full((2, 8, 8), 300, np.int64), "0..255"),
        (np.zeros((0, 8, 8), np.uint8), "empty"),
        ("not images", "numpy array"),
    ],
)
def test_as_uint8_images_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        as_uint8_images(bad)


# ----------------------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def cache_dir(digits_classifier_cache):
    return digits_classifier_cache  # the session's classifier cache (conftest.py): trained once


@pytest.fixture(scope="module")
def classifier(cache_dir):
    return load_digits_classifier(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def evaluator(classifier):
    return SampleQualityEvaluator(classifier)


def test_classifier_is_accurate_on_held_out_digits(classifier):
    assert classifier.held_out_accuracy >= 0.97
    _, (held_out, labels) = dc.train_and_held_out_arrays(classifier.config)
    assert (classifier.predict(held_out) == labels).mean() == pytest.approx(classifier.held_out_accuracy)


@pytest.mark.slow
def test_classifier_training_is_deterministic_and_leaves_global_rng_alone(classifier):
    state = torch.get_rng_state()
    retrained = train_digits_classifier(classifier.config)
    assert torch.equal(torch.get_rng_state(), state)
    for name, tensor in classifier.model.state_dict().items():
        assert torch.equal(tensor, retrained.state_dict()[name]), name


def test_classifier_trained_on_a_subset_sees_only_those_rows():
    """train_subset (benchmarks/evaluator_reference_bias.py): every row in order is the whole split; a subset
    trains a different model, the same for the same subset."""
    config = DigitsClassifierConfig(epochs=1)
    (train_images, _), _ = dc.train_and_held_out_arrays(config)
    whole, every_row = train_digits_classifier(config), train_digits_classifier(config, train_subset=np.arange(len(train_images)))
    half, half_again = (train_digits_classifier(config, train_subset=np.arange(0, len(train_images), 2)) for _ in range(2))
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, every_row.state_dict()[name]), name
        assert torch.equal(half.state_dict()[name], half_again.state_dict()[name]), name
    assert any(not torch.equal(tensor, half.state_dict()[name]) for name, tensor in whole.state_dict().items())


def test_classifier_is_loaded_from_cache_and_a_broken_cache_is_replaced(classifier, cache_dir, monkeypatch):
    path = classifier.cache_path
    assert path is not None and path.parent == cache_dir and path.suffix == ".safetensors"
    assert list(cache_dir.glob("*.tmp")) == []  # atomic write left no temporary file

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(dc, "train_digits_classifier", must_not_train)
    again = load_digits_classifier(cache_dir=cache_dir)
    for name, tensor in classifier.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name

    # A different config must not reuse the file.
    other = DigitsClassifierConfig(epochs=classifier.config.epochs + 1)
    assert dc.classifier_cache_key(other) != dc.classifier_cache_key(classifier.config)

    # A truncated file is retrained (here: a 1-epoch stand-in to keep the test fast) and replaced.
    monkeypatch.undo()
    tiny = DigitsClassifierConfig(epochs=1)
    tiny_path = cache_dir / f"digits_classifier-{dc.classifier_cache_key(tiny)}.safetensors"
    tiny_path.write_bytes(b"not a safetensors file")
    rebuilt = load_digits_classifier(tiny, cache_dir=cache_dir)
    assert rebuilt.cache_path == tiny_path and tiny_path.stat().st_size > 1000


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="epochs"):
        DigitsClassifierConfig(epochs=0)
    with pytest.raises(ValueError, match="max_shift"):
        DigitsClassifierConfig(max_shift=4)


# ----------------------------------------------------------------------------- figures on real digits


def test_real_digits_figures(evaluator):
    held_out = evaluator.held_out_images
    figures = evaluator.reference_report()
    assert figures.num_images == len(held_out) == 360
    assert 9.0 < figures.classifier_score <= 10.0
    assert figures.class_coverage == 1.0
    assert figures.label_entropy_bits > 3.3
    assert figures.near_copy_fraction < 0.02
    # real vs real: 360 train digits against the held-out split, mean and spread over 10 draws
    assert figures.fd_num_images == 360 and figures.draws == 10
    assert 0 < figures.frechet_distance < 30 and figures.frechet_distance_std > 0
    assert figures.precision > 0.9 and figures.recall > 0.9 and figures.coverage > 0.9
    assert 0.8 < figures.density < 1.3
    assert figures.kid_subset_size == 180 and figures.kid_std > 0
    assert evaluator.frechet_distance(held_out) < 1e-6
    assert evaluator.reference_feature_figures(360) is evaluator.reference_feature_figures(360)  # cached per N


def test_precision_and_recall_tell_mode_collapse_from_noise(evaluator):
    # Only the 3s and 8s: still real-looking (precision high) but most of the data unreached (recall, coverage low).
    held_out = evaluator.held_out_images
    collapsed = evaluator.figures(held_out[np.isin(evaluator.classifier.predict(held_out), [3, 8])])
    reference = evaluator.reference_report(collapsed.num_images)
    assert collapsed.precision > 0.9 and collapsed.recall < 0.5 and collapsed.coverage < 0.5
    assert collapsed.kid > reference.kid + 10 * reference.kid_std
    # Noisy digits: off the real manifold (precision drops) and far in KID.
    noise = np.random.default_rng(7).integers(0, 256, size=held_out.shape, dtype=np.uint8)
    noisy = evaluator.figures(np.rint(0.7 * held_out + 0.3 * noise).astype(np.uint8))
    assert noisy.precision < reference.precision - 0.1 and noisy.density < 0.5


def test_training_images_are_near_copies_and_a_repeated_image_scores_one(evaluator):
    train = evaluator.train_images
    figures = evaluator.figures(train[:200])
    assert figures.near_copy_fraction == 1.0 and figures.median_train_distance == 0.0
    repeated = np.repeat(train[:1], 100, axis=0)
    assert evaluator.figures(repeated).classifier_score == pytest.approx(1.0, abs=1e-6)
    one_class = evaluator.figures(repeated)
    assert one_class.class_coverage == pytest.approx(0.1)
    assert one_class.label_entropy_bits == 0.0


def test_noise_is_far_from_real_digits(evaluator):
    noise = np.random.default_rng(7).integers(0, 256, size=(360, 8, 8), dtype=np.uint8)
    report = evaluator.evaluate(noise)
    assert report.samples.frechet_distance > 20 * report.reference.frechet_distance
    assert report.samples.classifier_score < report.reference.classifier_score - 3
    assert report.samples.near_copy_fraction == 0.0
    assert report.samples.precision < 0.5 * report.reference.precision
    assert report.samples.kid > report.reference.kid + 20 * report.reference.kid_std


def test_report_compares_at_equal_n_and_prints(evaluator):
    samples = evaluator.held_out_images[:100]
    report = evaluator.evaluate(samples)
    assert report.samples.fd_num_images == report.reference.fd_num_images == 100
    big = evaluator.evaluate(np.concatenate([evaluator.train_images, evaluator.held_out_images]))
    assert big.reference.fd_num_images == len(evaluator.train_images)  # capped at the train size
    table = report.format_table()
    for row in ("Frechet distance", "KID", "precision (k = 5", "recall", "density", "coverage (k = 5",
                "classifier score", "class coverage", "near-copy fraction", "99.", "100 train digits vs held-out"):
        assert row in table, row
    assert report.reference.draws == 10 and report.samples.draws == 1 and report.samples.precision_std == 0.0
    json.dumps(report.to_dict())
    with pytest.raises(ValueError, match="at least 2"):
        evaluator.evaluate(samples[:1])
    # fewer images than k + 1: the k-NN balls use k = N - 1, shown in the table
    tiny = evaluator.evaluate(samples[:3])
    assert tiny.nearest_neighbours == 2 and "precision (k = 2" in tiny.format_table()
    assert report.nearest_neighbours == 5


def test_module_level_api_matches_the_evaluator(evaluator, cache_dir):
    # evaluate_samples builds its own evaluator from the cached classifier: same figures exactly.
    samples = evaluator.held_out_images[:50]
    assert evaluate_samples(samples, cache_dir=cache_dir) == evaluator.evaluate(samples)
    assert reference_report(cache_dir=cache_dir) == evaluator.reference_report()


def test_reference_tables_command_prints_both_tables(cache_dir, capsys):
    from ddpm_from_scratch.cli.digits_reference import main

    main(["--cache_dir", str(cache_dir)])
    out = capsys.readouterr().out
    assert "| 360 | " in out and "| uniform noise | 360 |" in out and "held-out accuracy: 0.9" in out
    assert "| N | FD | KID | precision | recall | density | coverage |" in out
