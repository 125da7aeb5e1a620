import pytest
import torch

from trainables.metrics import accuracy, confusion_matrix, macro_f1, true_class_prob, true_class_score


def test_accuracy_and_macro_f1_by_hand():
    preds, labels = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])
    assert accuracy(preds, labels) == 0.75
    # class 0: F1 1; class 1: P 1/2 R 1 -> 2/3; class 2: P 1 R 1/2 -> 2/3
    assert macro_f1(preds, labels, 3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert confusion_matrix(preds, labels, 3).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_macro_f1_skips_absent_classes():
    preds, labels = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])
    # class 0: P 1/2 R 1 -> 2/3; class 1: P 1 R 1/2 -> 2/3; classes 2..4 absent
    assert macro_f1(preds, labels, 5) == pytest.approx(2 / 3)


def test_true_class_probability_mean_and_batch_sum():
    logits = torch.tensor([[0.0, 0.0], [0.0, 1.0]], requires_grad=True)  # p(y=0) = 1/2, 1/(1+e)
    labels = torch.tensor([0, 0])
    p2 = 1 / (1 + torch.e)
    assert true_class_prob(logits, labels) == pytest.approx((0.5 + p2) / 2)
    assert true_class_score(logits, labels) == pytest.approx(0.5 + p2)
