"""Language modelling on real documents (bench/tasks/corpus.py, bench/tasks/lm.py): the corpora load and
split stably, the byte stream round-trips, a tokenizer works, and loss by position is computed exactly
(models whose loss is known in closed form, through real accuracy cells)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench.errors import BenchError
from bench.scoring.loss import FIRST_CONTEXT
from bench.spec.cells import expand
from bench.spec.config import ModelEntry, parse_spec
from bench.tasks import make_task
from bench.tasks.corpus import SPLITS, STDLIB, load_corpus, split_of
from bench.tasks.lm import SEP_BYTE, tokenized
from bench.train.cell import run_accuracy_cell
from tests.helpers import accuracy_cell

PLUGIN = "tests.plugins.closed_form_lm:build"


def write_corpus(root, n=200, length=lambda i: 300 + 7 * i, byte=None):
    """``n`` text files doc000.txt ... in ``root``: file i holds ``length(i)`` bytes (one repeated byte if
    ``byte``, else varied ASCII text)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if byte is not None:
            data = bytes([byte]) * length(i)
        else:
            words = " ".join(f"w{(i * 31 + j * 7) % 97}" for j in range(length(i)))
            data = words.encode()[: length(i)]
        (root / f"doc{i:03d}.txt").write_bytes(data)
    return str(root)


def fresh(source):
    load_corpus.cache_clear()
    tokenized.cache_clear()
    return load_corpus(source)


# -- corpora ---------------------------------------------------------------------------------------------


def test_the_split_is_stable_and_disjoint():
    # The split of a name is a hash of the name alone: the same on every machine and in every run.
    assert [split_of(f"doc{i:03d}.txt") for i in range(8)] == [split_of(f"doc{i:03d}.txt") for i in range(8)]
    assert split_of("asyncio/base_events.py") == "test" and split_of("os.py") == "train"
    names = [f"file{i}.py" for i in range(20000)]
    counts = {s: sum(split_of(n) == s for n in names) for s in SPLITS}
    assert abs(counts["train"] / 20000 - 0.90) < 0.01 and abs(counts["test"] / 20000 - 0.05) < 0.005
    corpus = load_corpus(STDLIB)
    parts = {s: {d.name for d in corpus.split(s)} for s in SPLITS}
    assert not (parts["train"] & parts["validation"]) and not (parts["train"] & parts["test"])
    assert not (parts["validation"] & parts["test"])
    assert set().union(*parts.values()) == {d.name for d in corpus.documents}
    assert all(parts.values()) and len(corpus.documents) > 500
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        corpus.split("dev")


def test_the_stdlib_corpus_is_the_standard_library_without_tests():
    corpus = load_corpus(STDLIB)
    names = [d.name for d in corpus.documents]
    assert "os.py" in names and "asyncio/base_events.py" in names and names == sorted(names)
    assert not any(
        part in ("test", "tests", "site-packages", "idle_test") for n in names for part in n.split("/")
    )
    assert all(n.endswith(".py") for n in names)
    import sys

    assert corpus.fingerprint.startswith(f"python-{sys.version_info[0]}.{sys.version_info[1]}.")


def test_a_local_directory_loads(tmp_path):
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.md").write_text("# beta")
    (root / "c.py").write_text("print('gamma')")
    (root / "d.jsonl").write_text(
        json.dumps({"text": "delta"}) + "\n\n" + json.dumps({"text": "epsilon"}) + "\n"
    )
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    corpus = fresh(str(root))
    docs = {d.name: d.data for d in corpus.documents}
    assert docs == {
        "a.txt": b"alpha",
        "c.py": b"print('gamma')",
        "d.jsonl#1": b"delta",
        "d.jsonl#3": b"epsilon",
        "sub/b.md": b"# beta",
    }
    assert corpus.fingerprint.startswith("local-")
    (root / "a.txt").write_text("alpha!")  # the fingerprint follows the documents
    assert fresh(str(root)).fingerprint != corpus.fingerprint
    single = fresh(str(root / "c.py"))  # one file is a corpus too
    assert [d.name for d in single.documents] == ["c.py"]


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "holds no documents"),
        ({"x.jsonl": "not json\n"}, r"x.jsonl:1: a .jsonl corpus needs one JSON object with a 'text'"),
        ({"x.jsonl": json.dumps({"body": "no text"})}, "needs one JSON object with a 'text'"),
    ],
)
def test_bad_local_corpora_are_named(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(BenchError, match=message):
        fresh(str(tmp_path))
    with pytest.raises(BenchError, match="no such file or directory"):
        fresh(str(tmp_path / "missing"))


def test_an_on_disk_datasets_corpus_loads(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [f"document number {i} " * (i + 1) for i in range(30)]
    path = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": texts, "id": list(range(30))}).save_to_disk(str(path))
    corpus = fresh(f"hf:{path}")
    assert [d.data.decode() for d in corpus.documents] == texts
    assert [d.name for d in corpus.documents] == [f"{path}#{i}" for i in range(30)]
    assert corpus.fingerprint.startswith("hf-")
    # A DatasetDict: its first split, or the one named.
    both = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["a", "b"]}),
            "extra": datasets.Dataset.from_dict({"text": ["c"]}),
        }
    ).save_to_disk(str(both))
    assert [d.data for d in fresh(f"hf:{both}").documents] == [b"a", b"b"]
    assert [d.data for d in fresh(f"hf:{both}:extra").documents] == [b"c"]
    notext = tmp_path / "notext"
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(notext))
    with pytest.raises(BenchError, match="has no 'text' column"):
        fresh(f"hf:{notext}")
    with pytest.raises(BenchError, match="is not available locally"):
        fresh(f"hf:{tmp_path / 'absent'}")
    # A hub name that is not cached: refused offline (never downloaded), the offline switch then restored.
    import huggingface_hub.constants

    before = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    with pytest.raises(BenchError, match="is not available locally: .*Offline"):
        fresh("hf:no-such-owner/no-such-dataset-titans-bench")
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == before


