import json

import pandas as pd

from bench import results


def test_append_and_load_round_trip(tmp_path):
    path = tmp_path / results.RESULTS
    for i in range(3):
        results.append(
            path, {"key": f"k{i}", "status": "ok", "tokens_per_s": 10.0 * i, "samples_s": [1.0, 2.0]}
        )
    frame = results.load(tmp_path)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["key"]) == ["k0", "k1", "k2"]
    assert frame["samples_s"][0] == [1.0, 2.0]


def test_torn_last_line_is_ignored_and_not_glued_to_the_next(tmp_path):
    path = tmp_path / results.RESULTS
    results.append(path, {"key": "a", "status": "ok"})
    with open(path, "a") as f:
        f.write('{"key": "b", "sta')  # a writer killed mid-line
    assert [r["key"] for r in results.read_records(path)] == ["a"]
    results.append(path, {"key": "c", "status": "ok"})
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["key"] == "c"
    assert lines[0] == json.dumps({"key": "a", "status": "ok"})


def test_a_rerun_cell_replaces_its_earlier_row(tmp_path):
    path = tmp_path / results.RESULTS
    results.append(path, {"key": "a", "status": "oom"})
    results.append(path, {"key": "a", "status": "ok"})
    frame = results.load(path)
    assert list(frame["status"]) == ["ok"]
