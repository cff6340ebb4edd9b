from __future__ import annotations

import numpy as np
import pytest

from modelplex.core.classification import Classifier
from modelplex.core.model_config import ClassificationConfig
from modelplex.errors import ModelLoadError


def test_top_k_is_sorted_and_labelled() -> None:
    classifier = Classifier(ClassificationConfig(output="p"), ["a", "b", "c", "d"], 4)
    scores = np.array([[0.1, 0.5, 0.3, 0.1], [0.7, 0.1, 0.1, 0.1]], dtype=np.float32)
    top = classifier.top_k(scores, 2)
    assert [(s.label, s.class_id) for s in top[0]] == [("b", 1), ("c", 2)]
    assert [s.class_id for s in top[1]] == [0, 1]
    assert top[0][0].confidence == pytest.approx(0.5)


def test_k_is_capped_at_the_number_of_classes() -> None:
    classifier = Classifier(ClassificationConfig(output="p"), None, 3)
    top = classifier.top_k(np.array([[0.2, 0.3, 0.5]]), 10)
    assert [s.class_id for s in top[0]] == [2, 1, 0]
    assert top[0][0].label == "2"


def test_softmax_for_logits() -> None:
    classifier = Classifier(ClassificationConfig(output="p", apply_softmax=True), None, 2)
    top = classifier.top_k(np.array([[0.0, np.log(3.0)]]), 2)
    assert [s.confidence for s in top[0]] == pytest.approx([0.75, 0.25])


def test_label_count_must_match() -> None:
    with pytest.raises(ModelLoadError, match="2 labels for an output of 3"):
        Classifier(ClassificationConfig(output="p"), ["a", "b"], 3)
