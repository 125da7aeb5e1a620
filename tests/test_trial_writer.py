"""What the trial writer puts on a run that MLflow limits: the per-seed tag stays under MLflow's tag length."""
import json

from study.tracking import PER_SEED_LIMIT, per_seed_values


def test_per_seed_values_are_one_json_tag_with_the_headline_accuracies_kept_first():
    few = {"best_test_acc/seed_0": 0.5, "best_test_acc/seed_1": 0.7, "best_test_shapley_audio/seed_0": 0.2,
           "val_acc": 0.6, "best_test_acc": 0.6}
    assert json.loads(per_seed_values(few)) == {"best_test_acc/seed_0": 0.5, "best_test_acc/seed_1": 0.7,
                                                "best_test_shapley_audio/seed_0": 0.2}
    many = {f"best_{k}/seed_{s}": 0.123456789 for s in range(60)
            for k in ("test_acc", "val_acc", "test_acc_audio", "test_shapley_audio", "val_f1", "epoch")}
    kept = json.loads(per_seed_values(many))
    assert len(per_seed_values(many)) <= PER_SEED_LIMIT
    assert {k.split("/")[0] for k in kept} == {"best_test_acc", "best_val_acc"} and len(kept) == 120
