"""CLIP's byte-level BPE tokenizer (OpenAI `clip.tokenize`, open_clip `SimpleTokenizer`).

Pure Python: no `regex`, `ftfy` or torch needed. The steps, as in CLIP:

1. cleanup: `ftfy.fix_text` when ftfy is installed (else NFC normalisation and straight
   quotes, the part of ftfy that LLM-written text needs), `html.unescape` twice, strip,
   runs of whitespace to one space, lower case;
2. split into words by CLIP's pattern
   `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`
   (here a hand-written scanner over `unicodedata` categories);
3. each word's UTF-8 bytes mapped to printable characters (`bytes_to_unicode`), `</w>`
   appended to its last character, and adjacent symbols merged by BPE, lowest merge
   rank first;
4. `[SOT] + ids + [EOT]`, zero-padded to the context length (77); a longer sequence is cut
   to the context length and its last id set to EOT (OpenAI's `truncate=True`).

The vocabulary is the merges file (`bpe_simple_vocab_16e6.txt.gz`, shipped with OpenAI's
`clip` and open_clip packages; nothing is downloaded): a header line, then one merge
`a b` per line. Ids: the 256 byte symbols, the same 256 with `</w>`, the first 48,894
merges in file order, then SOT and EOT, so the full file gives 49,408 ids with SOT 49406
and EOT 49407 (the largest id: CLIP pools the text feature at the argmax id). A file
with fewer merges gives a smaller vocabulary with SOT / EOT last, as open_clip builds it.
"""

from __future__ import annotations

import gzip
import html
import os
import unicodedata
from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np

CONTEXT_LENGTH = 77
MAX_MERGES = 49152 - 256 - 2  # OpenAI keeps these many merges: 49,408 ids in all
SOT_TEXT, EOT_TEXT = "<|startoftext|>", "<|endoftext|>"
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")
# The pattern is matched case-insensitively: these characters case-fold (simple folding,
# as the `regex` module does) onto the letters of the contractions.
_FOLD = str.maketrans({"ſ": "s", **{c.upper(): c for c in "strevmld"}})
# Python's `str.isspace` minus the four information separators, which are not Unicode
# White_Space (what `\s` matches in the pattern).
_NOT_SPACE = frozenset("\x1c\x1d\x1e\x1f")
# ftfy's `uncurl_quotes`: what the cleanup does without ftfy.
_QUOTES = str.maketrans(
    {
        **dict.fromkeys("\u02bc\u2018\u2019\u201a\u201b", "'"),
        **dict.fromkeys("\u201c\u201d\u201e\u201f", '"'),
    }
)

try:  # optional, as in CLIP: fixes mojibake and more; without it see `_fix_text`
    from ftfy import fix_text as _ftfy_fix_text
except ImportError:  # pragma: no cover - depends on the environment
    _ftfy_fix_text = None


def _fix_text(text: str) -> str:
    if _ftfy_fix_text is not None:
        return _ftfy_fix_text(text)
    return unicodedata.normalize("NFC", text).translate(_QUOTES)


def clean_text(text: str) -> str:
    """CLIP's cleanup (step 1 of the module doc): fixed, unescaped, one space, lower case."""
    text = html.unescape(html.unescape(_fix_text(text))).strip()
    return " ".join(text.split()).lower()


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> character map: printable Latin-1 bytes map to themselves, the other
    68 bytes to U+0100 onwards in byte order, so no symbol is whitespace or a control."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in keep}  # insertion order is the id order: these first
    rest = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(rest)})
    return table


def _kind(char: str) -> str:
    """'L' letter, 'N' number, ' ' whitespace, 'O' anything else (the pattern's classes)."""
    if char.isspace() and char not in _NOT_SPACE:
        return " "
    major = unicodedata.category(char)[0]
    return major if major in "LN" else "O"