# -- the task ----------------------------------------------------------------------------------------------


def test_the_byte_stream_round_trips(tmp_path):
    source = write_corpus(tmp_path / "c")
    corpus = fresh(source)
    task = make_task("lm", {"corpus": source})
    assert task.vocab_size == 256
    train = sorted(corpus.split("train"), key=lambda d: d.name)
    stream = b"".join(bytes([SEP_BYTE]) + d.data for d in train)
    assert bytes(tokenized(source, None).stream.tolist()) == stream
    # A training window is a stretch of that stream, its targets the next tokens.
    inputs, targets, _ = task.generate(8, 64, seed=3)
    for x, y in zip(inputs.tolist(), targets.tolist(), strict=True):
        assert bytes(x) in stream and x[1:] == y[:-1] and bytes(x + y[-1:]) in stream
    assert torch.equal(task.generate(8, 64, seed=3).inputs, inputs)
    # Held-out examples: each document's first T bytes, after the boundary byte, in name order.
    test_docs = sorted((d for d in corpus.split("test") if len(d.data) >= 500), key=lambda d: d.name)
    examples, nbytes = task.examples_with_bytes("test", 100, 500, seed=0)
    assert [bytes(row) for row in examples.targets.tolist()] == [d.data[:500] for d in test_docs]
    assert (examples.inputs[:, 0] == SEP_BYTE).all() and torch.equal(
        examples.inputs[:, 1:], examples.targets[:, :-1]
    )
    assert (nbytes == 1).all() and (examples.distances == torch.arange(1, 501)).all()
    assert task.document_names("test", 500, 100) == [d.name for d in test_docs]
    # Shorter documents are skipped, so fewer are scored at longer lengths; n caps them.
    long = [d.data[:1200] for d in test_docs if len(d.data) >= 1200]
    assert 0 < len(long) < len(test_docs)
    assert [bytes(row) for row in task.examples("test", 100, 1200, seed=0).targets.tolist()] == long
    assert len(task.examples("test", 2, 500, seed=0).inputs) == 2


def test_lengths_no_held_out_document_reaches_are_refused(tmp_path):
    source = write_corpus(tmp_path / "c", length=lambda i: 100)
    task = make_task("lm", {"corpus": source})
    task.check_len(100)
    with pytest.raises(
        BenchError, match=r"no (validation|test) document of corpus .* has 101 tokens \(the longest has 100\)"
    ):
        task.check_len(101)


def test_the_corpus_fingerprint_is_pinned_in_the_cell(tmp_path):
    source = write_corpus(tmp_path / "c")
    spec = parse_spec(
        {
            "models": ["transformer"],
            "modes": ["accuracy"],
            "tasks": [{"name": "lm", "args": {"corpus": source}}],
            "accuracy": {"train_len": 64},
        },
        "t",
    )
    (cell,) = expand(spec, [ModelEntry(name="transformer")], "cpu")
    fingerprint = fresh(source).fingerprint
    assert cell.task_args == {"corpus": source, "fingerprint": fingerprint}
    assert cell.train.threshold is None  # a loss task trains its whole budget
    # The documents change: a new key, and the old cell refuses to run on them.
    (tmp_path / "c" / "doc000.txt").write_text("changed")
    fresh(source)
    (again,) = expand(spec, [ModelEntry(name="transformer")], "cpu")
    assert again.key != cell.key
    with pytest.raises(BenchError, match="but the cell was made for .*results would not be comparable"):
        _ = make_task("lm", cell.task_args).vocab_size


