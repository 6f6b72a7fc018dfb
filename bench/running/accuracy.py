"""Accuracy cells: train a fresh model on a synthetic task, then measure how well it recalls at the
training length and beyond it, the way Zoology measures associative recall.

Training: AdamW (weight decay on matrices only), linear warm-up then cosine decay to 10% over
``steps``, gradient clipping, fresh seeded batches every step. The step budget decides: it stops at
``steps``, at the first validation that reaches ``threshold`` (if set), or when the loss stops being finite
(status "diverged"; the sweep goes on). ``max_seconds`` is a safety cap on the wall clock; a cell it stops
records ``cap_bound`` so that reports show it as such, never as a plain low accuracy. The final model is
validated once more if the last step had no validation (``val_accuracy``: what the learning-rate grid is
chosen by). Validation and test examples come from their own seed streams, and any training example
identical to one of them is dropped, so a model is never scored on what it saw.

Evaluation: at each evaluation length the held-out examples are generated with the training length known
(so a task can stretch its distances beyond it, see bench/tasks/base.py), and every scored item (an MQAR
query, a needle) is counted by the distance between its evidence and its question. Each entry of
``accuracy_by_len`` holds ``accuracy`` (mean per-example score, as before), ``n_examples``, ``n_items``,
``by_distance`` (doubling bins: ``{"max_distance", "correct", "total"}``) and ``beyond_train``: the
accuracy over the items whose distance exceeds the training length (None where there are none), with
``beyond_train_items`` and ``beyond_train_examples`` (how many items, and how many examples they come from).
A task scored by position (a running state, bench/tasks/state.py) also gets ``longest_prefix_90``: the
longest prefix length L such that the accuracy over the examples is at least 90% at every position < L
(bench.tasks.base.longest_prefix; L = eval_len when no position falls short).

A task scored by loss (language modelling, bench/tasks/lm.py) is trained the same way for its whole step
budget (no accuracy threshold), validated by bits per byte on its validation documents (``val_bpb``,
lower is better: what the learning-rate grid is chosen by), and evaluated by the negative log-likelihood
of every target, from the logits in float32: each entry of ``accuracy_by_len`` holds ``bpb`` (bits per
byte: nats / ln 2 / the bytes the targets stand for), ``by_position`` (doubling buckets of the position
in the document with their summed nll, tokens and bytes), ``bpb_beyond_train``, ``gain_from_context``,
``gain_beyond_train`` and ``context_gain_beyond_train`` (the targets past the training length scored with
the context cut to the training length, against the whole document before them; see
:func:`evaluate_loss`), and ``n_examples``, the documents long enough to be scored at that length. Its
flat columns are ``bpb_T{n}`` instead of ``acc_T{n}``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bench.registry import build
from bench.running.failures import free_cuda, is_oom
from bench.spec.cells import AccuracyCell
from bench.spec.config import TrainSettings
from bench.tasks import IGNORE, Task, make_task
from bench.tasks.base import (
    Examples,
    bin_by_distance,
    derive_seed,
    doubling_bounds,
    drop_seen,
    example_ids,
    longest_prefix,
)

LOG_POINTS = 200  # loss-curve points kept per cell: enough to plot, small enough to store
MIN_LR_FRACTION = 0.1
PREFIX_LEVEL = 0.9  # longest_prefix_90: the longest prefix at which a model is still this accurate
LN2 = math.log(2)
# gain_from_context compares the loss at positions <= 16 (a document's first tokens, little context) with
# the loss in the last doubling bucket
FIRST_CONTEXT = 16

Data = Examples


def lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return s.lr * (MIN_LR_FRACTION + (1.0 - MIN_LR_FRACTION) * cosine)


def non_embedding(model) -> int | None:
    """Non-embedding parameters, from the shell's method (a plug-in without it reports None)."""
    count = getattr(model, "n_params_non_embedding", None)
    return count() if callable(count) else None


def make_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    # nanoGPT's rule: decay matrices (and embeddings), not gains and biases.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95))


def precision(cell: AccuracyCell, model: torch.nn.Module, device: torch.device) -> Callable[[], Any]:
    """Move the model to the cell's dtype; half precision is autocast over float32 weights, because
    AdamW on half-precision weights loses small updates."""
    dtype = getattr(torch, cell.dtype)
    if dtype in (torch.bfloat16, torch.float16):
        model.to(device=device, dtype=torch.float32)
        return lambda: torch.autocast(device.type, dtype=dtype)
    model.to(device=device, dtype=dtype)
    return contextlib.nullcontext


