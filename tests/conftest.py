import os

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# One torch thread in the test process: the models are tiny, so a second thread costs more than it brings, and
# on a 2-core machine the other core serves the Ray workers and subprocesses the integration tests start.
torch.set_num_threads(1)


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

    # workers import the fault-injection balancers in tests/, as a user's PYTHONPATH=. would let them
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    pythonpath = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH", "")) if p)
    # One logical GPU (there is no CUDA here): Ray schedules by it and sets CUDA_VISIBLE_DEVICES, so tests
    # can check that trials are placed by their GPU fractions; torch still sees no GPU and trains on the CPU.
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    yield
    ray.shutdown()


_SUMMARY_LINES: list[str] = []


@pytest.fixture
def suite_summary():
    """A line for the end of the test run (pytest's terminal summary, shown with -q too): counts a reader of
    CI's log should see, such as how many malformed inputs the fuzz test tried."""
    return _SUMMARY_LINES.append


def pytest_terminal_summary(terminalreporter):
    for line in _SUMMARY_LINES:
        terminalreporter.write_line(line)
