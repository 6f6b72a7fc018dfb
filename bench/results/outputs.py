"""The write policy, in one place: where a command may write, checked before it does any work.

A command writes only into a folder it creates, an empty one, or one it recognises as its own: a folder
where it keeps the list of the files it wrote (``.bench-files.json``), or, from before that list existed,
a run's ``manifest.json`` or a validation's ``validate.json`` as this harness writes them. It never
writes onto one of its own inputs and never replaces a file it did not write. Where it refuses, the error
names the file and the flag to give instead. Every check runs before the work (a sweep's cells, a
validation), so that a refusal costs nothing and leaves the user's files as they were.

A report is rendered into a staging folder first and moved into place only once every file of it may
be, so that no refusal or failure leaves a report half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError

MARKER = ".bench-files.json"
# The files a run or a validation of an earlier version wrote, by name: a recognised folder without the
# list counts these as its own (and the report's plots, *.png).
KNOWN = ("results.jsonl", "manifest.json", "spec.json", "REPORT.md", "validate.json", "VALIDATE.md")
# What a report writes into its folder; checked before a sweep whose report would replace them.
REPORT_FILES = ("REPORT.md", "*.png")


def _json(path: Path):
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _is_manifest(data) -> bool:
    """A manifest as ``bench.running.environment.collect`` writes it (keys a user's file would not share)."""
    return isinstance(data, dict) and all(k in data for k in ("created_at", "command", "packages"))


def recognised(folder: Path) -> bool:
    """Whether ``folder`` is one this harness wrote: its list of files, a run's manifest or a validation."""
    if isinstance(_json(folder / MARKER), dict):
        return True
    if _is_manifest(_json(folder / "manifest.json")):
        return True
    validation = _json(folder / "validate.json")
    return isinstance(validation, dict) and _is_manifest(validation.get("manifest"))


def _visible(folder: Path) -> list[str]:
    """The folder's entries a user put there to keep (hidden files such as .gitkeep aside)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _quote(path: Path) -> str:
    return repr(str(path))


@dataclass
class Folder:
    """An output folder a command may write into, as it was claimed (see :func:`claim_folder`)."""

    path: Path
    flag: str  # how the user names this folder on the command line: "--out", "--resume", ...
    made: list[Path] = field(default_factory=list)  # folders this command created, outermost first
    given: str | None = None  # the folder as the user wrote it, for messages

    @property
    def shown(self) -> str:
        return repr(self.given if self.given is not None else str(self.path))

    # -- which files are ours ------------------------------------------------------------------------------

    def _listed(self) -> set[str]:
        data = _json(self.path / MARKER)
        if isinstance(data, dict) and isinstance(data.get("files"), list):
            return {str(f) for f in data["files"]}
        if self.path.is_dir() and recognised(self.path):  # an earlier version's run: its files by name
            return {p.name for p in self.path.iterdir() if p.name in KNOWN or p.suffix == ".png"}
        return set()

    def owns(self, name: str) -> bool:
        return name in self._listed()

    def record(self, *names: str) -> None:
        """Note files as written by this harness (the list every later write is checked against)."""
        files = sorted(self._listed() | set(names))
        _atomic_write(self.path / MARKER, json.dumps({"written_by": "python -m bench", "files": files}))

    def check_replaceable(self, names: Iterable[str]) -> None:
        """Refuse, before any work, to replace a file of ``names`` (globs allowed) this harness did not
        write."""
        if not self.path.is_dir():
            return
        ours = self._listed()
        for pattern in names:
            for path in sorted(self.path.glob(pattern)):
                if path.name not in ours:
                    raise BenchError(
                        f"{_quote(path)} was not written by this harness and would be replaced; move it "
                        f"away or give {self.flag} another folder"
                    )

    # -- writing -------------------------------------------------------------------------------------------

    def create(self) -> None:
        """Make the folder (and its parents) and prove it writable, before the work; records the list."""
        missing = []
        for parent in [self.path, *self.path.parents]:
            if parent.exists():
                break
            missing.append(parent)
        self.made = [*reversed(missing), *self.made]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.record()
        except OSError as err:
            self.discard()
            raise BenchError(f"{self.flag}: cannot write the folder {self.shown}: {err.strerror}") from None

    def write_text(self, name: str, text: str) -> Path:
        """Write (or replace) one of this folder's files, whole or not at all."""
        self.check_replaceable([name])
        self.record(name)
        path = self.path / name
        _atomic_write(path, text)
        return path

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A scratch folder beside the outputs, removed afterwards; :meth:`install` moves its files in."""
        stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.path))
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def install(self, stage: Path) -> list[Path]:
        """Move every file of ``stage`` into the folder, once every one of them may replace what is there."""
        names = sorted(p.name for p in stage.iterdir() if p.is_file())
        self.check_replaceable(names)
        self.record(*names)
        for name in names:
            os.replace(stage / name, self.path / name)
        return [self.path / n for n in names]

    def discard(self) -> None:
        """Remove the folders this command created, where they hold nothing but the list: a command that
        stops on bad input leaves nothing behind."""
        for folder in reversed(self.made):
            with contextlib.suppress(OSError):
                (folder / MARKER).unlink(missing_ok=True)
                folder.rmdir()
        self.made = []


def claim_folder(path: str | Path, flag: str, own_only: bool = False, instead: str | None = None) -> Folder:
    """The folder ``path`` as an output, checked now and nothing written: refused when it is a file, or a
    folder holding files this harness did not write (``own_only``: any folder this harness did not write,
    even an empty one). ``flag`` is how the user gave it and ``instead`` what to do then, for the error."""
    folder, given = Path(path), repr(str(path))
    if folder.exists() and not folder.is_dir():
        raise BenchError(f"{flag} {given} is a file, not a directory")
    if folder.is_dir() and not recognised(folder):
        try:
            content = _visible(folder)
        except OSError as err:
            raise BenchError(f"{flag}: cannot read the folder {given}: {err.strerror}") from None
        if own_only or content:
            shown = ", ".join(repr(n) for n in content[:3]) + (", ..." if len(content) > 3 else "")
            raise BenchError(
                f"{flag} {given} is not a folder this harness wrote"
                + (f" (it holds {shown})" if content else "")
                + f"; {instead or f'give {flag} a new or empty folder'}"
            )
    return Folder(folder, flag, given=str(path))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- single files ------------------------------------------------------------------------------------------


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_output_file(path: str | Path, flag: str, inputs: dict[str, Path], mark: str) -> Path:
    """A single output file (``compare --markdown``), checked before the work: never one of the command's
    ``inputs`` (what the user calls each -> its path), never a file this command did not write (one it
    wrote starts with ``mark``), and its folder writable."""
    given, path = repr(str(path)), Path(path)  # named as the user wrote it
    for what, source in inputs.items():
        if _same(path, source):
            raise BenchError(
                f"{flag} {given} is {what}, an input of this command; give {flag} a file of its own"
            )
    if path.is_dir():
        raise BenchError(f"{flag} {given} is a directory; give {flag} a file name")
    if path.exists():
        try:
            with open(path, "rb") as f:
                first = f.readline().decode("utf-8", "replace").strip()
        except OSError as err:
            raise BenchError(f"{flag}: cannot read {given}: {err.strerror}") from None
        if first != mark:
            raise BenchError(
                f"{flag} {given} exists and was not written by this command; give {flag} a new file "
                "(or move that one away)"
            )
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise BenchError(f"{flag} {given}: {_quote(parent)} is a file, not a folder")
    if not parent.is_dir():
        raise BenchError(f"{flag} {given}: the folder {_quote(parent)} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise BenchError(f"{flag}: cannot write {given}: {err.strerror}") from None
    return path


def write_output_file(path: Path, text: str, mark: str) -> None:
    """Write a file checked by :func:`check_output_file`, marked as this command's, whole or not at all."""
    _atomic_write(path, f"{mark}\n{text}")