@torch.no_grad()  # not inference_mode: a memory that learns at test time may need autograd inside
def predict(
    model, inputs: torch.Tensor, batch_tokens: int, autocast: Callable[[], Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy (argmax) predictions [n, T] in chunks of at most ``batch_tokens``, and for each example
    whether its logits were all finite (the argmax of non-finite logits is meaningless)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunk = max(1, batch_tokens // inputs.shape[1])
    predictions, finite = [], []
    for i in range(0, len(inputs), chunk):
        with autocast():
            logits = model(inputs[i : i + chunk].to(device))
        finite.append(torch.isfinite(logits).flatten(1).all(1).cpu())
        predictions.append(logits.argmax(-1).cpu())
    model.train(was_training)
    return torch.cat(predictions), torch.cat(finite)


def evaluate(
    model,
    task: Task,
    data: Data,
    batch_tokens: int,
    autocast: Callable[[], Any],
    stats: dict | None = None,
    train_len: int | None = None,
) -> float:
    """Mean per-example score of the greedy predictions. ``stats``, if given, receives ``nonfinite``: the
    fraction of examples whose logits were not all finite (a model that diverges beyond its training
    length scores 0 without it), and with ``train_len`` the item counts of :func:`score_by_distance`."""
    predictions, finite = predict(model, data.inputs, batch_tokens, autocast)
    if stats is not None:
        stats["nonfinite"] = float((~finite).float().mean())
        if train_len is not None:
            stats.update(score_by_distance(task, predictions, data, train_len))
    return task.score(predictions, data.targets).mean().item()


def score_by_distance(task: Task, predictions: torch.Tensor, data: Data, train_len: int) -> dict[str, Any]:
    """Counts of the scored items: in doubling distance bins, and beyond the training length."""
    items = task.items(predictions, data)
    beyond = items.distance > train_len
    n_beyond = int(beyond.sum())
    out = {
        "n_examples": data.n,
        "n_items": len(items.distance),
        "by_distance": bin_by_distance(items.distance, items.correct, data.inputs.shape[1]),
        "beyond_train": float(items.correct[beyond].float().mean()) if n_beyond else None,
        "beyond_train_items": n_beyond,
        "beyond_train_examples": len(items.example[beyond].unique()),
    }
    if task.scored_by_position:
        asked = data.targets != IGNORE
        out["longest_prefix_90"] = longest_prefix(predictions == data.targets, asked, PREFIX_LEVEL)
    return out


@torch.no_grad()  # not inference_mode, as predict
def position_nll(
    model, data: Data, batch_tokens: int, autocast: Callable[[], Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The negative log-likelihood of every target [n, T] in nats (float64, from the logits in float32,
    whatever the model computes in), in chunks of at most ``batch_tokens``; and for each example whether
    its logits were all finite."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunk = max(1, batch_tokens // data.inputs.shape[1])
    nll, finite = [], []
    for i in range(0, data.n, chunk):
        targets = data.targets[i : i + chunk].to(device)
        with autocast():
            logits = model(data.inputs[i : i + chunk].to(device))
        logits = logits.float()
        finite.append(torch.isfinite(logits).flatten(1).all(1).cpu())
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none", ignore_index=IGNORE)
        nll.append(loss.view(targets.shape).double().cpu())
    model.train(was_training)
    return torch.cat(nll), torch.cat(finite)


def bits(nll: torch.Tensor, nbytes: torch.Tensor) -> float | None:
    """Bits per byte of a set of targets: their summed nll in nats / ln 2 / their bytes."""
    total = float(nbytes.sum())
    return float(nll.sum()) / LN2 / total if total else None


def validation_bpb(model, data: Data, nbytes: torch.Tensor, batch_tokens: int, autocast) -> float:
    """Bits per byte over the validation examples (what the learning rate of a loss task is chosen by);
    infinite if any logits are not finite."""
    nll, finite = position_nll(model, data, batch_tokens, autocast)
    value = bits(nll, nbytes) if finite.all() else None
    return math.inf if value is None or not math.isfinite(value) else value


def truncated_nll(
    model, data: Data, full: torch.Tensor, window: int, batch_tokens: int, autocast
) -> tuple[torch.Tensor, torch.Tensor]:
    """The nll of every target [n, T] with the context cut to at most ``window`` tokens (the training
    length): windows of ``window`` tokens every ``window // 2`` (a "strided" evaluation), each scoring the
    targets in its second half, so every target from position ``window`` on is scored with between
    ``window // 2 + 1`` and ``window`` tokens of context, starting inside the document as a training window
    does; the targets before it see the whole (short) prefix, as in ``full``, whose values they keep.
    Also, per example, whether all its windows' logits were finite."""
    n, length = data.targets.shape
    half = window // 2
    out = full.clone()
    if length <= window or half < 1:
        return out, torch.ones(n, dtype=torch.bool)
    windows, scored_from = [], []  # window start a, and the first target it scores
    covered = window
    while covered < length:
        a = min(covered - half, length - window)
        windows.append(a)
        scored_from.append(covered)
        covered = a + window
    index = torch.tensor(windows)[:, None] + torch.arange(window)  # [k, window]
    pieces = Examples(*(x[:, index].flatten(0, 1) for x in data))
    nll, finite = position_nll(model, pieces, batch_tokens, autocast)
    nll, finite = nll.view(n, len(windows), window), finite.view(n, len(windows)).all(1)
    for j, (a, first) in enumerate(zip(windows, scored_from, strict=True)):
        out[:, first : a + window] = nll[:, j, first - a :]
    return out, finite


def evaluate_loss(
    model, data: Data, nbytes: torch.Tensor, batch_tokens: int, autocast, train_len: int
) -> dict[str, Any]:
    """Bits per byte of held-out examples of a task scored by loss (distance = position in the document,
    bench/tasks/lm.py), every figure in bits per byte:

    - ``bpb``: over every target; ``bpb_beyond_train``: over the positions past the training length L;
    - ``by_position``: doubling buckets (bucket d holds positions in (d/2, d]) with their summed nll in nats
      (``nll``; ``nll_truncated``: the same targets with the context cut to at most L tokens, see
      :func:`truncated_nll`), ``tokens`` and ``bytes``; ``by_document``: the same sums per example and
      bucket (``nll``, ``nll_truncated``, ``bytes``: lists [n][buckets]) and per example over the
      positions past L (``nll_beyond``, ``nll_truncated_beyond``, ``bytes_beyond``: lists [n]), for
      intervals over documents;
    - ``gain_from_context``: bpb at positions <= FIRST_CONTEXT minus bpb in the last bucket, (T/2, T]: how
      much lower the loss is late in a document than at its start (context, but also how the text changes
      along a document);
    - above L: ``gain_beyond_train``, bpb in the bucket (L/2, L] minus bpb in the last bucket;
      ``bpb_beyond_train_truncated`` and ``context_gain_beyond_train``, the bpb of the targets past L with
      the context cut to L minus that with the whole document before them: what the context beyond the
      training length is worth on exactly the same targets (> 0: the model uses it; < 0: it hurts).

    Figures are None wherever the logits of any example were not finite (``nonfinite``: the fraction of
    such examples); ``n_examples`` is the number of documents scored."""
    nll, finite = position_nll(model, data, batch_tokens, autocast)
    length = data.inputs.shape[1]
    truncated, finite_truncated = truncated_nll(model, data, nll, train_len, batch_tokens, autocast)
    finite &= finite_truncated
    asked = data.targets != IGNORE
    position = data.distances
    bins, per_document, low = [], {"nll": [], "nll_truncated": [], "bytes": []}, 0
    for bound in doubling_bounds(length):
        inside = asked & (position > low) & (position <= bound)
        bins.append(
            {
                "max_distance": bound,
                "nll": float(nll[inside].sum()),
                "nll_truncated": float(truncated[inside].sum()),
                "tokens": int(inside.sum()),
                "bytes": int(nbytes[inside].sum()),
            }
        )
        per_document["nll"].append((nll * inside).sum(1))
        per_document["nll_truncated"].append((truncated * inside).sum(1))
        per_document["bytes"].append((nbytes * inside).sum(1))
        low = bound
    ok = bool(finite.all())

    def bpb_where(mask: torch.Tensor, values: torch.Tensor = nll) -> float | None:
        return bits(values[mask], nbytes[mask]) if ok and mask.any() else None

    def difference(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    beyond = asked & (position > train_len)
    by_document: dict[str, Any] = {
        name: torch.stack(columns, 1).tolist() for name, columns in per_document.items()
    }
    by_document.update(
        nll_beyond=(nll * beyond).sum(1).tolist(),
        nll_truncated_beyond=(truncated * beyond).sum(1).tolist(),
        bytes_beyond=(nbytes * beyond).sum(1).tolist(),
    )
    out: dict[str, Any] = {
        "bpb": bpb_where(asked),
        "n_examples": data.n,
        "n_tokens": int(asked.sum()),
        "n_bytes": int(nbytes[asked].sum()),
        "nonfinite": float((~finite).float().mean()),
        "by_position": bins,
        "by_document": by_document if ok else None,
        "bpb_beyond_train": bpb_where(beyond),
        "beyond_train_tokens": int(beyond.sum()),
        "bpb_first": bpb_where(asked & (position <= FIRST_CONTEXT)),
        "bpb_last": bpb_where(asked & (position > length // 2)),
    }
    out["gain_from_context"] = difference(out["bpb_first"], out["bpb_last"])
    if length > train_len:
        out["bpb_at_train"] = bpb_where(asked & (position > train_len // 2) & (position <= train_len))
        out["gain_beyond_train"] = difference(out["bpb_at_train"], out["bpb_last"])
        out["bpb_beyond_train_truncated"] = bpb_where(beyond, truncated)
        out["context_gain_beyond_train"] = difference(
            out["bpb_beyond_train_truncated"], out["bpb_beyond_train"]
        )
    return out


def next_batch(task: Task, cell: AccuracyCell, draw: int, seen: set[bytes]) -> Data:
    batch = task.examples("train", cell.batch_size, cell.seq_len, derive_seed(cell.seed, "train", draw))
    return drop_seen(batch, seen)


def train(
    model, task: Task, cell: AccuracyCell, validate: Callable[[], float], seen: set[bytes], autocast
) -> dict[str, Any]:
    """Train ``model`` for the cell's step budget. ``validate()`` scores the model on the validation
    examples: accuracy (higher is better, and may stop training at ``threshold``), or for a task scored by
    loss its bits per byte (lower is better; never stops training early)."""
    s = cell.train
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, s)
    log_every = max(1, s.steps // LOG_POINTS)
    batch_tokens = cell.batch_size * cell.seq_len
    loss_curve: list[list[float]] = []
    val_curve: list[list[float]] = []
    window: list[float] = []
    out: dict[str, Any] = {"status": "ok", "stop_reason": "steps"}
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    step = 0
    draws = empty = 0
    while step < s.steps:
        inputs, targets, _ = next_batch(task, cell, draws, seen)
        draws += 1
        if not len(inputs):  # a tiny task whose whole batch repeated held-out examples: draw again
            empty += 1
            if empty == 100:
                raise ValueError(f"task {cell.task_label!r} keeps repeating its held-out examples")
            continue
        empty = 0
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, s)
        with autocast():
            logits = model(inputs.to(device))
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), targets.to(device).flatten(), ignore_index=IGNORE
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip) if s.grad_clip else None
        value = loss.item()
        if not math.isfinite(value) or (norm is not None and not torch.isfinite(norm)):
            what = f"loss {value}" if not math.isfinite(value) else f"gradient norm {norm.item()}"
            out.update(status="diverged", stop_reason="diverged", error=f"{what} at step {step}")
            break
        optimizer.step()
        step += 1
        window.append(value)
        if step % log_every == 0:
            loss_curve.append([step, sum(window) / len(window)])
            window = []
        if step % s.eval_every == 0 or step == s.steps:
            score = validate()
            val_curve.append([step, score])
            if not task.loss_scored and s.threshold is not None and score >= s.threshold:
                out["stop_reason"] = "threshold"
                break
        if step < s.steps and time.perf_counter() - start >= s.max_seconds:
            out["stop_reason"] = "max_seconds"  # the cap bound: the step budget was not reached
            break
    if window:
        loss_curve.append([step, sum(window) / len(window)])
    if out["status"] == "ok" and step and (not val_curve or val_curve[-1][0] != step):
        val_curve.append([step, validate()])  # the final model
    final = val_curve[-1][1] if out["status"] == "ok" and val_curve else None
    scores = [v for _, v in val_curve]
    if task.loss_scored:
        out.update(val_bpb=final, best_val_bpb=min(scores, default=None))
    else:
        out.update(val_accuracy=final, best_val_accuracy=max(scores, default=None))
    seconds = time.perf_counter() - start
    out.update(
        steps_run=step,
        cap_bound=out["stop_reason"] == "max_seconds",
        train_seconds=seconds,
        # tokens trained on per second of the training loop (its validations included)
        train_tokens_per_s=step * batch_tokens / seconds if seconds > 0 else None,
        # CPU time of this process: on a shared machine, close to what the wall clock would be when quiet
        train_cpu_seconds=time.process_time() - cpu_start,
        tokens_seen=step * batch_tokens,
        final_loss=loss_curve[-1][1] if loss_curve else None,
        loss_curve=loss_curve,
        val_curve=val_curve,
    )
    return out


def run_accuracy_cell(cell: AccuracyCell) -> dict[str, Any]:
    """Train and evaluate one (model, task) cell; a flat record for the results store."""
    s = cell.train
    device = torch.device(cell.device)
    if cell.threads:
        torch.set_num_threads(cell.threads)
    task = make_task(cell.task, cell.task_args)
    torch.manual_seed(cell.seed)
    model = build(cell.model, **cell.build_kwargs())
    autocast = precision(cell, model, device)

    T = cell.seq_len
    batch_tokens = cell.batch_size * T
    loss = task.loss_scored

    def held_out(split: str, n: int, length: int, seed: int) -> tuple[Data, torch.Tensor | None]:
        train_len = None if length == T else T
        if loss:
            return task.examples_with_bytes(split, n, length, seed, train_len=train_len)
        return task.examples(split, n, length, seed, train_len=train_len), None

    val, val_bytes = held_out("validation", s.val_samples, T, derive_seed(cell.seed, "val", T))
    tests = {T: held_out("test", s.eval_samples, T, derive_seed(cell.seed, "test", T))}
    seen = set(example_ids(val)) | set(example_ids(tests[T][0]))
    if loss:
        validate = lambda: validation_bpb(model, val, val_bytes, batch_tokens, autocast)  # noqa: E731
    else:
        validate = lambda: evaluate(model, task, val, batch_tokens, autocast)  # noqa: E731
    record = train(model, task, cell, validate, seen, autocast)

    metric = "bpb" if loss else "accuracy"
    start, cpu_start = time.perf_counter(), time.process_time()
    by_len = []
    for length in cell.eval_lens:
        entry: dict[str, Any] = {"eval_len": length, "state_bytes": model.state_bytes(1, length)}
        if record["status"] != "ok":
            entry[metric] = None  # a diverged model has nothing to evaluate
        elif any("error" in e for e in by_len):
            entry.update({metric: None, "error": "skipped after an out-of-memory at a shorter length"})
        else:
            if length not in tests:
                tests[length] = held_out(
                    "test", s.eval_samples, length, derive_seed(cell.seed, "test", length)
                )
            data, nbytes = tests[length]
            try:
                if loss:
                    entry.update(evaluate_loss(model, data, nbytes, batch_tokens, autocast, train_len=T))
                else:
                    entry["accuracy"] = evaluate(
                        model, task, data, batch_tokens, autocast, entry, train_len=T
                    )
            except Exception as err:  # noqa: BLE001 - a longer length may not fit; the shorter ones stand
                if not is_oom(err):
                    raise
                entry.update({metric: None, "error": f"out of memory at eval_len {length}"})
                free_cuda()
        by_len.append(entry)
    scores = {e["eval_len"]: e.get(metric) for e in by_len}
    record.update(
        scoring="loss" if loss else "position" if task.scored_by_position else "distance",
        train_len=T,
        accuracy=None if loss else scores.get(T),
        accuracy_by_len=by_len,
        eval_seconds=time.perf_counter() - start,
        eval_cpu_seconds=time.process_time() - cpu_start,
        state_bytes=model.state_bytes(1, T),
        n_params=model.n_params(),
        n_params_non_embedding=non_embedding(model),
        backend=model.backend,
        torch_threads=torch.get_num_threads(),
    )
    if loss:
        record["bpb"] = scores.get(T)
    # Flat columns too, one per length, for tools that compare runs cell by cell (bench.analysis.compare):
    # acc_T{n} (higher is better) or, for a task scored by loss, bpb_T{n} (lower is better).
    record.update({f"{'bpb' if loss else 'acc'}_T{length}": value for length, value in scores.items()})
    # acc_beyond_T{n}: only the items whose evidence lies past the training length, the extrapolation figure
    # that the overall acc_T{n} can hide (a model that fails past L still scores the items within it).
    record.update(
        {
            f"acc_beyond_T{e['eval_len']}": e["beyond_train"]
            for e in by_len
            if e.get("beyond_train") is not None
        }
    )
    return record
