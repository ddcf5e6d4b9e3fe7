"""Every shipped detection config reproduces its recorded fixed-seed short run (losses and metrics); a
student config, its short run taught by its teacher config's short run.

The records in ``data/golden_runs.json`` (I3D rgb/flow configs) and ``data/golden_runs_clip.json`` (configs
that also read a clip stream) were made by ``golden_runs.py``; refactorings must keep them.
"""

from __future__ import annotations

import json

import pytest
from golden_runs import (
    CLIP_GOLDEN_FILE,
    GOLDEN_FILE,
    STUDENT_CONFIGS,
    STUDENT_GOLDEN_FILE,
    clip_configs,
    detection_configs,
    record_all,
    record_students,
)

RECORDED = json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))
RECORDED_CLIP = json.loads(CLIP_GOLDEN_FILE.read_text(encoding="utf-8"))
RECORDED_STUDENTS = json.loads(STUDENT_GOLDEN_FILE.read_text(encoding="utf-8"))


def test_every_shipped_config_has_a_record():
    assert sorted(RECORDED) == sorted(detection_configs())
    assert sorted(RECORDED_CLIP) == sorted(clip_configs())
    assert {"rskp_vlp", "rskp_vlp_gaufuse", "basnet_vlp"} <= set(RECORDED_CLIP)


@pytest.fixture(scope="module")
def fresh_runs() -> dict[str, dict]:
    return record_all(sorted(RECORDED))


@pytest.fixture(scope="module")
def fresh_clip_runs() -> dict[str, dict]:
    return record_all(sorted(RECORDED_CLIP), clip=True)
def test_every_shipped_student_config_has_a_record():
    assert sorted(RECORDED_STUDENTS) == sorted(STUDENT_CONFIGS)
    assert not set(STUDENT_CONFIGS) & set(RECORDED)
    assert set(STUDENT_CONFIGS.values()) <= set(RECORDED)  # every teacher config has its own record


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_shipped_config_reproduces_its_recorded_run(fresh_runs, name):
    assert_same_run(fresh_runs[name], RECORDED[name])


@pytest.mark.parametrize("name", sorted(RECORDED_CLIP))
def test_shipped_clip_config_reproduces_its_recorded_run(fresh_clip_runs, name):
    assert_same_run(fresh_clip_runs[name], RECORDED_CLIP[name])


@pytest.mark.parametrize("name", sorted(RECORDED_STUDENTS))
def test_shipped_student_config_reproduces_its_recorded_run(name):
    assert_same_run(record_students([name])[name], RECORDED_STUDENTS[name])


def assert_same_run(got: dict, want: dict) -> None:
    assert got["epoch"] == want["epoch"]
    assert len(got["losses"]) == len(want["losses"])
    for epoch, (g, w) in enumerate(zip(got["losses"], want["losses"], strict=True)):
        assert sorted(g) == sorted(w), f"epoch {epoch}: loss terms"
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-7), f"epoch {epoch} loss {key}"
    assert got["val"] == pytest.approx(want["val"], abs=1e-6)
    assert got["test"]["mAP"] == pytest.approx(want["test"]["mAP"], abs=1e-6)
    assert got["test"]["average"] == pytest.approx(want["test"]["average"], abs=1e-6)
    assert got["test"]["classification_map"] == pytest.approx(want["test"]["classification_map"], abs=1e-6)
