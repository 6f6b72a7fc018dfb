"""``python -m bench validate``: every backend of every model against its slow reference; writes
VALIDATE.md and validate.json.

Exit codes: 0 every backend within tolerance; 1 a backend out of tolerance or failing; 2 bad input,
nothing to validate (a model without a reference backend), or the reference itself failing (the model's
error, named); 3 an internal error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from bench.errors import BenchError

HELP = "check every backend of every model against its slow reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", help="comma-separated names (default: all registered)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--seq-len", type=int, default=100, help="not a multiple of the chunk sizes, on purpose"
    )
    parser.add_argument("--out", help="directory for VALIDATE.md and validate.json")


def run(args: argparse.Namespace) -> int:
    from bench.analysis.backend_check_report import validation_markdown
    from bench.measure.backend_check import SHAPE, TOLERANCE, all_ok, check_backends, validated
    from bench.registry import describe_backends, get_factory, reference_backend
    from bench.results.outputs import claim_folder
    from bench.running import environment

    if args.seq_len < 2:
        raise BenchError(f"--seq-len must be >= 2 (a model must see more than one token), got {args.seq_len}")
    models = [x.strip() for x in args.models.split(",") if x.strip()] if args.models is not None else None
    if models == []:
        raise BenchError(f"--models {args.models!r} lists nothing; leave it out to validate every model")
    for name in models or []:
        get_factory(name)  # an unknown name is bad input, found before anything runs
        if reference_backend(name) is None:
            raise BenchError(
                f"--models {name!r} declares no reference backend, so there is nothing to validate it "
                "against (declare one: reference= at registration, or build.reference_backend)"
            )
        if not describe_backends(name):
            raise BenchError(
                f"--models {name!r} declares no backends to validate (build.available_backends, or backends= "
                "at registration)"
            )
    run_dir = Path(args.out) if args.out else Path("runs") / f"validate-{dt.datetime.now():%Y%m%d-%H%M%S}"
    folder = claim_folder(run_dir, "--out")  # checked and made writable before the validation runs
    folder.check_replaceable(OUTPUTS)
    folder.create()
    try:
        device, rows = check_backends(models, args.device, args.seq_len)
        if not validated(rows):
            raise BenchError(
                "nothing was validated: no model declares a reference backend and backends to check "
                "against it"
            )
    except BaseException:
        folder.discard()  # bad input, a model's error or an interrupt: nothing is left behind
        raise
    manifest = environment.collect()
    manifest["device"] = device.type
    folder.write_text(
        "validate.json", json.dumps({"manifest": manifest, "rows": rows}, indent=2, default=str)
    )
    text = validation_markdown(rows, manifest, SHAPE, TOLERANCE)
    folder.write_text("VALIDATE.md", text)
    print(text)
    print(f"saved: {run_dir / 'VALIDATE.md'}")
    return 0 if all_ok(rows) else 1


OUTPUTS = ("validate.json", "VALIDATE.md")
