"""ActivityNet-format result files: round trip, format, and every kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import grouped_by_video
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wtal.data.segments import SegmentTable
from wtal.errors import WtalInputError
from wtal.evaluation.results import read_results, result_file_order, results_to_json, write_results

CLASSES = ["BaseballPitch", "CliffDiving", "Diving", "Shotput"]
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def detection(draw):
    start = draw(finite)
    return (draw(st.text(min_size=1, max_size=8)), draw(st.sampled_from(CLASSES)), start,
            start + draw(st.floats(0, 1e4)), draw(finite))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(detection(), max_size=30))
def test_round_trip(tmp_path, rows):
    path = tmp_path / "pred.json"
    table = SegmentTable.from_rows(CLASSES, rows)
    write_results(path, table, external_data={"used": False}, version="v9")
    back = read_results(path, classes=CLASSES)
    assert back.classes == tuple(CLASSES)
    assert back.rows() == grouped_by_video(table.rows())  # floats survive exactly
    assert back.rows() == table.select(result_file_order(table.video)).rows()
    data = json.loads(path.read_text())
    assert data["version"] == "v9" and data["external_data"] == {"used": False}
    assert set(data["results"]) == {r[0] for r in rows}


def test_format_and_default_classes(tmp_path):
    table = SegmentTable.from_rows(CLASSES, [("v1", "Diving", 1.5, 3.25, 0.9), ("v2", "Shotput", 0.0, 2.0, 0.1),
                                             ("v1", "CliffDiving", 4.0, 5.0, 0.5)])
    js = results_to_json(table)
    assert js == {"version": "wtal-0.1", "external_data": {}, "results": {
        "v1": [{"label": "Diving", "score": 0.9, "segment": [1.5, 3.25]},
               {"label": "CliffDiving", "score": 0.5, "segment": [4.0, 5.0]}],
        "v2": [{"label": "Shotput", "score": 0.1, "segment": [0.0, 2.0]}]}}
    path = write_results(tmp_path / "sub" / "pred.json", table)
    assert path.is_file() and not list(path.parent.glob(".*tmp"))  # atomic: no temporary left behind
    back = read_results(path)
    assert back.classes == ("CliffDiving", "Diving", "Shotput")  # sorted labels of the file
    assert [r[1] for r in back.rows()] == ["Diving", "CliffDiving", "Shotput"]
    # version and external_data may be missing on reading
    minimal = tmp_path / "minimal.json"
    minimal.write_text(json.dumps({"results": {"v": [{"label": "Diving", "score": 1, "segment": [0, 1]}]}}))
    assert len(read_results(minimal, CLASSES)) == 1


def test_write_refuses_non_finite(tmp_path):
    table = SegmentTable.from_rows(CLASSES, [("v", "Diving", 0.0, 1.0, float("nan"))])
    with pytest.raises(WtalInputError, match="non-finite"):
        write_results(tmp_path / "p.json", table)
    assert not (tmp_path / "p.json").exists()


def _write(tmp_path, text: str):
    path = tmp_path / "pred.json"
    path.write_text(text)
    return path


def _entry(**over):
    e = {"label": "Diving", "score": 0.5, "segment": [1.0, 2.0]}
    e.update(over)
    return e


@pytest.mark.parametrize(("text", "message"), [
    ('{"results": {"v": [', "malformed JSON"),
    ("[1, 2]", 'no "results"'),
    ('{"results": []}', 'no "results"'),
    ('{"results": {"v": {"label": "Diving"}}}', "must be a list"),
    (json.dumps({"results": {"v": [{"label": "Diving", "segment": [0, 1]}]}}), "lacks label, score or segment"),
    ('{"results": {"v": [{"label": "Diving", "score": NaN, "segment": [0, 1]}]}}', "not a finite number"),
    ('{"results": {"v": [{"label": "Diving", "score": Infinity, "segment": [0, 1]}]}}', "not a finite number"),
    (json.dumps({"results": {"v": [_entry(score="high")]}}), "not a finite number"),
    (json.dumps({"results": {"v": [_entry(score=True)]}}), "not a finite number"),
    (json.dumps({"results": {"v": [_entry(segment=[0, 1, 2])]}}), "is not \\[start, end\\]"),
    (json.dumps({"results": {"v": [_entry(segment=["0", "1"])]}}), "is not \\[start, end\\]"),
    ('{"results": {"v": [{"label": "Diving", "score": 1, "segment": [0, NaN]}]}}', "is not \\[start, end\\]"),
    (json.dumps({"results": {"v": [_entry(segment=[3.0, 2.0])]}}), "ends before it starts"),
    (json.dumps({"results": {"v": [_entry(label=3)]}}), "not a class name"),
    (json.dumps({"results": {"v": [_entry(label="Surfing")]}}), "unknown class label 'Surfing'"),
])
def test_bad_files_raise_with_file_and_fix(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(WtalInputError, match=message) as info:
        read_results(path, classes=CLASSES)
    assert info.value.path == str(path) and info.value.fix
    assert str(path) in str(info.value) and "fix:" in str(info.value)


def test_unknown_label_names_video_and_classes(tmp_path):
    path = _write(tmp_path, json.dumps({"results": {"vid_7": [_entry(), _entry(label="Surfing")]}}))
    with pytest.raises(WtalInputError) as info:
        read_results(path, classes=CLASSES)
    assert info.value.video == "vid_7" and "'BaseballPitch'" in info.value.fix


def test_missing_file(tmp_path):
    with pytest.raises(WtalInputError, match="not found"):
        read_results(tmp_path / "nope.json")


def test_empty_results_give_empty_table(tmp_path):
    path = _write(tmp_path, json.dumps({"version": "x", "results": {"v": []}, "external_data": {}}))
    table = read_results(path, classes=CLASSES)
    assert len(table) == 0 and table.classes == tuple(CLASSES)
    assert np.asarray(table.score).dtype == np.float64
