"""The training loop of accuracy cells: a fresh model trained for a step budget on seeded batches.

AdamW with warm-up and cosine decay (bench.train.optim), gradient clipping, a fresh batch every step.
The step budget decides: training stops at ``steps``; at a validation whose score has reached
``threshold`` (when the scorer allows an early stop and a threshold is set), under the ``stop_rule``
"converged" only once the convergence check below, applied as if the run ended there, finds its
validation loss no longer falling (stop reason "converged"), under "ceiling" at the first such
validation ("threshold"); or when the loss or the gradient norm stops being finite (status "diverged";
the sweep goes on). ``max_seconds`` is a safety cap
on the wall clock; a run it stops records ``cap_bound`` so that reports show it as such, never as a plain
low score. The final model is validated once more if the last step had no validation: its validation loss
(``val_loss``) is what the learning-rate grid is chosen by.

Convergence is checked, not assumed: the model is also validated at 80% of the budget, and a run whose
validation loss fell over the last 20% of its steps by more than ``STILL_IMPROVING`` of its value (and by
more than ``STILL_IMPROVING_NATS``) records ``still_improving``: it was still learning when the budget
ended, so it ranks learning speed, not what the architecture can learn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bench.scoring import IGNORE, Examples, Validation
from bench.spec.config import TrainSettings
from bench.train.optim import lr_at, make_optimizer
from models.modules.state import detach_state

LOG_POINTS = 200  # loss-curve points kept per run: enough to plot, small enough to store
CHECK_AT = 0.8  # the convergence check compares the validation loss here with the final one
STILL_IMPROVING = 0.01  # a relative fall of the validation loss over the last 20% that counts as learning
STILL_IMPROVING_NATS = 0.01  # and the absolute fall it must also exceed (a loss near 0 halves cheaply)


def convergence(val_loss_curve: list[list[float]], steps: int) -> dict[str, Any]:
    """Whether the run was still improving at its end: the validation loss at the first check at or after
    80% of ``steps`` against the last one (None where there is no such pair)."""
    points = [(s, v) for s, v in val_loss_curve if v is not None and math.isfinite(v)]
    mark = next(((s, v) for s, v in points if s >= CHECK_AT * steps), None)
    if mark is None or not points or points[-1][0] <= mark[0]:
        return {"still_improving": None, "val_loss_drop_last_20pct": None}
    drop = mark[1] - points[-1][1]
    improving = drop > STILL_IMPROVING * mark[1] and drop > STILL_IMPROVING_NATS
    return {"still_improving": improving, "val_loss_drop_last_20pct": drop}


def train(
    model: torch.nn.Module,
    next_batch: Callable[[], Examples],
    validate: Callable[[], Validation],
    s: TrainSettings,
    autocast: Callable[[], Any],
    stops_early: bool,
    score_name: str,
    higher_is_better: bool,
) -> dict[str, Any]:
    """Train ``model`` for the budget in ``s`` on ``next_batch()``; ``validate()`` scores it on the
    validation examples (loss, and the scorer's own figure, named ``score_name`` in the record). Returns
    the run's record: status and what stopped it, steps, time, tokens, the curves, the final validation."""
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, s)
    log_every = max(1, s.steps // LOG_POINTS)
    loss_curve: list[list[float]] = []
    val_curve: list[list[float]] = []  # [step, score]
    val_loss_curve: list[list[float]] = []  # [step, loss]
    window: list[float] = []
    out: dict[str, Any] = {"status": "ok", "stop_reason": "steps"}
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    step = tokens = 0
    check_step = max(1, math.ceil(CHECK_AT * s.steps))

    def check() -> Validation:
        result = validate()
        val_curve.append([step, result.score])
        val_loss_curve.append([step, result.loss])
        return result

    carried = None  # state passing: what the previous batch left, detached
    while step < s.steps:
        inputs, targets, _ = next_batch()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, s)
        with autocast():
            if s.state_passing:
                logits, carried = model(inputs.to(device), state=carried, return_state=True)
                carried = detach_state(carried)  # the gradient stops at the window boundary
            else:
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
        tokens += inputs.numel()
        window.append(value)
        if step % log_every == 0:
            loss_curve.append([step, sum(window) / len(window)])
            window = []
        if step % s.eval_every == 0 or step in (s.steps, check_step):
            score = check().score
            if stops_early and s.threshold is not None and score is not None and score >= s.threshold:
                if s.stop_rule == "ceiling" and step < s.steps:  # at the last step the budget ended it
                    out["stop_reason"] = "threshold"
                    break
                if step < s.steps and convergence(val_loss_curve, step)["still_improving"] is False:
                    out["stop_reason"] = "converged"
                    break
        if step < s.steps and time.perf_counter() - start >= s.max_seconds:
            out["stop_reason"] = "max_seconds"  # the cap bound: the step budget was not reached
            break
    if window:
        loss_curve.append([step, sum(window) / len(window)])
    if out["status"] == "ok" and step and (not val_curve or val_curve[-1][0] != step):
        check()  # the final model
    finished = out["status"] == "ok" and bool(val_curve)
    scores = [v for _, v in val_curve if v is not None]
    best = (max if higher_is_better else min)(scores, default=None)
    seconds = time.perf_counter() - start
    out.update(
        {
            f"val_{score_name}": val_curve[-1][1] if finished else None,
            f"best_val_{score_name}": best,
            "val_loss": val_loss_curve[-1][1] if finished else None,
            # A run the "ceiling" rule stopped is taken as converged: it reached the task's ceiling.
            **(
                {"still_improving": False, "val_loss_drop_last_20pct": None}
                if out["stop_reason"] == "threshold"
                else convergence(val_loss_curve if finished else [], step)
            ),
            "steps_run": step,
            "cap_bound": out["stop_reason"] == "max_seconds",
            "train_seconds": seconds,
            # tokens trained on per second of the training loop (its validations included)
            "train_tokens_per_s": tokens / seconds if seconds > 0 else None,
            # CPU time of this process: on a shared machine, close to what the wall clock would be when quiet
            "train_cpu_seconds": time.process_time() - cpu_start,
            "tokens_seen": tokens,
            "final_loss": loss_curve[-1][1] if loss_curve else None,
            "loss_curve": loss_curve,
            "val_curve": val_curve,
            "val_loss_curve": val_loss_curve,
        }
    )
    return out
