import os

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def small_overrides(**extra):
    """A few-second trial on the tiny synthetic benchmark."""
    base = {"epochs": 2, "dataset": {"name": "synthetic", "size": "tiny", "n_train": 96, "n_val": 32, "n_test": 32},
            "optim": {"batch_size": 32}}
    for key, value in extra.items():
        base[key] = value
    return base


@pytest.fixture
def tiny_raw():
    return small_overrides()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every in-process integration test (token auth stays on, Ray's default)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
