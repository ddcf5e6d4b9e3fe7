"""The user documentation: the README's size and its two commands, links between the pages, and the examples of
docs/extending.md, which must run as written."""

from __future__ import annotations

import json
import re
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_engine_data import write_tiny

from wtal.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# every page under docs/, the per-method pages in docs/methods/ and docs/results/ included
PAGES = [README, *sorted((REPO / "docs").rglob("*.md")), REPO / "src" / "wtal" / "configs" / "README.md"]
README_LIMIT = 8000
FRESH_MACHINE_COMMANDS = ('pip install "torch==2.13.0" -e . && wtal demo',
                          'pip install "torch==2.13.0" -e ".[dev]" && python -m pytest')

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
EXAMPLE_FILE = re.compile(r"<!-- file: (\S+) -->\n```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def prose(text: str) -> str:
    """Markdown without fenced code blocks (links and headings inside them are not links and headings)."""
    return FENCE.sub("", text)


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, code marks and punctuation dropped, spaces become hyphens."""
    text = heading.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(prose(page.read_text(encoding="utf-8"))):
        slug = heading_anchor(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def relative_links(page: Path) -> list[str]:
    text = INLINE_CODE.sub("", prose(page.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_heading_anchors_follow_githubs_rule():
    assert heading_anchor("Schedule rescaling (`--epochs`)") == "schedule-rescaling---epochs"
    assert heading_anchor("RSKP's test recipe") == "rskps-test-recipe"
    assert heading_anchor("`keep_freed_memory`") == "keep_freed_memory"


def test_readme_is_a_short_guide_with_the_two_fresh_machine_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text) <= README_LIMIT, f"README.md has {len(text)} characters; move detail to docs/"
    for command in FRESH_MACHINE_COMMANDS:
        assert f"```bash\n{command}\n```" in text, command
    assert FRESH_MACHINE_COMMANDS[1] in (REPO / ".ci" / "run").read_text(encoding="utf-8")  # CI runs the same


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_documentation_links_every_page_of_docs_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    assert set((REPO / "docs").glob("*.md")) <= linked


@pytest.fixture()
def examples(tmp_path, monkeypatch) -> Path:
    """The example files of docs/extending.md, written into a folder that is the working directory and on
    sys.path (as ``PYTHONPATH=.`` puts it in the page's commands)."""
    text = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    files = EXAMPLE_FILE.findall(text)
    assert {name for name, _ in files} >= {"my_models.py", "lsemil.yaml", "add_stream.py", "my_plugins.py",
                                           "rgb_student.yaml", "my_task.py", "top1.yaml"}
    for name, body in files:
        (tmp_path / name).write_text(body, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("my_models", "my_plugins", "my_task"):
        sys.modules.pop(module, None)


def _train(config: str, data: Path, out: str, *overrides: str) -> dict:
    args = ["train", "--config", config, "--data", str(data), "--out", out, "--epochs", "2",
            "--set", "train.progress=false"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    return json.loads((Path(out) / "report.json").read_text(encoding="utf-8"))


def test_the_extending_examples_run_as_written(examples, tmp_path, monkeypatch):
    data = write_tiny(tmp_path / "DATA")
    bundle = data["wtalc"].parent if data["wtalc"].is_file() else data["wtalc"]

    # a model defined outside wtal
    report = _train("lsemil.yaml", bundle, "RUN1")
    assert report["model"] == "my_models:LSEMIL" and report["test"]["videos"] > 0

    # a stream written beside the bundle, read by the same model
    monkeypatch.setattr(sys, "argv", ["add_stream.py", str(bundle)])
    runpy.run_path("add_stream.py", run_name="__main__")
    _train("lsemil.yaml", bundle, "RUN2", "model.streams=[rgb,rgbdiff]")
    assert json.loads(Path("RUN2/data.json").read_text())["streams"] == {"rgb": 8, "rgbdiff": 8}

    # a plug-in with a jointly trained flow teacher; the rgb student predicts without flow files
    report = _train("rgb_student.yaml", bundle, "RUN3")
    assert report["streams"] == ["rgb"]
    checkpoint = torch.load("RUN3/checkpoints/last.pt", weights_only=True)
    assert checkpoint["teacher"] and "plugin/cas_distill0" in json.loads(
        Path("RUN3/metrics.jsonl").read_text().splitlines()[-1])["loss"]
    folders = data["folders"]
    for split in ("train", "test"):
        shutil.copytree(folders / "features" / split / "rgb", tmp_path / "RGBONLY" / "features" / split / "rgb")
    shutil.copy(folders / "gt.json", tmp_path / "RGBONLY" / "gt.json")
    assert main(["predict", "--run", "RUN3", "--data", "RGBONLY", "--out", "rgb_only.json"]) == 0
    assert main(["predict", "--run", "RUN3", "--out", "with_flow.json"]) == 0
    assert Path("rgb_only.json").read_bytes() == Path("with_flow.json").read_bytes()

    # a task defined outside wtal, trained by the unchanged trainer
    report = _train("top1.yaml", bundle, "RUN4")
    assert report["task"] == "top1" and set(report["test"]) == {"top1", "videos"}
    predictions = json.loads(Path("RUN4/predictions/test.json").read_text())
    assert len(predictions) == report["test"]["videos"]
