"""Bad input, generated: malformed dotted overrides, study YAMLs and search spaces, each through the real
command line in-process (`study.cli.main`). Every one must end the same way: exit status 2, exactly one line
on stderr starting `mmstudy: error:`, no traceback, and nothing created in the working directory (no study
folder, no mlflow.db). A seeded generator: the same cases on every run; the count is printed at the end of the run."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from study.cli import main

SEED = 22
TINY = {"epochs": 1, "dataset": {"name": "synthetic", "size": "tiny", "n_train": 32, "n_val": 16, "n_test": 16},
        "model": {"feature_dim": 8}, "optim": {"batch_size": 16}}
DEBUG = ["debug", "--device", "cpu", "--epochs", "1", "dataset.n_train=32", "dataset.n_val=16", "dataset.n_test=16"]
NON_FINITE = [".nan", ".inf", "-.inf", "1e999", "-1e999"]

# Trial fields with values each must refuse: (key, [bad values as written on a command line]).
TRIAL_FIELDS = {
    "optim.lr": ["0", "-0.1", "11", "abc", "[0.1]", "{a: 1}", "null", *NON_FINITE],
    "optim.momentum": ["1", "-0.5", "1.5", "fast", *NON_FINITE],
    "optim.weight_decay": ["-1", "x", "[]", *NON_FINITE],
    "optim.batch_size": ["0", "-3", "65537", "1.5", "big", ".inf"],
    "optim.lr_step": ["0", "-1", "x", ".nan"],
    "optim.lr_gamma": ["0", "2", "-1", *NON_FINITE],
    "optim.name": ["rmsprop", "5", "[sgd]"],
    "epochs": ["0", "-1", "100001", "two", "1.5", ".inf", ".nan", "[1]"],
    "seed": ["-1", "x", "0.5", ".inf", "[0, 1]"],
    "device": ["tpu", "gpu", "5", "[cpu]"],
    "loss_setting": ["unimodal", "1", "[multimodal]"],
    "selection": ["train", "0"],
    "precision": ["fp8", "half", "1"],
    "compile": ["maybe", "[true]", "2"],
    "num_workers": ["-1", "65", "many"],
    "modalities": ["audio", "5", "{a: 1}"],
    "model.encoder": ["resnet50", "0"],
    "model.fusion": ["attention", "[concat]", "1"],
    "model.unimodal_head": ["shared", "2"],
    "model.feature_dim": ["3", "4097", "-8", "1.5", ".nan"],
    "model.fusion_dim": ["3", "8193", "x"],
    "dataset.size": ["huge", "1"],
    "dataset.num_classes": ["1", "65", "x", ".inf"],
    "dataset.noise": ["0", "-1", *NON_FINITE],
    "dataset.audio_reliability": ["1.5", "-0.1", ".nan"],
    "dataset.audio_amplitude": ["-1", ".inf", ".nan"],
    "dataset.n_train": ["7", "-1", "x"],
    "dataset.template_size": ["1", "65", "x"],
}
REDREG_FIELDS = {
    "balancer.gamma": ["-1", "101", *NON_FINITE],
    "balancer.beta": ["-0.1", ".inf", ".nan"],
    "balancer.R": ["-101", "101", ".inf", "-.inf", ".nan"],
    "balancer.tau_min": ["0", "1", "0.9", ".nan"],
    "balancer.tau_max": ["0", "1", "0.1", ".inf"],
    "balancer.window": ["0", "x", "1.5"],
    "balancer.sigma": ["0", "-1", ".inf", ".nan"],
    "balancer.variant": ["both", "1"],
    "balancer.anchor_momentum": ["1", "-0.1", ".nan"],
}
UNKNOWN_KEYS = ["optim.lrr=0.1", "model.fuse=film", "foo=1", "dataset.nope=1", "optim.lr.x=1", "epochs.x=1",
                "model.encoder.depth=3", "balancer.gama=0.5", "trainer.epochs=2", "dataset.name.x=1",
                "optim.momentum.value=0.9", "seeds=[0, 1]"]
SYNTAX = ["noequals", "=1", "a..b=1", ".lr=1", "optim.=1", "optim..lr=1"]
BALANCER_NAMES = ["nope", "redreg2", ":Class", ".relative:Class", "pkg.mod:", "a b:C", "os:path", "json:JSONDecoder",
                  "mmstudy_no_such_module_xyz:Balancer", "trainables.balancers.redreg:NoSuchClass", "a:b:c", "5"]


def debug_cases(rng: random.Random):
    for key, values in TRIAL_FIELDS.items():
        for value in values:
            yield f"debug {key}={value}", [*DEBUG, f"{key}={value}"], {}
    for key, values in REDREG_FIELDS.items():
        for value in values:
            yield f"debug redreg {key}={value}", [*DEBUG, "--balancer", "redreg", f"{key}={value}"], {}
    for pair in UNKNOWN_KEYS + SYNTAX:
        yield f"debug {pair}", [*DEBUG, pair], {}
    for name in BALANCER_NAMES:
        yield f"debug --balancer {name}", [*DEBUG, "--balancer", name], {}
    for flag, value in [("--epochs", "0"), ("--seed", "-1"), ("--threads", "0"), ("--dataset", "cifar"),
                        ("--device", "tpu"), ("--epochs", "x"), ("--out", "afile/metrics")]:
        files = {"afile": ""} if flag == "--out" else {}
        yield f"debug {flag} {value}", [*DEBUG, flag, value], files
    for i in range(20):  # a valid override next to one bad one, in a random order
        key = rng.choice(sorted(TRIAL_FIELDS))
        bad = f"{key}={rng.choice(TRIAL_FIELDS[key])}"
        pairs = [bad, rng.choice(["optim.lr=0.01", "model.fusion=film", "seed=3", "optim.momentum=0.5"])]
        rng.shuffle(pairs)
        yield f"debug mixed {pairs}", [*DEBUG, *pairs], {}


def study(**extra) -> dict:
    raw = {"name": "fuzz", "trial": TINY, "search_space": "redreg", "num_samples": 2,
           "baseline": {"enabled": False}, "confirm": {"top_k": 0}}
    raw.update(extra)
    return {k: v for k, v in raw.items() if v is not DROP}


DROP = object()
STUDY_FIELDS = {
    "name": ["", "a b", "../up", "x" * 101, 5, [1], "-lead", "a/b"],
    "mode": ["tune", 1, ["search"]],
    "searcher": ["bayes", 1, "grid "],
    "scheduler": ["hyperband", True],
    "num_samples": [0, -1, "many", 1.5, float("inf"), float("nan"), 10**7],
    "max_concurrent": [0, -2, "x"],
    "seeds": [[], [0, 0], [-1], "0", [1.5], [[0]], [0, "a"], 5, {"a": 0}],
    "sampler_seed": [-1, "x", 0.5],
    "max_failures": [-1, "x"],
    "checkpoint_every": [0, "x"],
    "log_checkpoint": ["all", 1],
    "metric": ["val_acc", {"name": "accuracy"}, {"name": "val_acc", "mode": "up"}, [], [{"name": "val_acc"}] * 2,
               {"name": "val_acc", "extra": 1}, [{"name": "val_acc"}, "x"], {"name": 5}, 7, [[1]]],
    "loss_settings": [[], ["unimodal"], ["multimodal", "multimodal"], "multimodal", 5, [None]],
    "resources": [{"cpu": 0}, {"cpu": -1}, {"gpu": 1.5}, {"gpu": -1}, {"cpu": float("inf")}, {"tpu": 1}, "2"],
    "asha": [{"grace_period": 0}, {"reduction_factor": 1}, {"reduction_factor": float("inf")},
             {"reduction_factor": float("nan")}, {"rungs": 3}, 5],
    "baseline": [{"seeds": [0, 1]}, {"seeds": [0, 0, 1]}, {"enabled": "sometimes"}, {"extra": 1}, [1]],
    "confirm": [{"top_k": -1}, {"top_k": 101}, {"seeds": []}, {"seeds": [0], "top_k": 1}, {"seeds": [-1], "top_k": 1},
                {"top_k": "x"}],
    "equivalence_margin": [0, -1, 101, float("inf"), float("nan"), "x"],
    "storage_path": [5, [1], {"a": 1}],
    "tracking_uri": [5, ["x"], "mysql://user:pw@db.example/mlflow", "http://h.example/?api_key=abc",
                     "file://user@host/path"],
    "experiment_name": [5, {"a": 1}],
    "ray_address": [5, ["x"]],
    "trial": [5, "x", [1], {"epochs": 0}, {"optim": {"lr": float("nan")}}, {"balancer": 5},
              {"dataset": {"name": "cifar"}}, {"loss_setting": "unimodal"}, {"loss_setting": 5},
              {"model": {"fusion": "attention"}}, {"balancer": {"name": ":X"}}, {"epochs": float("inf")}],
    "variants": [{"a": 5}, 5, ["a"]],
    "methods": [["redreg"], 5],
    "search_space": ["nope", 5, ["redreg"], "missing.yaml", "../../etc/passwd", "a\0b.yaml", "x" * 300 + ".yaml"],
}


def study_cases(rng: random.Random):
    for key, values in STUDY_FIELDS.items():
        for value in values:
            yield f"study {key}={value!r:.60}", study(**{key: value})
    for value in [{"params": ["nope"]}, {"params": "gamma"}, {"extra": 1}, {"params": ["balancer.nope"]}]:
        yield f"sensitivity {value}", study(mode="sensitivity", sensitivity=value)
    yield "study without a name", study(name=DROP)
    yield "study unknown field", study(nmae="x")
    yield "study unknown field 2", study(trials=3)
    yield "study int key", {**study(), 1: 2}
    yield "study loss_settings not a list with trial.loss_setting", study(
        loss_settings=5, trial=dict(TINY, loss_setting="multimodal"))
    yield "compare without variants", study(mode="compare", search_space=None)
    yield "compare variant with a bad field", study(mode="compare", search_space=None,
                                                     variants={"a": {"optim": {"lr": -1}}})
    yield "compare variant with an unknown balancer", study(mode="compare", search_space=None,
                                                             variants={"a": {"balancer": {"name": "nope"}}})
    yield "methods outside benchmark", study(methods=["redreg"])
    yield "benchmark with a space", study(mode="benchmark", methods=["redreg"])
    yield "benchmark unknown method", study(mode="benchmark", search_space=None, methods=["nope"], confirm={"top_k": 1})
    yield "benchmark method with a bad fixed field", study(mode="benchmark", search_space=None,
                                                            methods=[{"redreg": {"gamma": -1}}], confirm={"top_k": 1})
    yield "benchmark method fixing a plug-in name", study(mode="benchmark", search_space=None,
                                                           methods=[{"redreg": {"name": ":X"}}], confirm={"top_k": 1})
    yield "benchmark method twice", study(mode="benchmark", search_space=None, methods=["none", "none"],
                                          confirm={"top_k": 1})
    yield "benchmark with grid", study(mode="benchmark", search_space=None, methods=["none"], searcher="grid",
                                       confirm={"top_k": 1})
    yield "cmaes with two metrics", study(searcher="cmaes",
                                          metric=[{"name": "val_acc"}, {"name": "val_gap", "mode": "min"}])
    yield "confirm seeds seen by the search", study(confirm={"top_k": 1, "seeds": [0]})
    yield "nothing to search", study(search_space=None)
    for i in range(10):  # two bad fields at once: the first found is the one line
        a, b = rng.sample(sorted(STUDY_FIELDS), 2)
        yield f"study two bad fields {a}, {b} #{i}", study(**{a: rng.choice(STUDY_FIELDS[a]),
                                                           b: rng.choice(STUDY_FIELDS[b])})


def space(params: dict, **extra) -> dict:
    return {"params": params, **extra}


SPACES = {
    "inverted range": space({"gamma": {"low": 1.0, "high": 0.5}}),
    "equal bounds": space({"gamma": {"low": 0.5, "high": 0.5}}),
    "high inf": space({"gamma": {"low": 0.1, "high": float("inf")}}),
    "low -inf": space({"gamma": {"low": float("-inf"), "high": 1.0}}),
    "low nan": space({"gamma": {"low": float("nan"), "high": 1.0}}),
    "high nan": space({"gamma": {"low": 0.1, "high": float("nan")}}),
    "weight decay to inf": space({"optim.weight_decay": {"low": 0.0, "high": float("inf")}}),
    "int batch to inf": space({"optim.batch_size": {"type": "int", "low": 8, "high": float("inf")}}),
    "int epochs to inf, log": space({"epochs": {"type": "int", "low": 1, "high": float("inf"), "log": True}}),
    "lr log scale from 0": space({"optim.lr": {"low": 0.0, "high": 0.1, "log": True}}),
    "lr log scale from -1": space({"optim.lr": {"low": -1.0, "high": 0.1, "log": True}}),
    "log with step": space({"optim.lr": {"low": 0.001, "high": 0.1, "log": True, "step": 0.01}}),
    "step 0": space({"gamma": {"low": 0.0, "high": 1.0, "step": 0}}),
    "step negative": space({"gamma": {"low": 0.0, "high": 1.0, "step": -0.1}}),
    "step inf": space({"gamma": {"low": 0.0, "high": 1.0, "step": float("inf")}}),
    "step nan": space({"gamma": {"low": 0.0, "high": 1.0, "step": float("nan")}}),
    "int without an integer": space({"window": {"type": "int", "low": 1.2, "high": 1.8}}),
    "int fractional step": space({"window": {"type": "int", "low": 1, "high": 10, "step": 0.5}}),
    "int log step 2": space({"window": {"type": "int", "low": 1, "high": 10, "log": True, "step": 2}}),
    "float without high": space({"gamma": {"low": 0.1}}),
    "float without bounds": space({"gamma": {"type": "float"}}),
    "categorical without choices": space({"anchor": {"type": "categorical"}}),
    "categorical empty": space({"anchor": {"type": "categorical", "choices": []}}),
    "categorical nested choices": space({"anchor": {"type": "categorical", "choices": [["ema"], ["epoch_copy"]]}}),
    "categorical mapping choice": space({"anchor": {"type": "categorical", "choices": [{"a": 1}]}}),
    "categorical bad choice": space({"anchor": {"type": "categorical", "choices": ["ema", "sometimes"]}}),
    "categorical choices a string": space({"anchor": {"type": "categorical", "choices": "ema"}}),
    "bad type": space({"gamma": {"type": "gaussian", "low": 0, "high": 1}}),
    "unknown spec field": space({"gamma": {"low": 0, "high": 1, "mean": 0.5}}),
    "spec a number": space({"gamma": 5}),
    "params a list": {"params": [{"gamma": {"low": 0, "high": 1}}]},
    "params a string": {"params": "gamma"},
    "space a list": [1, 2],
    "unknown space field": {"params": {"gamma": {"low": 0.1, "high": 1.0}}, "parms": {}},
    "unknown parameter": space({"gama": {"low": 0.1, "high": 1.0}}),
    "unknown dotted parameter": space({"optim.lrr": {"low": 0.1, "high": 1.0}}),
    "int parameter key": space({1: {"low": 0.1, "high": 1.0}}),
    "bounds outside the field": space({"gamma": {"low": -1.0, "high": 1.0}}),
    "fixed without value": space({"gamma": {"type": "fixed"}, "beta": {"low": 0.1, "high": 1.0}}),
    "fixed out of range": space({"gamma": {"type": "fixed", "value": -5}, "beta": {"low": 0.1, "high": 1.0}}),
    "grid out of range": space({"gamma": {"low": 0.1, "high": 1.0, "grid": [0.5, -3]}}),
    "grid nan": space({"gamma": {"low": 0.1, "high": 1.0, "grid": [float("nan")]}}),
    "grid inf": space({"gamma": {"low": 0.1, "high": 1.0, "grid": [float("inf")]}}),
    "choice inf": space({"gamma": {"type": "categorical", "choices": [0.5, float("inf")]}}),
    "constraint unsatisfiable": space({"tau_min": {"low": 0.6, "high": 0.9}, "tau_max": {"low": 0.2, "high": 0.5}},
                                      constraints=["tau_min < tau_max"]),
    "constraint unsatisfiable by the gap": space({"tau_min": {"low": 0.4, "high": 0.45},
                                                  "tau_max": {"low": 0.3, "high": 0.4}},
                                                 constraints=["tau_min < tau_max"], constraint_gap=0.01),
    "constraint malformed": space({"gamma": {"low": 0.1, "high": 1.0}}, constraints=["gamma <= beta"]),
    "constraint a number": space({"gamma": {"low": 0.1, "high": 1.0}}, constraints=[5]),
    "constraint not a list": space({"gamma": {"low": 0.1, "high": 1.0}}, constraints="gamma < beta"),
    "constraint on a string": space({"gamma": {"low": 0.1, "high": 1.0}}, constraints=["model.fusion < optim.lr"]),
    "constraint on a categorical": space({"anchor": {"type": "categorical", "choices": ["ema", "epoch_copy"]},
                                          "gamma": {"low": 0.1, "high": 1.0}}, constraints=["anchor < gamma"]),
    "constraint on an unknown field": space({"gamma": {"low": 0.1, "high": 1.0}}, constraints=["nope < gamma"]),
    "constraint under a number": space({"gamma": {"low": 0.1, "high": 1.0}}, constraints=["optim.lr.x < gamma"]),
    "constraint gap inf": space({"tau_min": {"low": 0.1, "high": 0.3}}, constraints=["tau_min < tau_max"],
                                constraint_gap=float("inf")),
    "constraint gap negative": space({"gamma": {"low": 0.1, "high": 1.0}}, constraint_gap=-1),
    "constraint gap nan": space({"gamma": {"low": 0.1, "high": 1.0}}, constraint_gap=float("nan")),
    "when on an unknown parameter": space({"gamma": {"low": 0.1, "high": 1.0, "when": {"nope": True}}}),
    "when on itself": space({"gamma": {"low": 0.1, "high": 1.0, "when": {"gamma": 0.5}}}),
    "when on a value never taken": space({"anchor": {"type": "categorical", "choices": ["ema", "epoch_copy"]},
                                          "gamma": {"low": 0.1, "high": 1.0, "when": {"anchor": "never"}}}),
    "when on a later parameter": space({"gamma": {"low": 0.1, "high": 1.0, "when": {"anchor": "ema"}},
                                        "anchor": {"type": "categorical", "choices": ["ema", "epoch_copy"]}}),
    "when not a mapping": space({"gamma": {"low": 0.1, "high": 1.0, "when": ["anchor"]}}),
    "space for another balancer": {"balancer": "ogm", "params": {"alpha": {"low": 0.1, "high": 1.0}}},
    "plug-in balancer in a choice": space({"name": {"type": "categorical", "choices": ["redreg", ":X"]}}),
    "plug-in balancer fixed": space({"name": {"type": "fixed", "value": ".rel:X"}, "gamma": {"low": 0.1, "high": 1.0}}),
}


def space_cases(rng: random.Random):
    base = {"trial": dict(TINY, balancer={"name": "redreg"})}
    for label, spec in SPACES.items():
        yield f"space inline: {label}", study(search_space=spec, **base), None
        yield f"space file: {label}", study(search_space="space.yaml", **base), spec
    for label in ["sensitivity param without a grid", "grid searcher without grids"]:
        spec = space({"gamma": {"low": 0.1, "high": 1.0}})
        extra = {"mode": "sensitivity", "sensitivity": {"params": ["gamma"]}} if "sensitivity" in label else \
            {"searcher": "grid"}
        yield label, study(search_space=spec, **base, **extra), None
    for i in range(10):  # a good parameter next to a bad one, in a random order
        good = {"beta": {"low": 0.1, "high": 1.0}}
        label = rng.choice([k for k, v in SPACES.items() if isinstance(v, dict) and isinstance(v.get("params"), dict)
                            and "constraint" not in k and "when" not in k and "balancer" not in k])
        params = list({**SPACES[label]["params"], **good}.items())
        rng.shuffle(params)
        yield f"space mixed {label} #{i}", study(search_space=space(dict(params)), **base), None


BROKEN_YAML = ["name: [unclosed", "\tname: x", "name: x\n  trial: {", "a: b: c", "- 1\n- 2", "just text", "42",
               "name: x\nname: y\n: z", "{{{", "name: !!python/object/apply:os.system ['true']", "null\n...\n---\nx"]


def cases():
    """(label, argv, files to write first) for every case, in a fixed order."""
    rng = random.Random(SEED)
    out = [(label, argv, files) for label, argv, files in debug_cases(rng)]
    for label, raw in study_cases(rng):
        out.append((label, ["run", "study.yaml"], {"study.yaml": raw}))
    for label, raw, space_file in space_cases(rng):
        files = {"study.yaml": raw, **({"space.yaml": space_file} if space_file is not None else {})}
        out.append((label, ["run", "study.yaml"], files))
    for i, text in enumerate(BROKEN_YAML):
        out.append((f"broken YAML #{i}", ["run", "study.yaml"], {"study.yaml": text}))
    out.append(("YAML not UTF-8", ["run", "study.yaml"], {"study.yaml": b"name: \xff\xfe\x00"}))
    out.append(("broken space YAML", ["run", "study.yaml"],
                {"study.yaml": study(search_space="space.yaml"), "space.yaml": "params: {gamma: [1, 2"}))
    out.append(("study YAML is a folder", ["run", "study.yaml"], {"study.yaml/x": ""}))
    for override in ["num_samples=0", "trial.epochs=.inf", "trial.optim.lr=.nan", "seeds=[0,0]", "mode=tune",
                     "metric.name=acc", "search_space.params.balancer.gamma.high=.inf", "nope=1", "trial.nope=1",
                     "confirm.top_k=-1", "asha.reduction_factor=.inf", "equivalence_margin=.nan"]:
        out.append((f"run override {override}", ["run", "study.yaml", override], {"study.yaml": study()}))
    return out


def write(folder: Path, files: dict) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:  # YAML spells NaN and the infinities .nan, .inf
            path.write_text(yaml.safe_dump(content, sort_keys=False, allow_unicode=True))


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def guarded(monkeypatch):
    """Valid input must not slip into the generator: training or a study starting fails the test at once."""
    import study.debug
    import study.runner

    def reached(*args, **kwargs):
        raise AssertionError("a generated case was valid: it reached training or a study's start")

    monkeypatch.setattr(study.debug, "train_and_print", reached)
    monkeypatch.setattr(study.runner, "run_study", reached)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MMSTUDY_STORAGE", raising=False)


def test_every_malformed_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, monkeypatch, capsys, guarded, suite_summary):
    all_cases = cases()
    failures = []
    for i, (label, argv, files) in enumerate(all_cases):
        folder = tmp_path / f"case{i:03d}"
        folder.mkdir()
        write(folder, files)
        monkeypatch.chdir(folder)
        before = files_under(folder)
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            status = exit_.code
        except Exception as err:  # noqa: BLE001 -- a crash is what this test looks for
            status = f"crash: {type(err).__name__}: {str(err)[:300]}"
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        problems = []
        if status != 2:
            problems.append(f"status {status}")
        if len(lines) != 1 or not lines[0].startswith("mmstudy: error: "):
            problems.append(f"stderr {captured.err.strip()[-600:]!r}")
        if "Traceback" in captured.err + captured.out:
            problems.append("traceback")
        created = files_under(folder) - before
        if created:
            problems.append(f"created {sorted(created)}")
        if problems:
            failures.append(f"{label}: {'; '.join(problems)}")
    suite_summary(f"bad-input fuzz: {len(all_cases)} malformed inputs, {len(all_cases) - len(failures)} refused "
                  f"cleanly (exit 2, one line, nothing created)")
    assert not failures, f"{len(failures)} of {len(all_cases)} cases:\n" + "\n".join(failures)
    assert len(all_cases) >= 300
