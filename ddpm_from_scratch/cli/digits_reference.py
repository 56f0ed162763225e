"""Print the real-digit reference tables of the sample-quality figures.

    python -m ddpm_from_scratch.cli.digits_reference [--cache_dir DIR]

The Frechet distance of real digits against N, and every figure for real and deliberately damaged
image sets (:func:`ddpm_from_scratch.digits.quality.reference_tables`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from ..digits.classifier import load_digits_classifier
    from ..digits.quality import SampleQualityEvaluator, reference_tables

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache_dir", default=None, help="classifier cache folder (default: see ddpm_from_scratch.digits.classifier)"
    )
    args = parser.parse_args(argv)
    evaluator = SampleQualityEvaluator(load_digits_classifier(cache_dir=args.cache_dir, progress=True))
    print(reference_tables(evaluator))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
