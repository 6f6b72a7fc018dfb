"""Language modelling on real documents: scored by the loss of every target, in bits per byte, by position
in the document (bench/tasks/lm.py).

Validation gives the mean loss (nats per token; what the learning rate is chosen by) and bits per byte.
An evaluation entry holds ``bpb`` (bits per byte: nats / ln 2 / the bytes the targets stand for),
``by_position`` (doubling buckets of the position in the document with their summed nll, tokens and
bytes), ``bpb_beyond_train``, ``gain_from_context``, ``gain_beyond_train`` and
``context_gain_beyond_train`` (the targets past the training length scored with the context cut to the
training length, against the whole document before them; see :func:`evaluate_loss`), and ``n_examples``,
the documents long enough to be scored at that length. Its columns are ``bpb_T{n}``, lower is better.
Training never stops early on a loss.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.scoring.base import IGNORE, Column, Examples, Inference, Scorer, Validation, mean_loss
from bench.scoring.bins import doubling_bounds
from bench.scoring.registry import register_scorer

LN2 = math.log(2)
# gain_from_context compares the loss at positions <= 16 (a document's first tokens, little context) with
# the loss in the last doubling bucket
FIRST_CONTEXT = 16


def bits(nll: torch.Tensor, nbytes: torch.Tensor) -> float | None:
    """Bits per byte of a set of targets: their summed nll in nats / ln 2 / their bytes."""
    total = float(nbytes.sum())
    return float(nll.sum()) / LN2 / total if total else None


def truncated_nll(
    model, data: Examples, full: torch.Tensor, window: int, infer: Inference
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
    nll, finite = infer.nll(model, pieces)
    nll, finite = nll.view(n, len(windows), window), finite.view(n, len(windows)).all(1)
    for j, (a, first) in enumerate(zip(windows, scored_from, strict=True)):
        out[:, first : a + window] = nll[:, j, first - a :]
    return out, finite


def evaluate_loss(
    model, data: Examples, nbytes: torch.Tensor, infer: Inference, train_len: int
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
    nll, finite = infer.nll(model, data)
    length = data.inputs.shape[1]
    truncated, finite_truncated = truncated_nll(model, data, nll, train_len, infer)
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


@register_scorer("loss")
class LossScorer(Scorer):
    section = "lm"
    metric = "bpb"
    higher_is_better = False
    unit = "bits per byte"
    stops_early = False

    def held_out(self, split, n, length, seed, train_len):
        return self.task.examples_with_bytes(split, n, length, seed, train_len)

    def examples_of(self, held) -> Examples:
        return held[0]

    def validate(self, model, held, infer: Inference) -> Validation:
        data, nbytes = held
        nll, finite = infer.nll(model, data)
        loss = mean_loss(nll, finite, data)
        value = bits(nll, nbytes) if math.isfinite(loss) else None
        return Validation(loss, value if value is not None and math.isfinite(value) else math.inf)

    def evaluate(self, model, held, infer: Inference, train_len: int) -> dict[str, Any]:
        data, nbytes = held
        return evaluate_loss(model, data, nbytes, infer, train_len)

    def columns(self, entries: list[dict[str, Any]], train_len: int) -> dict[str, Column]:
        return {f"bpb_T{e['eval_len']}": Column(e.get("bpb"), False, "bits per byte") for e in entries}