# -- loss by position through real accuracy cells ----------------------------------------------------------


def lm_cell(source, train_len, factors=(1, 2), favour=None, tokenizer=None, **train):
    args = {"corpus": source, **({"tokenizer": tokenizer} if tokenizer else {})}
    settings = dict(steps=3, warmup_steps=1, eval_every=2, val_samples=16, eval_samples=16, threshold=None)
    cell = accuracy_cell(PLUGIN, "lm", args, train_len, **{**settings, **train})
    return cell.model_copy(
        update={
            "model_args": {"favour": favour},
            "eval_lens": [train_len * f for f in factors],
            "batch_size": 4,
        }
    )


def test_uniform_bytes_cost_exactly_8_bits_per_byte_at_every_position(tmp_path):
    source = write_corpus(tmp_path / "c")
    record = run_accuracy_cell(lm_cell(source, 64, factors=(1, 2, 4)))
    assert record["status"] == "ok" and record["scoring"] == "loss" and record["steps_run"] == 3
    assert record.get("accuracy") is None and "acc_T64" not in record
    assert [v for _, v in record["val_curve"]] == pytest.approx([8.0, 8.0], abs=1e-6)
    assert record["val_bpb"] == pytest.approx(8.0, abs=1e-6) and record["train_tokens_per_s"] > 0
    assert record["bpb"] == record["bpb_T64"] == pytest.approx(8.0, abs=1e-6)
    for entry in record["accuracy_by_len"]:
        length = entry["eval_len"]
        assert (
            entry["n_examples"] >= 1 and entry["n_tokens"] == entry["n_bytes"] == entry["n_examples"] * length
        )
        assert record[f"bpb_T{length}"] == entry["bpb"] == pytest.approx(8.0, abs=1e-6)
        assert [b["max_distance"] for b in entry["by_position"]] == [
            2**i for i in range(int(math.log2(length)) + 1)
        ]
        assert sum(b["tokens"] for b in entry["by_position"]) == entry["n_tokens"]
        for b in entry["by_position"]:
            assert b["nll"] / math.log(2) / b["bytes"] == pytest.approx(8.0, abs=1e-6)
        assert entry["gain_from_context"] == pytest.approx(0.0, abs=1e-6)
        if length > 64:
            assert entry["bpb_beyond_train"] == pytest.approx(8.0, abs=1e-6)
            assert entry["beyond_train_tokens"] == entry["n_examples"] * (length - 64)
            assert entry["gain_beyond_train"] == pytest.approx(0.0, abs=1e-6)
            assert entry["bpb_beyond_train_truncated"] == pytest.approx(8.0, abs=1e-6)
            assert entry["context_gain_beyond_train"] == pytest.approx(0.0, abs=1e-6)


