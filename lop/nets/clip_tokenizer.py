"""CLIP's text tokenizer: byte-level byte-pair encoding (Sennrich et al. 2016; Radford et al. 2019/2021).

`BPETokenizer` reads a merges file (plain text or gzip; first line a header, then one merge ``a b`` per
line, best first: OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` holds the 48,894 merges of the 49,408-token
ViT-B/16 vocabulary). Vocabulary, in id order: the 256 byte symbols, the same 256 with the end-of-word
mark ``</w>``, one symbol per merge, then ``<|startoftext|>`` and ``<|endoftext|>``.

Encoding a text: HTML entities unescaped, whitespace collapsed, lower case; split into words (letters
runs, single digits, runs of other non-space characters, English contractions); each word's UTF-8 bytes
mapped to printable symbols; the last symbol gets ``</w>``; then the adjacent pair with the best (lowest)
merge rank is merged until no pair is a merge. A batch is ``[N, context_length]`` int64: start token,
ids, end token, zeros; a text that is too long is cut and keeps its end token. (The official tokenizer
also runs ``ftfy`` to repair mojibake; prompts and class names here need no repair, so that step is left
out.)

`ByteTokenizer` (the tiny smoke model, which needs no vocabulary file): ids are the UTF-8 bytes of the
lower-cased text, start = 256, end = 257.
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import regex
import torch

from lop.errors import DataError

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
WORDS = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
OPENAI_MERGES = 49152 - 256 - 2  # merges used by the official vocabulary (lines 1..48894 of the file)


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """Byte -> printable character: printable Latin-1 bytes map to themselves, the others (space,
    control characters) to the characters 256, 257, ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


def clean(text: str) -> str:
    """Unescape HTML (twice, as the official tokenizer), collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(text))
    return regex.sub(r"\s+", " ", text).strip().lower()


def pad_batch(ids: list[list[int]], sot: int, eot: int, context_length: int) -> torch.Tensor:
    """``[N, context_length]``: sot, ids, eot, zero padding; too long rows are cut and end with eot."""
    out = torch.zeros(len(ids), context_length, dtype=torch.int64)
    for i, row in enumerate(ids):
        seq = [sot, *row, eot]
        if len(seq) > context_length:
            seq = seq[:context_length]
            seq[-1] = eot
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return out


class BPETokenizer:
    """CLIP's byte-level BPE tokenizer built from a merges file (see the module docstring)."""

    def __init__(self, merges_path: str | Path, max_merges: int = OPENAI_MERGES) -> None:
        p = Path(merges_path)
        if not p.is_file():
            raise DataError(
                f"{p}: no BPE merges file; save CLIP's bpe_simple_vocab_16e6.txt.gz there "
                "(docs/protocols/moe_cifar.md, 'Weights')"
            )
        raw = p.read_bytes()
        text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode("utf-8")
        lines = text.split("\n")[1 : max_merges + 1]
        merges = [tuple(line.split()) for line in lines if line.strip()]
        bad = [m for m in merges if len(m) != 2]
        if bad:
            raise DataError(f"{p}: merge line {' '.join(bad[0])!r} is not two symbols")
        sym = list(byte_symbols().values())
        vocab = sym + [s + "</w>" for s in sym] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {s: i for i, s in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]
        self.vocab_size = len(vocab)
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    def bpe(self, word: str) -> list[str]:
        """Merge the symbols of one word (its bytes as characters) by merge rank."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [self.ranks[pair] for pair in pairwise(parts) if pair in self.ranks]
            if not ranked:
                break
            best = min(ranked)
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and self.ranks.get((parts[i], parts[i + 1])) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (no start/end tokens)."""
        table = byte_symbols()
        ids: list[int] = []
        for word in WORDS.findall(clean(text)):
            symbols = word if word in (SOT, EOT) else "".join(table[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(symbols))
        return ids

    def __call__(self, texts: list[str], context_length: int) -> torch.Tensor:
        return pad_batch([self.encode(t) for t in texts], self.sot, self.eot, context_length)


class ByteTokenizer:
    """UTF-8 bytes of the cleaned text; start 256, end 257 (vocabulary 258)."""

    sot, eot, vocab_size = 256, 257, 258

    def encode(self, text: str) -> list[int]:
        return list(clean(text).encode("utf-8"))

    def __call__(self, texts: list[str], context_length: int) -> torch.Tensor:
        return pad_batch([self.encode(t) for t in texts], self.sot, self.eot, context_length)