def split_words(text: str) -> Iterator[str]:
    """The matches of CLIP's word pattern (module doc, step 2) in cleaned `text`, in order.

    At each position the first alternative that matches wins: a special token, a
    contraction, a run of letters, one number character, or a run of characters that are
    none of letter, number or whitespace. Whitespace is skipped.
    """
    i, n = 0, len(text)
    while i < n:
        match = next((s for s in (SOT_TEXT, EOT_TEXT) if text.startswith(s, i)), "")
        if not match and text[i] == "'":
            tail = text[i + 1 : i + 3].translate(_FOLD)
            match = text[i : next((i + 1 + len(c) for c in CONTRACTIONS if tail.startswith(c)), i)]
        if match:
            yield match
            i += len(match)
            continue
        kind = _kind(text[i])
        j = i + 1
        if kind in "LO":
            while j < n and _kind(text[j]) == kind:
                j += 1
        if kind != " ":
            yield text[i:j]
        i = j


def read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The merges of a CLIP vocabulary file (gzip or plain text), at most `MAX_MERGES`."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"{name}: no such BPE vocabulary file")
    with open(name, "rb") as f:
        raw = f.read()
    try:
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{name}: not a CLIP BPE vocabulary (gzip/UTF-8 text): {e}") from None
    lines = text.rstrip("\n").split("\n")[1 : MAX_MERGES + 1]  # line 0 is a version header
    merges = []
    for number, line in enumerate(lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{name}: line {number} is not a merge 'a b': {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise ValueError(f"{name}: no merges (expected a header line, then 'a b' per line)")
    return merges


class BPETokenizer:
    """CLIP's tokenizer over the merges file `vocab` (`bpe_simple_vocab_16e6.txt.gz`).

    `tokenizer(texts)` gives `int32 [N, context_length]` ids as `clip.tokenize(texts,
    truncate=True)` does; `encode(text)` the ids of one text without SOT / EOT.
    Attributes: `sot`, `eot` (the two largest ids), `vocab_size`.
    """

    def __init__(self, vocab: str | os.PathLike):
        merges = read_merges(vocab)
        symbols = list(bytes_to_unicode().values())
        tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        tokens += [SOT_TEXT, EOT_TEXT]
        self.encoder = {token: i for i, token in enumerate(tokens)}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.sot, self.eot = len(tokens) - 2, len(tokens) - 1
        self.vocab_size = len(tokens)
        self._words: dict[str, tuple[int, ...]] = {SOT_TEXT: (self.sot,), EOT_TEXT: (self.eot,)}

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Ids of one pattern match, merged pair by pair (lowest rank first, every
        non-overlapping occurrence left to right); cached per word."""
        if word in self._words:
            return self._words[word]
        table = bytes_to_unicode()
        chars = [table[b] for b in word.encode("utf-8")]
        parts = chars[:-1] + [chars[-1] + "</w>"]
        while len(parts) > 1:
            pairs = set(zip(parts[:-1], parts[1:], strict=True))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, MAX_MERGES))
            if best not in self.ranks:
                break
            merged, k = [], 0
            while k < len(parts):
                if k + 1 < len(parts) and (parts[k], parts[k + 1]) == best:
                    merged.append(parts[k] + parts[k + 1])
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        ids = tuple(self.encoder[p] for p in parts)
        self._words[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text` (cleaned, split, merged), without SOT / EOT."""
        return [i for word in split_words(clean_text(text)) for i in self._bpe(word)]

    def pack(self, encoded: Sequence[Sequence[int]], context_length: int) -> np.ndarray:
        """`[SOT] + ids + [EOT]` per row, zero-padded: `int32 [N, context_length]`. Rows
        too long keep their first `context_length - 1` ids and end with EOT."""
        if context_length < 2:
            raise ValueError(f"context_length must hold SOT and EOT, got {context_length}")
        out = np.zeros((len(encoded), context_length), np.int32)
        for row, ids in zip(out, encoded, strict=True):
            seq = [self.sot, *ids[: context_length - 2], self.eot]
            row[: len(seq)] = seq
        return out

    def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH):
        """`int32 [N, context_length]` ids of `texts` (one string is a batch of one)."""
        texts = [texts] if isinstance(texts, str) else texts
        return self.pack([self.encode(t) for t in texts], context_length)