def test_loss_by_position_is_bucketed_exactly(tmp_path):
    """Documents of one repeated byte and a model that gives it probability (t + 1) / (t + 256) at input
    position t: every bucket's bits per byte is the mean of -log2 of that over its positions."""
    source = write_corpus(tmp_path / "c", length=lambda i: 1000, byte=ord("a"))
    record = run_accuracy_cell(lm_cell(source, 32, factors=(1, 8), favour=ord("a")))
    entry = record["accuracy_by_len"][1]
    assert entry["eval_len"] == 256

    def expected(positions):  # target position p (1-based) is predicted at input position t = p - 1
        return sum(-math.log2(p / (p + 255)) for p in positions) / len(positions)

    low = 0
    for b in entry["by_position"]:
        d = b["max_distance"]
        assert b["tokens"] == entry["n_examples"] * (d - low)
        assert b["nll"] / math.log(2) / b["bytes"] == pytest.approx(expected(range(low + 1, d + 1)), rel=1e-6)
        low = d
    assert entry["bpb"] == pytest.approx(expected(range(1, 257)), rel=1e-6)
    first, last = expected(range(1, FIRST_CONTEXT + 1)), expected(range(129, 257))
    assert entry["gain_from_context"] == pytest.approx(first - last, rel=1e-6) and first - last > 4
    assert entry["bpb_beyond_train"] == pytest.approx(expected(range(33, 257)), rel=1e-6)
    assert entry["gain_beyond_train"] == pytest.approx(expected(range(17, 33)) - last, rel=1e-6)
    # With the context cut to L = 32 (windows of 32 every 16, each scoring its second half), the target at
    # 0-based t >= 32 is predicted at window position t - a, a = 16 (t // 16 - 1): the model's loss there.
    truncated = [
        -math.log2((t - 16 * (t // 16 - 1) + 1) / (t - 16 * (t // 16 - 1) + 256)) for t in range(32, 256)
    ]
    assert entry["bpb_beyond_train_truncated"] == pytest.approx(sum(truncated) / len(truncated), rel=1e-6)
    assert entry["context_gain_beyond_train"] == pytest.approx(
        sum(truncated) / len(truncated) - expected(range(33, 257)), rel=1e-6
    )
    for b in entry["by_position"]:  # before L the truncated context is the whole prefix
        if b["max_distance"] <= 32:
            assert b["nll_truncated"] == b["nll"]
    documents = entry["by_document"]
    assert len(documents["nll"]) == entry["n_examples"] and len(documents["nll"][0]) == len(
        entry["by_position"]
    )
    for name in ("nll", "nll_truncated", "bytes"):
        sums = [sum(column) for column in zip(*documents[name], strict=True)]
        assert sums == pytest.approx([b[name] for b in entry["by_position"]], rel=1e-9)


def test_a_tokenizer_file_built_here_works(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    # Text with multi-byte characters, so that tokens and bytes differ.
    source = write_corpus(tmp_path / "c", n=120, length=lambda i: 400 + 5 * i)
    for path in (tmp_path / "c").glob("*.txt"):
        path.write_text(" naïve café — ünïcode ✓ ".join(path.read_text().split(" w1")))
    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train(
        [str(p) for p in (tmp_path / "c").glob("*.txt")],
        trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]),
    )
    path = str(tmp_path / "tok.json")
    tok.save(path)

    fresh(source)
    task = make_task("lm", {"corpus": source, "tokenizer": path})
    vocab = tok.get_vocab_size() + 1  # and the document boundary
    assert task.vocab_size == vocab and tokenized(source, path).sep == vocab - 1
    assert task.pinned_args()["fingerprint"].startswith(load_corpus(source).fingerprint + "-tok-")
    examples, nbytes = task.examples_with_bytes("test", 50, 60, seed=0)
    names = task.document_names("test", 60, 50)
    corpus = {d.name: d.data.decode() for d in load_corpus(source).documents}
    for row, counts, name in zip(examples.targets.tolist(), nbytes.tolist(), names, strict=True):
        encoding = tok.encode(corpus[name], add_special_tokens=False)
        assert row == encoding.ids[:60]
        covered = corpus[name][: encoding.offsets[59][1]]  # the text the first 60 tokens cover
        assert sum(counts) == len(covered.encode()) and min(counts) >= 0
    assert all(len(corpus[n].encode()) > len(corpus[n]) for n in names)  # multi-byte characters in each
    # Uniform over the vocabulary: log2(V) bits per token, so per byte log2(V) x tokens / bytes.
    record = run_accuracy_cell(lm_cell(source, 30, tokenizer=path))
    for entry in record["accuracy_by_len"]:
        assert entry["n_bytes"] > entry["n_tokens"]
        assert entry["bpb"] == pytest.approx(
            math.log2(vocab) * entry["n_tokens"] / entry["n_bytes"], rel=1e-6
        )
    with pytest.raises(BenchError, match="tokenizer file .* does not exist"):
        _ = make_task("lm", {"corpus": source, "tokenizer": str(tmp_path / "none.json")}).vocab_size


@pytest.mark.parametrize("window, length", [(6, 20), (8, 32), (5, 23), (16, 16)])
def test_truncated_context_windows_cover_every_target_once(window, length):
    """Every target from position ``window`` on is scored once, with between window // 2 + 1 and window
    tokens of context, the last window aligned to the end when the length is not a multiple."""
    from bench.scoring import Examples, Inference
    from bench.scoring.loss import truncated_nll
    from tests.plugins.closed_form_lm import build

    model = build(favour=7)
    ids = torch.full((3, length), 7)
    data = Examples(ids, ids, torch.arange(1, length + 1).expand(3, length))
    infer = Inference(64)
    full, _ = infer.nll(model, data)
    cut, finite = truncated_nll(model, data, full, window, infer)
    assert finite.all() and torch.equal(cut[:, :window], full[:, :window])
    # The model's loss at input position j is -ln((j + 1) / (j + 256)): invert it to read the context.
    context = torch.round(255 / (torch.exp(cut) - 1)).long()  # j + 1 tokens of context
    assert torch.equal(context[:, :window], torch.arange(1, window + 1).expand(3, window))
    later = context[0, window:]
    assert (later >= window // 2 + 1).all() and (later <= window).all()


def test_a_tiny_but_certain_context_gain_is_not_called_help():
    """+0.0004 bits per byte with an interval above zero: the sign is shown, the help is not claimed."""
    import pandas as pd

    from bench.analysis.sections.lm import measured

    rows = [
        {"label": "tiny", "context_gain": 0.0004, "context_gain_interval": [0.0001, 0.0007]},
        {"label": "real", "context_gain": 0.2, "context_gain_interval": [0.1, 0.3]},
        {"label": "worse", "context_gain": -0.5, "context_gain_interval": [-0.6, -0.4]},
        {"label": "unsure", "context_gain": 0.05, "context_gain_interval": [-0.1, 0.2]},
    ]
    frame = pd.DataFrame(
        [{**r, "task_label": "lm", "eval_len": 64, "status": "ok", "train_len": 16} for r in rows]
    )
    text = measured(frame, "lm")
    assert "(the context beyond L helps): real (+0.200" in text
    assert "; higher (it hurts): worse (-0.500" in text
    assert "but under 0.01 bits per byte: tiny (+0.000" in text
    assert text.endswith("no difference the documents can show: unsure.")


def test_the_lm_report_section(tmp_path):
    """Real cells of the closed-form models (uniform: 8 bits per byte everywhere; favouring the byte the
    documents are made of: falling with position) at two learning rates: the tables, the documents
    counted, what the context beyond L is worth, and the plots."""
    from bench.analysis.report import accuracy_sections
    from bench.results import parse_row

    source = write_corpus(tmp_path / "c", length=lambda i: 200 + 4 * i, byte=ord("a"))
    rows = []
    for label, favour in (("uniform", None), ("favour", ord("a"))):
        for lr in (1e-3, 3e-3):
            cell = lm_cell(source, 32, factors=(1, 2, 4), favour=favour, lr=lr)
            cell = cell.model_copy(update={"label": label, "task_label": "lm"})
            rows.append(parse_row({"key": cell.key, **cell.model_dump(), **run_accuracy_cell(cell)}))
    # A cell that timed out has only its cell fields and a status: still an lm cell, shown as such.
    late = lm_cell(source, 32, factors=(1, 2, 4)).model_copy(update={"label": "late", "task_label": "lm"})
    rows.append(parse_row({"key": late.key, **late.model_dump(), "status": "timeout", "error": "timed out"}))
    out = tmp_path / "run"
    out.mkdir()
    lines = accuracy_sections(rows, out)
    text = "\n".join(lines)
    assert "## Language modelling: bits per byte by context position" in text
    assert "## Accuracy: synthetic recall" not in text and "## State tracking" not in text
    counts = {n: len(make_task("lm", {"corpus": source}).documents("test", n)) for n in (32, 64, 128)}
    assert f"T=32: {counts[32]}, T=64: {counts[64]}, T=128: {counts[128]}." in text
    assert counts[128] < 10 and "**Few documents**" in text
    uniform = next(line for line in lines if line.startswith("| uniform |"))
    assert uniform.startswith("| uniform | " + "8.000 [8.000, 8.000] | " * 3 + "8.000 | 8.000 | +0.000")
    # The favoured byte's loss falls with position: past L it is lower with the whole document.
    assert "lower with the whole document (the context beyond L helps): favour (+" in text
    assert "no difference the documents can show: uniform." in text
    bucket_head = next(line for line in lines if line.startswith("| model | 1–16 |"))
    assert bucket_head == "| model | 1–16 | 17–32 | 33–64 (> L) | 65–128 (> L) |"
    assert text.count("| ✓ |") == 3  # one chosen rate per model
    assert "| late | timeout | timeout | timeout | – |" in text
    for png in ("lm_bpb_by_position.png", "lm_training_curves.png"):
        assert (out / png).stat().st_size > 1000


def test_an_lm_section_whose_every_cell_failed_says_so(tmp_path):
    """A sweep killed before any lm cell finished still gets its report: the cells are listed as failed and
    the documents line says none were scored."""
    from bench.analysis.report import accuracy_sections
    from bench.results import parse_row

    source = write_corpus(tmp_path / "c")
    cell = lm_cell(source, 32).model_copy(update={"label": "dead", "task_label": "lm"})
    row = parse_row({"key": cell.key, **cell.model_dump(), "status": "crashed", "error": "worker died"})
    out = tmp_path / "run"
    out.mkdir()
    text = "\n".join(accuracy_sections([row], out))
    assert "held-out test documents scored at each length" in text and "none, no cell finished." in text
    assert "| dead | crashed |" in text
