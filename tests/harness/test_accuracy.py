"""Accuracy mode: sweep spec and cells, the training loop, divergence, the CLI and the report section."""

import pytest

import bench
from bench.cli import build_parser, main
from bench.errors import BenchError
from bench.spec.cells import cell_from_json, expand
from bench.spec.config import ModelEntry, TrainSettings, default_spec, load_spec, parse_spec, preset_spec
from bench.tasks import make_task
from bench.train import lr_at
from bench.train.cell import run_accuracy_cell
from tests.helpers import accuracy_cell, stored


def accuracy_spec(**accuracy):
    return parse_spec(
        {
            "models": ["transformer"],  # listed: no sliding-window control added (see test_hybrid_context_*)
            "modes": ["train", "accuracy"],
            "seq_lens": [32],
            "d_model": 16,
            "n_layers": 1,
            "tasks": [
                "mqar",
                {"name": "mqar", "label": "mqar-small", "args": {"vocab_size": 32, "num_kv_pairs": 2}},
                {"name": "niah-pk", "train_len": 128, "args": {"digits": 3}},
            ],
            "accuracy": {"train_len": 64, "eval_factors": [1, 2], **accuracy},
        },
        "test",
    )


def test_expand_makes_one_accuracy_cell_per_model_and_task():
    spec = accuracy_spec()
    cells = expand(spec, [ModelEntry(name="transformer")], "cpu")
    timing = [c for c in cells if c.mode == "train"]
    acc = [c for c in cells if c.mode == "accuracy"]
    assert len(timing) == 1 and len(acc) == 3
    assert [c.task_label for c in acc] == ["mqar", "mqar-small", "niah-pk"]
    assert [c.train_len for c in acc] == [64, 64, 128]  # the training length, not the timing seq_lens
    assert [c.eval_lens for c in acc] == [[64, 128], [64, 128], [128, 256]]
    assert [c.vocab_size for c in acc] == [8192, 32, acc[2].vocab_size]  # the task's own vocabulary
    assert acc[0].batch_size == 64 and acc[0].train == TrainSettings()
    assert len({c.key for c in cells}) == 4 and len({c.group for c in acc}) == 3
    assert acc[1].key.startswith("transformer/accuracy/mqar-small/T64/B64/float32/cpu/")
    assert cell_from_json(acc[2].model_dump_json()) == acc[2]  # what the worker receives


