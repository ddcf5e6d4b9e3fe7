"""The CAS file: class activation sequences of any model, input of ``wtal localize`` and ``wtal pseudolabel``.

Format: one numpy ``.npz`` archive (written with ``np.savez``; readable without pickle) holding

=================  ==========================  ============================================================
key                array                       meaning
=================  ==========================  ============================================================
``VIDEO``          ``(T, C)`` float            CAS of video ``VIDEO``: one row per snippet, one column per
                                               class (any scale: probabilities, attention-weighted
                                               scores or logits)
``VIDEO/score``    ``(C,)`` float, optional    video-level class scores, used to gate classes; give them
                                               for every video or for none
``__classes__``    ``(C,)`` str, required      class names, in column order
``__fps__``        scalar float, optional      snippets per second (default 25/16 = 1.5625, I3D features
                                               of 16-frame snippets at 25 fps)
=================  ==========================  ============================================================

Video names must not start with ``__`` or contain ``/``. Snippet ``t`` covers seconds
``[t / fps, (t + 1) / fps)``. Videos keep the order of the archive.
"""

from __future__ import annotations

import zipfile
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wtal.atomic import write_atomic
from wtal.data.timebase import I3D_SNIPPETS_PER_SECOND
from wtal.errors import WtalInputError

CLASSES_KEY = "__classes__"
FPS_KEY = "__fps__"
SCORE_SUFFIX = "/score"

EXPECTED = "a numpy .npz archive (a zip file of .npy arrays, as numpy.savez writes)"
WRITE_FIX = "pass the CAS file written by 'wtal predict --cas', or write one with numpy.savez (see the CAS file format)"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local file header; an empty zip's end record
_NPY_MAGIC = b"\x93NUMPY"
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def write_cas_file(path: str | Path, cas: Mapping[str, np.ndarray], classes: Sequence[str],
                   snippets_per_second: float = I3D_SNIPPETS_PER_SECOND,
                   scores: Mapping[str, np.ndarray] | None = None) -> Path:
    """Validate and write a CAS file atomically; returns its path."""
    classes = [str(c) for c in classes]
    _check_unique(classes, path)
    arrays: dict[str, np.ndarray] = {}
    for name, video_cas in cas.items():
        if name.startswith("__") or "/" in name:
            raise WtalInputError(f"video name {name!r} cannot be stored in a CAS file", path=path, video=name,
                                 fix="video names must not start with '__' or contain '/'")
        arrays[name] = _check_cas(video_cas, len(classes), path, name)
        if scores is not None:
            if name not in scores:
                raise WtalInputError("no video scores for this video", path=path, video=name,
                                     fix="give scores for every video, or pass scores=None")
            arrays[name + SCORE_SUFFIX] = _check_scores(scores[name], len(classes), path, name)
    _check_rate(snippets_per_second, path)
    if not cas:
        raise WtalInputError("no videos to write", path=path)
    arrays[CLASSES_KEY] = np.array(classes, dtype=str)
    arrays[FPS_KEY] = np.float64(snippets_per_second)
    return write_atomic(path, lambda fh: np.savez(fh, **arrays), binary=True)


def read_cas_file(path: str | Path
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, list[str], float]:
    """``(cas, scores or None, classes, snippets_per_second)`` from a validated CAS file (float64 arrays)."""
    path = Path(path)
    if not path.is_file():
        raise WtalInputError("CAS file not found", path=path,
                             fix="pass the .npz written by 'wtal predict --cas'")
    entries = _read_arrays(path)
    if CLASSES_KEY not in entries:
        raise WtalInputError(f"missing {CLASSES_KEY!r} (the class names)", path=path,
                             fix=f"add {CLASSES_KEY}=np.array([...class names...]) in CAS column order")
    names = entries.pop(CLASSES_KEY)
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) < 1:
        raise WtalInputError(f"{CLASSES_KEY!r} must be a 1-D array of strings, got {names.dtype} "
                             f"{names.shape}", path=path)
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names.tolist()]
    _check_unique(classes, path)
    rate = I3D_SNIPPETS_PER_SECOND
    if FPS_KEY in entries:
        fps = entries.pop(FPS_KEY)
        if fps.size != 1 or fps.dtype.kind not in "fiu":
            raise WtalInputError(f"{FPS_KEY!r} must be one number (snippets per second), got {fps.dtype} "
                                 f"{fps.shape}", path=path)
        rate = float(fps.reshape(-1)[0])
        _check_rate(rate, path)
    reserved = [k for k in entries if k.startswith("__")]
    if reserved:
        raise WtalInputError(f"unknown reserved key(s) {reserved}", path=path,
                             fix=f"only {CLASSES_KEY!r} and {FPS_KEY!r} may start with '__'")
    cas = {k: _check_cas(v, len(classes), path, k)
           for k, v in entries.items() if not k.endswith(SCORE_SUFFIX)}
    if not cas:
        raise WtalInputError("the CAS file holds no videos", path=path,
                             fix="store one (T, C) array per video")
    score_keys = [k for k in entries if k.endswith(SCORE_SUFFIX)]
    for key in score_keys:
        if key[: -len(SCORE_SUFFIX)] not in cas:
            raise WtalInputError(f"scores {key!r} belong to no video in the file", path=path,
                                 fix="name video scores VIDEO/score after a stored video")
    if not score_keys:
        return cas, None, classes, rate
    missing = [v for v in cas if v + SCORE_SUFFIX not in entries]
    if missing:
        raise WtalInputError(f"video scores are given for some videos but not for {len(missing)} others",
                             path=path, video=missing[0], fix="give VIDEO/score for every video, or for none")
    scores = {v: _check_scores(entries[v + SCORE_SUFFIX], len(classes), path, v) for v in cas}
    return cas, scores, classes, rate


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the archive at ``path``, by key; WtalInputError saying what the file or key is."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head.startswith(_ZIP_MAGIC):
        fix = ("store one array per video in an .npz (numpy.savez)" if head.startswith(_NPY_MAGIC)
               else WRITE_FIX)
        raise WtalInputError(f"this is {describe_content(head)}, not {EXPECTED}", path=path, fix=fix)
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise WtalInputError(f"this is a damaged or truncated zip archive, not a readable .npz ({exc})",
                             path=path, fix=WRITE_FIX) from None
    with archive:
        entries = {}
        for key in archive.files:
            try:
                entries[key] = archive[key]
            except _READ_ERRORS as exc:
                raise _unreadable_array(archive, key, exc, path) from None
    return entries


