"""Feature sources: one protocol over the W-TALC bundle and the per-video folders, and how to open them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from wtal.data.activitynet import read_activitynet_json
from wtal.data.annotations import AnnotationSet
from wtal.data.streams import DEFAULT_MAX_LENGTH_MISMATCH
from wtal.data.wtalc import FEATURE_SUFFIX, WtalcSource, read_wtalc_annotations
from wtal.errors import WtalInputError

GT_FILE = "gt.json"
FEATURES_DIR = "features"
_EXPECTED = ("expected a W-TALC bundle (<Name>-I3D-JOINTFeatures.npy with its annotation .npy files) or a "
             "per-video folder (gt.json + features/{train,test}/{rgb,flow}/VIDEO.npy)")


@runtime_checkable
class FeatureSource(Protocol):
    """Annotations plus per-video features as named streams (``rgb``, ``flow``, extras such as ``clip``)."""

    path: Path
    annotations: AnnotationSet
    snippets_per_second: float

    def stream_widths(self) -> dict[str, int]:
        """Every stream the source holds, with its width, ``rgb`` and ``flow`` first."""
        ...

    def features(self, name: str, streams: Sequence[str]) -> dict[str, np.ndarray]:
        """``{stream: (T, D_stream) float32}`` of video ``name``, checked: finite, ``T > 0``, widths as
        ``stream_widths``, the same ``T`` for every stream (a difference of at most the source's
        ``max_length_mismatch`` snippets truncated to the shortest)."""
        ...

    @property
    def class_text_path(self) -> Path:
        """Where the source reads ``class_text.npy`` (``wtal embed-classes`` writes it there)."""
        ...

    def class_text(self) -> np.ndarray | None:
        """Class-name text embeddings ``(C, E)`` (``class_text.npy``), or None when the data has none."""
        ...


def _is_folder_source(path: Path) -> bool:
    return (path / GT_FILE).is_file() and (path / FEATURES_DIR).is_dir()


def open_source(path: str | Path, snippets_per_second: float | None = None,
                max_length_mismatch: int = DEFAULT_MAX_LENGTH_MISMATCH) -> FeatureSource:
    """Open a W-TALC bundle (folder or feature file) or a per-video feature folder.

    ``snippets_per_second`` overrides the rate (default: the per-video folder's ``gt.json`` value, else
    25/16); streams of a video that differ by at most ``max_length_mismatch`` snippets are truncated to the
    shortest (:class:`wtal.data.streams.LengthRule`).
    """
    from wtal.data.folders import FolderSource  # local: folders.py imports split_subsets from here

    path = Path(path)
    if not path.exists():
        raise WtalInputError("data path not found", path=path,
                             fix=f"pass the right --data folder; {_EXPECTED}")
    if path.is_dir() and _is_folder_source(path):
        return FolderSource(path, snippets_per_second, max_length_mismatch)
    if path.name.endswith(FEATURE_SUFFIX) or (path.is_dir() and any(path.glob(f"*{FEATURE_SUFFIX}"))):
        return WtalcSource(path, snippets_per_second, max_length_mismatch)
    inner = _sources_below(path) if path.is_dir() else []
    if inner:
        raise WtalInputError(f"not a feature source itself, but it contains {len(inner)}: "
                             + ", ".join(str(p) for p in inner), path=path,
                             fix=f"pass one of them as --data, e.g. --data {inner[0]}")
    raise WtalInputError(f"not a feature source: {_EXPECTED}", path=path, fix="pass the right --data folder")


def _sources_below(path: Path) -> list[Path]:
    """Sub-folders of ``path`` that are feature sources (e.g. `wtal synth`'s ``wtalc/`` and ``folders/``)."""
    return [d for d in sorted(path.iterdir())
            if d.is_dir() and (_is_folder_source(d) or any(d.glob(f"*{FEATURE_SUFFIX}")))]


def load_annotations(path: str | Path) -> AnnotationSet:
    """Annotations from a gt.json / ActivityNet JSON file, a W-TALC annotation folder, a W-TALC bundle (folder
    or feature file) or a per-video folder (its gt.json). Features are not loaded."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return read_activitynet_json(path)
    if path.is_dir() and (path / GT_FILE).is_file():
        return read_activitynet_json(path / GT_FILE)
    if path.is_dir() and (path / "classlist.npy").is_file():
        return read_wtalc_annotations(path)
    if path.name.endswith(FEATURE_SUFFIX) or (path.is_dir() and any(path.glob(f"*{FEATURE_SUFFIX}"))):
        return WtalcSource(path).annotations
    raise WtalInputError("no annotations found" if path.exists() else "annotation path not found", path=path,
                         fix="pass a gt.json / ActivityNet JSON file, a W-TALC annotation folder "
                             "(classlist.npy, ...), a W-TALC bundle or a per-video feature folder")


def split_subsets(annotations: AnnotationSet) -> tuple[str, str]:
    """``(train_subset, test_subset)`` of an annotation set.

    With a ``test`` subset (THUMOS14): test is ``test`` and train is ``training``/``train`` when present, else
    ``validation``. Without one (ActivityNet): test is ``validation`` and train is ``training``/``train``.
    """
    present = set(annotations.subsets())
    test = "test" if "test" in present else "validation"
    train_choices = ("training", "train", "validation") if test == "test" else ("training", "train")
    train = next((s for s in train_choices if s in present), None)
    if test not in present or train is None:
        raise WtalInputError(f"cannot tell the training and evaluation subsets apart from {sorted(present)}",
                             path=annotations.source,
                             fix="name the subsets 'validation'/'test' (THUMOS14) or 'training'/'validation' "
                                 "(ActivityNet)")
    return train, test
