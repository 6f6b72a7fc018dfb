"""Entry point of the process that measures one cell: ``python -m bench.worker RESULT_PATH`` with the
cell as JSON on stdin. The result is written to a file, not stdout, so model output cannot corrupt it."""

from __future__ import annotations

import json
import os
import sys

from bench.cells import Cell
from bench.execute import run_in_process


def main() -> None:
    out_path = sys.argv[1]
    cell = Cell.model_validate_json(sys.stdin.read())
    record = run_in_process(cell, isolated=True)
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, out_path)  # the parent sees a whole file or none


if __name__ == "__main__":
    main()
