"""Text prototypes `[C, D]`: one unit-norm CLIP text embedding per class (LEAD++ §2.3).

`load_prototypes` reads a prototype file: the original repository's
`text_description_tensor/*_text_tensor.pt` (a bare fp16 tensor pickled by `torch.save`,
read through fgjax's safe reader), `.npy`, or `.npz`. `build_prototypes` makes new ones
from a CSV of class descriptions with the CLIP text tower.
"""

from __future__ import annotations

import csv
import os
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fgjax.core.distributed import say
from fgjax.core.objectives import l2_normalize
from fgjax.core.progress import progress
from fgjax.methods.leadpp.text.tokenizer import BPETokenizer
from fgjax.models.clip import CLIPTextTower, clip_text_from_name
from fgjax.weights.formats import check_npz, sniff
from fgjax.weights.load import load_pretrained
from fgjax.weights.pth_reader import CheckpointFormatError, load_pth

PathLike = str | os.PathLike

NORM_TOLERANCE = 1e-2  # fp16 storage alone leaves |norm - 1| <= ~5e-4
ARRAY_KEY = "prototypes"  # the array's name in `.npz` files (and a dict in a `.pt`)
NAME_COLUMNS = ("class name", "class", "name", "classname", "class_name")
TEXT_COLUMNS = ("description", "text")


def _pick(arrays: Mapping[str, Any], name: str) -> np.ndarray:
    """The prototype array of a dict / `.npz`: `prototypes`, else its only array."""
    found = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)}
    if ARRAY_KEY in found:
        return found[ARRAY_KEY]
    if len(found) == 1:
        return next(iter(found.values()))
    raise ValueError(
        f"{name}: expected one array or one named {ARRAY_KEY!r}, found {sorted(found) or 'none'}"
    )


