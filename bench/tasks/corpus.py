"""Real long documents for language modelling, read from disk: nothing is downloaded at run time.

Sources (``corpus`` in the task's args):

- ``"python-stdlib"`` (the default): the running interpreter's standard-library ``.py`` files, tests and
  site-packages left out: real, long, structured text, in which names defined early are used far later,
  present on every machine;
- ``"path/to/dir-or-file"``: any local text, a folder of ``.txt`` / ``.md`` / ``.py`` / ``.jsonl`` files (a
  ``.jsonl`` file holds one document per line, in its ``text`` field) or one such file;
- ``"hf:NAME"`` (``"hf:NAME:SPLIT"``): a Hugging Face dataset that is available locally (a directory saved
  with ``save_to_disk``, or a name in the local cache), read when the ``datasets`` package is installed,
  with datasets and huggingface_hub held offline while it loads (a name not cached is an error, never a
  download); its ``text`` column is the documents.

Every document gets a split by a stable hash of its name (its path relative to the corpus, or its index in
a file or dataset): train / validation / test, the same on every machine and run. A corpus's
``fingerprint`` (for the standard library: the Python version and a hash of the file list) goes into the
cells that use it, so runs on different corpora are never compared as if they were the same.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError

STDLIB = "python-stdlib"
TEXT_SUFFIXES = (".txt", ".md", ".py", ".jsonl")
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
SPLITS = {"train": (0.0, 0.90), "validation": (0.90, 0.95), "test": (0.95, 1.0)}


@dataclass(frozen=True)
class Document:
    name: str  # stable within its corpus: what the split is drawn from
    data: bytes


def split_of(name: str) -> str:
    """train / validation / test by a stable hash of the document's name."""
    u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return next(split for split, (lo, hi) in SPLITS.items() if lo <= u < hi)


@dataclass(frozen=True)
class Corpus:
    source: str
    documents: tuple[Document, ...]
    fingerprint: str  # what a result on this corpus depends on: changes with the documents

    def split(self, split: str) -> list[Document]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        return [d for d in self.documents if split_of(d.name) == split]


def _digest(items: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _stdlib() -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    # os.walk prunes the skipped folders: site-packages alone can hold a hundred thousand files
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in SKIP_DIRS]
        files += [Path(folder) / name for name in names if name.endswith(".py")]
    files.sort()
    docs = tuple(Document(p.relative_to(root).as_posix(), p.read_bytes()) for p in files)
    version = ".".join(map(str, sys.version_info[:3]))
    listing = _digest(d.name.encode() for d in docs)
    return Corpus(STDLIB, docs, f"python-{version}-{listing}")


def _jsonl(path: Path, prefix: str) -> list[Document]:
    docs = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise BenchError(
                f"{path}:{number}: a .jsonl corpus needs one JSON object with a 'text' a line"
            ) from None
        docs.append(Document(f"{prefix}#{number}", str(text).encode()))
    return docs


def _local(source: str) -> Corpus:
    path = Path(source)
    if not path.exists():
        raise BenchError(
            f"corpus {source!r}: no such file or directory (or use 'python-stdlib' or 'hf:NAME')"
        )
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
    docs: list[Document] = []
    for file in files:
        name = file.name if path.is_file() else file.relative_to(path).as_posix()
        docs += _jsonl(file, name) if file.suffix == ".jsonl" else [Document(name, file.read_bytes())]
    if not docs:
        raise BenchError(f"corpus {source!r} holds no documents ({', '.join(TEXT_SUFFIXES)} files)")
    return Corpus(source, tuple(docs), "local-" + _digest(d.name.encode() + d.data for d in docs))


@contextlib.contextmanager
def _offline(datasets):
    """datasets and huggingface_hub in offline mode for the duration: the local cache or nothing."""
    import huggingface_hub.constants as hub

    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


def _hf(source: str) -> Corpus:
    name, _, split = source.removeprefix("hf:").partition(":")
    try:
        import datasets
    except ImportError:
        raise BenchError(f"corpus {source!r} needs the 'datasets' package: pip install datasets") from None
    try:
        with _offline(datasets):
            if Path(name).is_dir():
                data = datasets.load_from_disk(name)
            else:
                data = datasets.load_dataset(name, split=split or "train")
    except Exception as err:  # noqa: BLE001 - nothing is downloaded at run time: say what is missing
        raise BenchError(f"corpus {source!r} is not available locally: {type(err).__name__}: {err}") from None
    if isinstance(data, datasets.DatasetDict):
        data = data[split or next(iter(data))]
    if "text" not in data.column_names:
        raise BenchError(f"corpus {source!r} has no 'text' column (columns: {', '.join(data.column_names)})")
    docs = tuple(Document(f"{name}#{i}", str(t).encode()) for i, t in enumerate(data["text"]))
    return Corpus(source, docs, f"hf-{name}-{data._fingerprint}")


@functools.cache
def load_corpus(source: str = STDLIB) -> Corpus:
    if source == STDLIB:
        return _stdlib()
    if source.startswith("hf:"):
        return _hf(source)
    return _local(source)