def describe_content(head: bytes) -> str:
    """What a file that starts with ``head`` (its first bytes) is, in words, e.g. 'a text file starting with ...'."""
    if not head:
        return "an empty file"
    if head.startswith(_NPY_MAGIC):
        return "a single numpy .npy array"
    for magic, what in ((b"\x80", "a Python pickle"), (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
                        (b"\x1f\x8b", "a gzip file")):
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # maybe a character cut at the end of the excerpt
        text = head[:exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
    if text and all(c.isprintable() or c.isspace() for c in text):
        first_line = text.strip().splitlines()[0] if text.strip() else ""
        return f"a text file starting with {first_line[:40]!r}"
    return f"a binary file of unknown format (first bytes {head[:8].hex(' ')})"


def _unreadable_array(archive, key: str, exc: Exception, path: Path) -> WtalInputError:
    """The error for an archive member that numpy cannot load without pickle, or at all."""
    dtype = _member_dtype(archive, key)
    if (dtype is not None and dtype.hasobject) or "pickle" in str(exc).lower():
        what = "class names" if key == CLASSES_KEY else "numbers"
        fix = ("store the class names as a str array: np.array(names, dtype=str)" if key == CLASSES_KEY
               else "store numeric arrays, e.g. np.asarray(cas, dtype=np.float32)")
        return WtalInputError(f"array {key!r} holds Python objects (dtype object), not {what}", path=path,
                              fix=fix)
    return WtalInputError(f"array {key!r} cannot be read ({exc})", path=path,
                          fix="the archive is damaged: write the CAS file again (wtal predict --cas, numpy.savez)")


def _member_dtype(archive, key: str) -> np.dtype | None:
    """The dtype in the .npy header of archive member ``key``; None when the header cannot be read."""
    member = key + ".npy" if key + ".npy" in archive.zip.namelist() else key
    try:
        with archive.zip.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            return read_header(fh)[2]
    except _READ_ERRORS:
        return None


def _check_unique(classes: list[str], path) -> None:
    repeated = [c for c, n in Counter(classes).items() if n > 1]
    if repeated:
        raise WtalInputError(f"duplicate class names in {CLASSES_KEY!r}: {repeated}", path=path,
                             fix="give every CAS column its own class name")


def _check_cas(x, n_classes: int, path, video: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise WtalInputError(f"the CAS must be numeric, got dtype {arr.dtype}", path=path, video=video)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise WtalInputError(f"the CAS must be a (T, C) array with T >= 1, got shape {arr.shape}",
                             path=path, video=video, fix="store one (snippets, classes) array per video")
    if arr.shape[1] != n_classes:
        raise WtalInputError(f"the CAS has {arr.shape[1]} columns but there are {n_classes} class names",
                             path=path, video=video, fix="give one class name per CAS column")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise WtalInputError("the CAS contains NaN or inf", path=path, video=video,
                             fix="check the model output before writing the CAS file")
    return arr


def _check_scores(x, n_classes: int, path, video: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu" or arr.shape != (n_classes,):
        raise WtalInputError(f"video scores must be a ({n_classes},) numeric array, got {arr.dtype} "
                             f"{arr.shape}", path=path, video=video)
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise WtalInputError("the video scores contain NaN or inf", path=path, video=video)
    return arr


def _check_rate(rate: float, path) -> None:
    if not (np.isfinite(rate) and rate > 0):
        raise WtalInputError(f"snippets per second must be a positive number, got {rate!r}", path=path,
                             fix=f"store {FPS_KEY} = 25/16 for I3D features of 16-frame snippets at 25 fps")
