"""The digits toolkit: the built-in 8x8 digits, their classifier, sample quality and model evaluation.

Modules, one job each:
    data        the digits as a ``datasets.DatasetDict``, the fixed train / held-out split, uint8 input
    classifier  the small CNN whose features and predictions the sample-quality figures use (cached)
    metrics     the formulas: Frechet distance, classifier score, coverage, near-copies
    quality     the figures of generated digits beside real ones (``evaluate_samples``)
    evaluation  NLL bound + sample quality of a saved pipeline (``ddpm-evaluate``)

Needs the ``train`` extra (scikit-learn, datasets). The names below are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "load_digits_dataset": "data",
    "held_out_digits": "data",
    "load_digits_classifier": "classifier",
    "evaluate_samples": "quality",
    "reference_report": "quality",
    "SampleQualityEvaluator": "quality",
    "SampleQualityReport": "quality",
    "evaluate_pipeline": "evaluation",
    "EvaluationReport": "evaluation",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .classifier import load_digits_classifier
    from .data import held_out_digits, load_digits_dataset
    from .evaluation import EvaluationReport, evaluate_pipeline
    from .quality import SampleQualityEvaluator, SampleQualityReport, evaluate_samples, reference_report


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
