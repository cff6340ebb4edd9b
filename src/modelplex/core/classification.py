"""Classification post-processing: scores in, top-k labelled classes out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelplex.core.model_config import ClassificationConfig
from modelplex.core.tensors import Array
from modelplex.core.types import ClassScore
from modelplex.errors import ModelLoadError


def read_labels(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ModelLoadError(f"labels file '{path.name}' not found") from None
    labels = [line.strip() for line in lines]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise ModelLoadError(f"labels file '{path.name}' is empty")
    return labels


class Classifier:
    def __init__(
        self, config: ClassificationConfig, labels: list[str] | None, classes: int
    ) -> None:
        if labels is not None and classes > 0 and len(labels) != classes:
            raise ModelLoadError(f"{len(labels)} labels for an output of {classes} classes")
        self.output = config.output
        self.labels = labels
        self._softmax = config.apply_softmax

    def top_k(self, scores: Array, k: int) -> list[list[ClassScore]]:
        """The k best classes of each row of `scores` (rows x classes), best first."""
        if scores.ndim != 2:
            scores = scores.reshape(len(scores), -1)
        classes = scores.shape[1]
        k = min(max(k, 1), classes)  # k >= 1 is the validator's rule; 1 keeps this total
        if self._softmax:
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores = shifted / shifted.sum(axis=1, keepdims=True)
        if k == 1:
            idx = scores.argmax(axis=1)[:, None]
        elif k < classes:
            idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            idx = np.tile(np.arange(classes), (len(scores), 1))
        result: list[list[ClassScore]] = []
        for row, candidates in enumerate(idx):
            ordered = candidates[np.argsort(-scores[row, candidates], kind="stable")]
            result.append(
                [
                    ClassScore(
                        class_id=int(c),
                        label=self.labels[c] if self.labels else str(int(c)),
                        confidence=float(scores[row, c]),
                    )
                    for c in ordered
                ]
            )
        return result