def test_training_settings_are_part_of_the_accuracy_key_only():
    base = expand(accuracy_spec(), [ModelEntry(name="transformer")], "cpu")
    other = expand(accuracy_spec(lr=1e-4), [ModelEntry(name="transformer")], "cpu")
    assert base[0].key == other[0].key  # the timing cell
    assert all(a.key != b.key for a, b in zip(base[1:], other[1:], strict=True))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"modes": ["accuracy"]}, "no tasks are given"),
        ({"tasks": ["mqar", "mqar"]}, "task label(s) used twice: mqar"),
        ({"tasks": [{"name": "mqar", "argz": {}}]}, "unknown field 'tasks.0.argz'"),
        ({"accuracy": {"stepz": 3}}, "unknown field 'accuracy.stepz'"),
        ({"accuracy": {"threshold": 1.5}}, "field 'accuracy.threshold'"),
        ({"accuracy": {"eval_factors": [2, 2]}}, "duplicates"),
    ],
)
def test_bad_accuracy_fields_are_named(data, message):
    with pytest.raises(BenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(data, "x.toml")


@pytest.mark.parametrize(
    "tasks, message",
    [
        (["nope"], "unknown task 'nope'; known tasks:"),
        ([{"name": "mqar", "args": {"pairs": 3}}], "task 'mqar': unknown argument 'pairs'"),
        ([{"name": "mqar", "args": {"num_kv_pairs": 32}}], "num_kv_pairs 32 needs seq_len >= 128 .*; got 64"),
    ],
)
def test_bad_tasks_are_named_before_anything_runs(tasks, message):
    spec = parse_spec({"modes": ["accuracy"], "tasks": tasks}, "x.toml")
    with pytest.raises(BenchError, match=message):
        expand(spec, [ModelEntry(name="transformer")], "cpu")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--modes", "accuracy", "--tasks", "mqar,bogus"], "unknown task 'bogus'"),
        (
            ["--preset", "huge"],
            "unknown preset 'huge'; known presets: cpu-accuracy, cpu-length, cpu-lm, cpu-recall, cpu-state, "
            "paper",
        ),
        (["x.toml", "--preset", "paper"], "give a sweep file or --preset, not both"),
        (["--modes", "train", "--tasks", "mqar"], "--tasks needs 'accuracy' among the modes"),
    ],
)
def test_cli_task_and_preset_errors_are_one_line(tmp_path, args, message, capsys):
    code = main(["run", *args, "--models", "transformer", "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_presets_and_defaults():
    from bench.commands.run import spec_from_args

    paper = preset_spec("paper")
    assert paper.modes == ["accuracy"] and paper.accuracy.eval_factors == [1, 2, 4, 8]
    assert {t.name for t in paper.tasks} == {
        "mqar",
        "niah-pk",
        "niah-n",
        "niah-uuid",
        "parity",
        "modular",
        "permutation",
        "lm",
    }
    state = {
        t.display: (t.train_len, t.args)
        for t in paper.tasks
        if t.name in ("parity", "modular", "permutation")
    }
    assert state == {"parity": (64, {}), "z5": (64, {"m": 5}), "a5": (64, {"group": "A5"})}
    (lm,) = [t for t in paper.tasks if t.name == "lm"]
    assert (lm.train_len, lm.steps, lm.args) == (1024, 1500, {"corpus": "python-stdlib"})
    lm_cells = [c for c in expand(paper, [ModelEntry(name="transformer")], "cpu") if c.task == "lm"]
    assert {(c.train.steps, c.train.threshold) for c in lm_cells} == {(1500, None)}  # the task's own budget
    assert {
        c.train.steps for c in expand(paper, [ModelEntry(name="transformer")], "cpu") if c.task == "mqar"
    } == {paper.accuracy.steps}
    args = build_parser().parse_args(["run", "--preset", "paper", "--tasks", "mqar-128,niah-pk"])
    spec = spec_from_args(args)
    assert [t.display for t in spec.tasks] == ["mqar-128", "niah-pk"]
    assert spec.tasks[0].train_len == 128 and spec.tasks[0].args["num_kv_pairs"] == 8  # kept from the preset

    cpu = default_spec("cpu")
    assert "accuracy" in cpu.modes and [t.name for t in cpu.tasks] == ["mqar", "niah-pk"]
    # Was a 7-second race (max_seconds <= 15): now every registered model trains the same few steps, no
    # early stop, within the 5-minute default run, and the report calls it a smoke test.
    assert cpu.accuracy.threshold is None and cpu.accuracy.steps <= 100 and cpu.accuracy.smoke_test
    assert cpu.accuracy.max_seconds >= 60  # a cap that load does not bind, not the budget

    # Every CPU accuracy preset ranks: 3 rates grown beyond an edge, 3 seeds, the models matched in size, a
    # calibration model, a cap that is a safety net below the cell timeout, and one thread per cell.
    registered = set(bench.list_models())
    for name in ("cpu-accuracy", "cpu-recall", "cpu-state", "cpu-lm", "cpu-length"):
        spec = preset_spec(name)
        acc = spec.accuracy
        assert len(acc.lrs) == 3 and acc.lr_extend >= 1 and len(acc.seeds) == 3, name
        assert acc.param_budget is not None and acc.calibration is not None, name
        assert acc.max_seconds < spec.timeout_s and acc.threads == 1, name
        assert acc.threshold is None or acc.stop_rule == "converged", name  # the stop never picks the rate
        cells = expand(spec, spec.models, "cpu")
        assert len({c.key for c in cells}) == len(cells), name
        # the same budget for every model of a task: the comparison is at equal steps
        by_task = {}
        for c in cells:
            by_task.setdefault(c.task_label or c.task, set()).add(c.train.steps)
        assert all(len(steps) == 1 for steps in by_task.values()), name
        assert {c.model for c in cells} <= registered, name  # variants are labels of registered models

    # cpu-accuracy: the hybrids, their windowed-attention control and the baselines on passkey retrieval.
    niah = preset_spec("cpu-accuracy")
    labels = {c.label for c in expand(niah, niah.models, "cpu")}
    assert {"titans-mal", "titans-mag", "titans-mac", "transformer-swa"} <= labels
    assert [t.name for t in niah.tasks] == ["niah-pk"] and niah.accuracy.hybrid_context == 0.25
    # cpu-recall: MQAR with 2 and 4 pairs, a transformer of 2 heads as the calibration (one head plateaus).
    recall = preset_spec("cpu-recall")
    assert [t.args["num_kv_pairs"] for t in recall.tasks] == [2, 4] and {t.name for t in recall.tasks} == {
        "mqar"
    }
    assert recall.accuracy.calibration.model == "transformer" and recall.models[0].args == {"n_heads": 2}
    # cpu-state: parity and Z5 at 8x the training length, Titans' chunk sizes, the negative eigenvalues.
    state = preset_spec("cpu-state")
    cells = expand(state, state.models, "cpu")
    assert [(t.name, t.args) for t in state.tasks] == [("parity", {}), ("modular", {"m": 5})]
    assert state.accuracy.eval_factors == [1, 2, 4, 8] and state.accuracy.threshold == 0.99
    assert {c.model_args.get("allow_neg_eigval") for c in cells if c.label.endswith("-negeig")} == {True}
    assert {c.model_args.get("chunk_size") for c in cells if c.label.startswith("titans-lmm-chunk")} == {4, 1}
    steps = {(c.task_label or c.task, c.train.steps) for c in cells}
    assert steps == {("parity", 300), ("modular", 3000)} or steps == {("parity", 300), ("z5", 3000)}
    # cpu-lm and cpu-length: bytes of the standard library, no threshold, scored to 8x the training length.
    for name in ("cpu-lm", "cpu-length"):
        lm = preset_spec(name)
        cells = expand(lm, lm.models, "cpu")
        assert [t.name for t in lm.tasks] == ["lm"] and lm.tasks[0].args["corpus"] == "python-stdlib"
        assert {(c.train.threshold, c.vocab_size) for c in cells} == {(None, 256)}
        assert {c.task_args["fingerprint"] for c in cells} == {make_task("lm").pinned_args()["fingerprint"]}
        assert lm.accuracy.eval_factors == [1, 2, 4, 8]
    # cpu-length: each recurrent model with and without its state carried across training batches.
    length = preset_spec("cpu-length")
    passing = {m.label: m.state_passing for m in length.models if m.label}
    assert passing["titans-lmm-sp"] and passing["gated-deltanet-sp"] and passing["mamba2-sp"]
    assert not passing["titans-lmm-noforget"]


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    s = TrainSettings(lr=1.0, warmup_steps=10, steps=110)
    assert lr_at(0, s) == pytest.approx(0.1) and lr_at(9, s) == pytest.approx(1.0)
    assert lr_at(10, s) == pytest.approx(1.0) and lr_at(60, s) == pytest.approx(0.55)
    assert lr_at(110, s) == pytest.approx(0.1) and lr_at(500, s) == pytest.approx(0.1)


def test_a_diverging_model_is_recorded_as_such():
    cell = accuracy_cell(
        "tests.plugins.unstable:build", "mqar", {"vocab_size": 16, "num_kv_pairs": 2}, 16, steps=20
    )
    record = run_accuracy_cell(cell)
    assert record["status"] == "diverged" and record["stop_reason"] == "diverged"
    assert record["error"] == "loss nan at step 3" and record["steps_run"] == 3
    assert [e["accuracy"] for e in record["accuracy_by_len"]] == [None, None]
    assert record["state_bytes"] > 0


def test_outputs_that_turn_nan_beyond_the_training_length_are_flagged():
    cell = accuracy_cell(
        "tests.plugins.unstable:build", "mqar", {"vocab_size": 16, "num_kv_pairs": 2}, 16, steps=5
    )
    cell = cell.model_copy(update={"model_args": {"after": 10**9, "nan_beyond": 16}})
    record = run_accuracy_cell(cell)
    assert record["status"] == "ok"
    assert [e["nonfinite"] for e in record["accuracy_by_len"]] == [0.0, 1.0]

    from bench.analysis.sections.recall import table
    from bench.analysis.selection import by_length

    row = stored(cell, record, label="unstable")
    cells = table(by_length([row]), intervals=False).splitlines()[-1].split("|")[2:4]
    assert "(NaN" not in cells[0] and cells[1].strip() == f"{100 * record['acc_T32']:.1f} (NaN 100%)"


def accuracy_cells_of(models, **accuracy):
    """The accuracy cells of a sweep over ``models`` (None: the sweep lists none) with those settings."""
    data = {"modes": ["accuracy"], "tasks": ["mqar", {"name": "niah-pk", "train_len": 128}]}
    if models is not None:
        data["models"] = models
    spec = parse_spec({**data, "accuracy": {"train_len": 64, **accuracy}}, "test")
    entries = spec.models or [ModelEntry(name=n) for n in ("titans-lmm", "titans-mac", "transformer")]
    return expand(spec, entries, "cpu")


def test_learning_rates_and_seeds_multiply_the_cells_and_are_part_of_the_key():
    cells = accuracy_cells_of(["transformer"], lrs=[1e-3, 3e-3], seeds=[0, 1, 2])
    assert len(cells) == 2 * 2 * 3
    mqar = [c for c in cells if c.task == "mqar"]
    assert [(c.train.lr, c.seed) for c in mqar] == [(lr, s) for lr in (1e-3, 3e-3) for s in (0, 1, 2)]
    assert len({c.key for c in cells}) == len(cells)  # a second seed no longer overwrites the first
    assert {c.label for c in cells} == {"transformer"} and {c.group for c in mqar} == {mqar[0].group}
    one = mqar[0]
    assert one.model_copy(update={"seed": 5}).key != one.key  # the seed is in the key...
    assert one.model_copy(update={"threads": 2}).key == one.key  # ...how it runs is not
    # Defaults: one learning rate (lr, 3e-3) and the sweep's seed; the key is stable across expansions.
    default = accuracy_cells_of(["transformer"])
    assert [(c.train.lr, c.seed) for c in default] == [(3e-3, 0), (3e-3, 0)]
    assert [c.key for c in default] == [c.key for c in accuracy_cells_of(["transformer"])]
    spec = parse_spec({"seed": 7, "models": ["transformer"], "modes": ["accuracy"], "tasks": ["mqar"]}, "t")
    assert [c.seed for c in expand(spec, [ModelEntry(name="transformer")], "cpu")] == [7]


@pytest.mark.parametrize(
    "accuracy, message",
    [
        ({"lr": 1e-3, "lrs": [1e-3, 3e-3]}, "give lr .* or lrs .*, not both"),
        ({"lrs": [1e-3, 1e-3]}, "duplicates"),
        ({"seeds": [0, 0]}, "duplicates"),
        ({"seeds": []}, "at least 1"),
        ({"hybrid_context": 0}, "accuracy.hybrid_context"),
    ],
)
def test_bad_grids_are_named(accuracy, message):
    with pytest.raises(BenchError, match=message):
        parse_spec({"accuracy": accuracy}, "x.toml")


def test_hybrid_context_is_a_quarter_of_each_tasks_training_length_and_recorded():
    cells = accuracy_cells_of(
        ["titans-lmm", "titans-mal", "titans-mag", "titans-mac", "transformer", "deltanet"]
    )
    args = {(c.label, c.task): c.model_args for c in cells}
    for task, quarter in (("mqar", 16), ("niah-pk", 32)):
        assert args["titans-mal", task] == args["titans-mag", task] == {"window": quarter}
        assert args["titans-mac", task] == {"segment": quarter}
        assert args["titans-lmm", task] == args["transformer", task] == args["deltanet", task] == {}
    assert "transformer-swa" not in {c.label for c in cells}  # models listed: no control unless asked

    # An explicit argument wins; an int is tokens, a float a fraction; None keeps the models' defaults.
    mal = {"name": "titans-mal", "args": {"window": 5}}
    assert [c.model_args for c in accuracy_cells_of([mal, "titans-mag"])] == [{"window": 5}] * 2 + [
        {"window": 16},
        {"window": 32},
    ]
    assert {c.model_args["segment"] for c in accuracy_cells_of(["titans-mac"], hybrid_context=7)} == {7}
    assert {c.model_args["segment"] for c in accuracy_cells_of(["titans-mac"], hybrid_context=0.5)} == {
        32,
        64,
    }
    assert [c.model_args for c in accuracy_cells_of(["titans-mac"], hybrid_context=None)] == [{}, {}]


def test_the_sliding_window_control_comes_with_the_default_model_list():
    cells = accuracy_cells_of(None)  # the sweep lists no models: every registered one, and the control
    labels = list(dict.fromkeys(c.label for c in cells))
    assert labels == ["titans-lmm", "titans-mac", "transformer", "transformer-swa"]
    swa = {c.task: c for c in cells if c.label == "transformer-swa"}
    mac = {c.task: c for c in cells if c.label == "titans-mac"}
    assert {t: c.model_args for t, c in swa.items()} == {"mqar": {"window": 16}, "niah-pk": {"window": 32}}
    assert all(swa[t].model_args["window"] == mac[t].model_args["segment"] for t in swa)
    assert swa["mqar"].model == "transformer" and len({c.key for c in cells}) == len(cells)
    # Asked for explicitly with listed models; never twice; not at all when switched off.
    assert "transformer-swa" in {c.label for c in accuracy_cells_of(["transformer"], swa_control=True)}
    by_hand = {"name": "transformer", "label": "transformer-swa", "args": {"window": 9}}
    cells = accuracy_cells_of(["transformer", by_hand], swa_control=True)
    assert [c.model_args for c in cells if c.label == "transformer-swa"] == [{"window": 9}] * 2
    assert "transformer-swa" not in {c.label for c in accuracy_cells_of(None, swa_control=False)}


def test_a_sweep_file_with_lr_beside_lrs_is_refused_whatever_lr_is(tmp_path):
    # lr at its default too: the schema cannot tell that from a saved spec.json, the file can
    path = tmp_path / "both.toml"
    path.write_text("[accuracy]\nlr = 3e-3\nlrs = [1e-3, 1e-2]\n")
    with pytest.raises(BenchError, match=r"both.toml: \[accuracy\] sets lr and lrs; give one"):
        load_spec(path)
    path.write_text("[accuracy]\nlrs = [1e-3, 1e-2]\n")
    assert load_spec(path).accuracy.lrs == [1e-3, 1e-2]