def _read_array(name: str) -> np.ndarray:
    with open(name, "rb") as f:
        magic = f.read(6)
    kind = "npy" if magic == b"\x93NUMPY" else sniff(name)  # sniff's errors name the file
    if kind in ("npy", "npz"):
        try:
            if kind == "npy":
                return np.load(name, allow_pickle=False)
            check_npz(name)  # bounded: a zip bomb or a lying header is refused unread
            with np.load(name, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # numpy's name no file
            raise ValueError(f"{name}: cannot read as a numpy {kind} file: {e}") from None
        return _pick(arrays, name)
    if kind == "torch":
        obj = load_pth(name)
        if isinstance(obj, np.ndarray):
            return obj
        return _pick(obj if isinstance(obj, Mapping) else {}, name)
    raise CheckpointFormatError(f"{name}: a {kind} file; prototypes are .pt, .npy or .npz")


def load_prototypes(
    path: PathLike, *, normalize: bool = False, tolerance: float = NORM_TOLERANCE
) -> np.ndarray:
    """Prototypes `float32 [C, D]` from `path` (`.pt` / `.pth` torch tensor, `.npy`, `.npz`).

    A `.pt` holds a bare tensor (as the original's files) or a dict with one tensor;
    a `.npz` its only array or the one named `prototypes`. Rows whose L2 norm is more
    than `tolerance` from 1 raise a warning naming them; `normalize=True` scales every
    row to unit norm. ValueError (naming the file) for anything but a finite 2-D float
    array with no all-zero row.
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"{name}: no such prototype file")
    x = np.asarray(_read_array(name))
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating) or min(x.shape) == 0:
        raise ValueError(
            f"{name}: prototypes must be a float [C, D] array, got {x.dtype} {x.shape}"
        )
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: non-finite values in rows {_rows(~np.isfinite(x).all(1))}")
    norms = np.linalg.norm(x, axis=1)
    if np.any(norms == 0):
        raise ValueError(f"{name}: all-zero rows {_rows(norms == 0)}")
    if normalize:
        return x / norms[:, None]
    off = np.abs(norms - 1) > tolerance
    if off.any():
        warnings.warn(
            f"{name}: {off.sum()} of {len(x)} rows have an L2 norm off 1 by more than "
            f"{tolerance} (row: norm {_rows(off, norms)}); load with normalize=True to "
            "rescale them",
            stacklevel=2,
        )
    return x


def _rows(mask: np.ndarray, values: np.ndarray | None = None, limit: int = 10) -> str:
    """The first `limit` row numbers where `mask` holds, as 'i' or 'i: values[i]'."""
    rows = np.flatnonzero(mask)
    more = f", ... ({len(rows)} in all)" if len(rows) > limit else ""
    shown = [f"{i}" if values is None else f"{i}: {values[i]:.4g}" for i in rows[:limit]]
    return ", ".join(shown) + more


def prototype_stats(x: np.ndarray) -> dict[str, Any]:
    """C, D, the row norms' range and the cosines between distinct rows of `x: [C, D]`:
    mean and max off-diagonal cosine and the pair (i, j), i < j, that has the max."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1)
    unit = x / norms[:, None]
    cos = unit @ unit.T
    count = len(x)
    upper = np.triu_indices(count, k=1)
    pair = int(np.argmax(cos[upper])) if count > 1 else None
    return {
        "classes": count,
        "dim": x.shape[1],
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "mean_cosine": float(cos[upper].mean()) if count > 1 else float("nan"),
        "max_cosine": float(cos[upper][pair]) if count > 1 else float("nan"),
        "max_pair": (int(upper[0][pair]), int(upper[1][pair])) if count > 1 else None,
    }


def read_descriptions(path: PathLike) -> tuple[list[str], list[str]]:
    """`(class_names, descriptions)` from a CSV with a header row, in file order.

    The original's layout (`text_description/output_*.csv`): `class name,description`,
    quoted paragraphs, sometimes an empty trailing column. The text column is the one
    named `description` (or `text`), the name column `class name` (or `class`, `name`),
    else the first other column; names are case-insensitive, other columns are ignored.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:  # neither names the file
        raise ValueError(f"{name}: not a UTF-8 CSV file: {e}") from None
    if not rows:
        raise ValueError(f"{name}: empty CSV (expected a header 'class name,description')")
    header = [h.strip().lower() for h in rows[0]]
    text_col = next((header.index(c) for c in TEXT_COLUMNS if c in header), None)
    if text_col is None:
        raise ValueError(f"{name}: no 'description' column in the header {rows[0]}")
    named = [header.index(c) for c in NAME_COLUMNS if c in header]
    name_col = (named or [i for i in range(len(header)) if i != text_col] or [None])[0]
    names, texts = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        text = row[text_col].strip() if text_col < len(row) else ""
        if not text:
            raise ValueError(f"{name}: line {line} has no description")
        texts.append(text)
        names.append(row[name_col].strip() if name_col is not None and name_col < len(row) else "")
    if not texts:
        raise ValueError(f"{name}: no descriptions below the header")
    return names, texts


def embed_texts(
    tower: CLIPTextTower,
    variables: Mapping[str, Any],
    ids: np.ndarray,
    batch_size: int = 64,
    verbose: bool = True,
) -> np.ndarray:
    """Unit-norm `float32 [N, embed_dim]` text embeddings of token ids `int32 [N, L]`.

    One compile: the last batch is filled up with copies of row 0, dropped after.
    """
    count = len(ids)
    batch = max(1, min(batch_size, count))
    padded = np.concatenate([ids, np.repeat(ids[:1], -count % batch, axis=0)])
    encode = jax.jit(lambda v, x: l2_normalize(tower.apply(v, x)))
    out, bar = [], progress(len(padded) // batch, desc="text prototypes", enabled=verbose)
    for start in range(0, len(padded), batch):
        out.append(np.asarray(encode(variables, padded[start : start + batch])))
        bar.update()
    bar.close()
    return np.concatenate(out)[:count]


def build_prototypes(
    csv_path: PathLike,
    weights: PathLike,
    vocab: PathLike,
    arch: str = "clip_vit_b16",
    *,
    act: str = "quick_gelu",
    batch_size: int = 64,
    tower: CLIPTextTower | None = None,
    verbose: bool = True,
) -> np.ndarray:
    """Unit-norm CLIP text embeddings `float32 [C, embed_dim]` of a CSV's class
    descriptions, one row per CSV row in file order.

    Args:
      csv_path: `class name,description` CSV (`read_descriptions`).
      weights: a CLIP checkpoint `load_pretrained` reads (OpenAI `ViT-B-16.pt`, open_clip,
        Hugging Face); only the text tower is used.
      vocab: the BPE merges file, `bpe_simple_vocab_16e6.txt.gz`.
      arch: `clip_vit_b16` etc.: picks the text tower (`clip_text_from_name`).
      act: `quick_gelu` (OpenAI weights) or `gelu` (open_clip's LAION / DataComp weights).
      tower: a text tower to use instead of `arch`'s (e.g. a tiny one in tests).
      verbose: a progress bar and a line on how many texts were truncated.
    Texts longer than the context (77 tokens with SOT and EOT) are truncated as
    `clip.tokenize(..., truncate=True)` does; how the original fitted its ~80-word
    descriptions is not known (LEAD++ spec §2.3).
    """
    _, texts = read_descriptions(csv_path)
    tower = tower or clip_text_from_name(arch, act=act)
    tokenizer = BPETokenizer(vocab)
    if tokenizer.vocab_size != tower.vocab_size:
        raise ValueError(
            f"{os.fspath(vocab)}: {tokenizer.vocab_size} token ids, but the text tower of "
            f"{arch} has {tower.vocab_size}"
        )
    length = tower.context_length
    encoded = [tokenizer.encode(t) for t in texts]
    ids = tokenizer.pack(encoded, length)
    if verbose:
        cut = sum(len(e) + 2 > length for e in encoded)
        say(f"{cut} of {len(texts)} texts are over {length} tokens: truncated (EOT kept)")
    target = jax.eval_shape(tower.init, jax.random.key(0), jnp.asarray(ids[:1]))
    variables, _ = load_pretrained(weights, target, arch, strict=True)
    return embed_texts(tower, variables, ids, batch_size, verbose)
