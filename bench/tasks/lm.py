"""Language modelling on real documents, scored by loss at every context position (``lm``).

The documents come from a corpus on disk (bench/tasks/corpus.py: the Python standard library by default,
a local folder or file, or a Hugging Face dataset available locally), split into train / validation /
test by a stable hash of each document's name. Tokens are bytes by default (vocabulary 256: nothing to
download, comparable across models), or the ids of a ``tokenizers`` JSON file (``tokenizer``).

- **Training** draws windows from the training documents: the documents, in name order, are concatenated
  into one stream, each preceded by the boundary token ``SEP`` (byte 0, NUL, which no standard-library
  file contains; with a tokenizer, an id of its own after the tokenizer's vocabulary); a window of T
  tokens starts at a uniformly random offset of that stream, and the targets are the next T tokens. A
  window mostly starts inside a document and may cross into the next one.
- **Evaluation** at length T takes each held-out document (test split; validation split for the
  learning-rate choice) with at least T tokens, in a stable order, up to ``n``: its input is ``SEP``
  followed by the document's first T - 1 tokens and its targets are the document's first T tokens, so the
  target at position t (0-based) is predicted from the t tokens of the document before it. Documents
  shorter than T are skipped (never packed: position t must mean t tokens of context within one
  document), so fewer documents are scored at longer lengths; the evaluation records how many.
- **Distance** (bench/tasks/base.py) is the position t + 1 (1-based) of the predicted token in the
  document, so doubling distance bins are context-position buckets. In training windows it is the
  position within the window.

Every position is asked; the task is scored by loss (its scorer, ``loss``: bench/scoring/loss.py): bits
per byte, by position. With bytes as tokens a token is a byte. With a tokenizer, each target token
stands for the bytes of text from the end of the previous token to its own end (the tokenizer's offsets,
in the UTF-8 text decoded from the document with invalid bytes replaced), so the bytes of a document's
scored tokens add up to the bytes of text they cover and bits per byte are comparable with the byte
models'.

``fingerprint``: set when the sweep's cells are made (from the corpus's fingerprint and the tokenizer
file's hash), so that the cell's key changes with the data; a cell whose corpus no longer matches it (run
or resumed with another Python, or after the files changed) is an error, never a silent comparison.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from bench.errors import BenchError
from bench.registry import register_task
from bench.tasks.base import Examples, Split, Task, TaskConfig
from bench.tasks.corpus import SPLITS, STDLIB, Document, load_corpus

SEP_BYTE = 0


class LMConfig(TaskConfig):
    corpus: str = Field(default=STDLIB, min_length=1)  # "python-stdlib", a path, or "hf:NAME[:SPLIT]"
    tokenizer: str | None = None  # a `tokenizers` JSON file; None: bytes (vocabulary 256)
    fingerprint: str | None = None  # set by the sweep: the corpus and tokenizer the cell was made for


@dataclass(frozen=True)
class Tokenized:
    """A corpus's documents as token ids, per split, in name order; for held-out documents also the
    bytes of text each token stands for."""

    vocab_size: int
    sep: int
    fingerprint: str
    ids: dict[str, list[np.ndarray]]  # split -> one array per document (uint8 bytes or int32 ids)
    nbytes: dict[str, list[np.ndarray]] | None  # validation / test -> bytes per token; None: bytes as tokens
    names: dict[str, list[str]]
    stream: torch.Tensor  # the training stream: SEP doc SEP doc ... (uint8 or int32)


def _file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _byte_spans(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """The bytes of text each token adds: from the end of the previous token (or the start) to its own
    end, in UTF-8; ``offsets`` are the tokenizer's character offsets. A token ending before an earlier
    one (overlapping offsets) adds 0 bytes: every byte is counted once."""
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    char_bytes = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    ends = np.concatenate([[0], np.cumsum(char_bytes, dtype=np.int64)])  # byte offset of each boundary
    token_end = np.maximum.accumulate(np.array([end for _, end in offsets] or [0], dtype=np.int64))
    byte_end = ends[token_end]
    return np.diff(np.concatenate([[0], byte_end]))[: len(offsets)]


@functools.cache
def tokenized(corpus: str, tokenizer: str | None) -> Tokenized:
    """The corpus tokenized once per process (a cell runs in a process of its own)."""
    docs = load_corpus(corpus)
    by_split: dict[str, list[Document]] = {s: sorted(docs.split(s), key=lambda d: d.name) for s in SPLITS}
    ids: dict[str, list[np.ndarray]] = {}
    nbytes: dict[str, list[np.ndarray]] | None = None
    if tokenizer is None:
        vocab, sep, fingerprint = 256, SEP_BYTE, docs.fingerprint
        for split, split_docs in by_split.items():
            ids[split] = [np.frombuffer(d.data, dtype=np.uint8) for d in split_docs]
    else:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise BenchError("task 'lm': a tokenizer needs the 'tokenizers' package") from None
        if not Path(tokenizer).is_file():
            raise BenchError(f"task 'lm': tokenizer file {tokenizer!r} does not exist")
        try:
            tok = Tokenizer.from_file(tokenizer)
        except Exception as err:  # noqa: BLE001 - any unreadable file: say which and why
            raise BenchError(f"task 'lm': cannot read tokenizer {tokenizer!r}: {err}") from None
        vocab = tok.get_vocab_size(with_added_tokens=True) + 1
        sep = vocab - 1
        fingerprint = f"{docs.fingerprint}-tok-{_file_hash(tokenizer)}"
        nbytes = {}
        for split, split_docs in by_split.items():
            texts = [d.data.decode("utf-8", errors="replace") for d in split_docs]
            encodings = tok.encode_batch(texts, add_special_tokens=False)
            ids[split] = [np.array(e.ids, dtype=np.int32) for e in encodings]
            if split != "train":
                nbytes[split] = [_byte_spans(t, e.offsets) for t, e in zip(texts, encodings, strict=True)]
    train = ids["train"]
    if not train:
        raise BenchError(f"task 'lm': corpus {corpus!r} has no training documents")
    dtype = train[0].dtype
    pieces = [p for a in train for p in (np.array([sep], dtype=dtype), a)]
    return Tokenized(
        vocab_size=vocab,
        sep=sep,
        fingerprint=fingerprint,
        ids=ids,
        nbytes=nbytes,
        names={s: [d.name for d in split_docs] for s, split_docs in by_split.items()},
        stream=torch.from_numpy(np.concatenate(pieces)),
    )


@register_task("lm")
class LanguageModelling(Task):
    Config = LMConfig
    config: LMConfig
    scorer: ClassVar[str] = "loss"

    @property
    def data(self) -> Tokenized:
        data = tokenized(self.config.corpus, self.config.tokenizer)
        expected = self.config.fingerprint
        if expected is not None and expected != data.fingerprint:
            raise self.fail(
                f"corpus {self.config.corpus!r} has fingerprint {data.fingerprint}, but the cell was made "
                f"for {expected}: another Python, other files or another tokenizer; results would not be "
                "comparable"
            )
        return data

    def chance(self) -> str:
        return "a uniform guess over bytes costs 8 bits per byte"

    def pinned_args(self) -> dict[str, str]:
        return {"fingerprint": self.data.fingerprint}

    @property
    def vocab_size(self) -> int:
        return self.data.vocab_size

    def documents(self, split: Split, seq_len: int) -> list[int]:
        """Indices of the documents of ``split`` with at least ``seq_len`` tokens, in name order."""
        return [i for i, a in enumerate(self.data.ids[split]) if len(a) >= seq_len]

    def check_len(self, seq_len: int) -> None:
        if seq_len < 2:
            raise self.fail(f"seq_len must be at least 2, got {seq_len}")
        data = self.data
        if len(data.stream) <= seq_len + 1:
            raise self.fail(f"the training documents hold {len(data.stream)} tokens, too few for {seq_len}")
        for split in ("validation", "test"):
            if not self.documents(split, seq_len):
                longest = max((len(a) for a in data.ids[split]), default=0)
                raise self.fail(
                    f"no {split} document of corpus {self.config.corpus!r} has {seq_len} tokens "
                    f"(the longest has {longest}); evaluate at shorter lengths"
                )

    def generate(self, n: int, seq_len: int, seed: int, train_len: int | None = None) -> Examples:
        """``n`` training windows: random offsets in the stream of training documents."""
        stream = self.data.stream
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(stream) - seq_len, (n,), generator=g)
        index = starts[:, None] + torch.arange(seq_len + 1)
        window = stream[index].long()
        positions = torch.arange(1, seq_len + 1).expand(n, seq_len).clone()
        return Examples(window[:, :-1].clone(), window[:, 1:].clone(), positions)

    def train_stream(self, batch_size: int, seq_len: int, seed: int) -> Iterator[Examples]:
        """Consecutive windows of the training stream, one row per position: each row starts at a random
        offset and moves on by ``seq_len`` tokens a batch (back to the start at the end), so a state passed
        from one batch to the next has read the text just before (across documents too: the boundary
        token between them is in the stream, and a model must learn what it means)."""
        stream = self.data.stream
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(stream), (batch_size,), generator=g)
        span = torch.arange(seq_len + 1)
        positions = torch.arange(1, seq_len + 1).expand(batch_size, seq_len)
        while True:
            window = stream[(starts[:, None] + span) % len(stream)].long()
            yield Examples(window[:, :-1].clone(), window[:, 1:].clone(), positions.clone())
            starts = (starts + seq_len) % len(stream)

    def examples(
        self, split: Split, n: int, seq_len: int, seed: int, train_len: int | None = None
    ) -> Examples:
        if split == "train":
            return self.generate(n, seq_len, seed, train_len)
        return self.examples_with_bytes(split, n, seq_len, seed, train_len)[0]

    def examples_with_bytes(
        self, split: Split, n: int, seq_len: int, seed: int, train_len: int | None = None
    ) -> tuple[Examples, torch.Tensor]:
        """The first ``seq_len`` tokens of up to ``n`` documents of ``split`` with at least that many (the
        first ``n`` in name order; ``seed`` is not used: the held-out set is the same for every cell), and
        the bytes of text each target token stands for [n, T]."""
        if split == "train":
            examples = self.generate(n, seq_len, seed, train_len)
            return examples, torch.ones_like(examples.targets)
        data = self.data
        chosen = self.documents(split, seq_len)[:n]
        if not chosen:
            raise self.fail(f"no {split} document has {seq_len} tokens")
        docs = data.ids[split]
        targets = torch.stack([torch.from_numpy(docs[i][:seq_len].astype(np.int64)) for i in chosen])
        inputs = torch.cat([torch.full((len(chosen), 1), data.sep), targets[:, :-1]], dim=1)
        if data.nbytes is None:  # bytes as tokens
            nbytes = torch.ones_like(targets)
        else:
            nbytes = torch.stack([torch.from_numpy(data.nbytes[split][i][:seq_len]) for i in chosen])
        positions = torch.arange(1, seq_len + 1).expand(len(chosen), seq_len).clone()
        return Examples(inputs, targets, positions), nbytes

    def document_names(self, split: Split, seq_len: int, n: int) -> list[str]:
        """The names of the documents :meth:`examples_with_bytes` scores."""
        return [self.data.names[split][i] for i in self.documents(split, seq_len)[:n]]
