"""CLIP's BPE tokenizer and the LEAD++ text prototypes (`fgjax.methods.leadpp.text`).

The fixtures come from `tests/fixtures/make_text_fixtures.py` (open_clip 3.3.0, torch on
CPU): open_clip's `SimpleTokenizer` ids of varied strings on a 2,000-merge cut of CLIP's
vocabulary, `regex` matches of CLIP's word pattern, a tiny random open_clip model with
that vocabulary and its normalised `encode_text` of a CSV in the original's layout, and a
bare fp16 tensor saved by `torch.save` as the original's `*_text_tensor.pt`.
"""

from __future__ import annotations

import gzip
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fgjax.cli import text as cli
from fgjax.methods.leadpp.text import (
    BPETokenizer,
    build_prototypes,
    clean_text,
    load_prototypes,
    prototype_stats,
    read_descriptions,
    split_words,
)
from fgjax.methods.leadpp.text import prototypes as prototypes_module
from fgjax.methods.leadpp.text import tokenizer as tokenizer_module
from fgjax.models.clip import CLIPTextTower
from fgjax.weights import CheckpointFormatError, save_pth

FIXTURES = Path(__file__).parent / "fixtures"
VOCAB = FIXTURES / "text_bpe_2000.txt.gz"
CSV = FIXTURES / "text_descriptions.csv"
IO = dict(np.load(FIXTURES / "text_io.npz"))
# The tiny model of the fixture script: a 2,000-merge vocabulary, context 24.
TINY = CLIPTextTower(context_length=24, vocab_size=2514, width=16, layers=1, heads=2, embed_dim=12)


@pytest.mark.parametrize("ftfy", ["installed", "fallback"])
def test_tokenizer_matches_open_clip(ftfy, monkeypatch):
    if ftfy == "fallback":  # what runs where ftfy is not installed
        monkeypatch.setattr(tokenizer_module, "_ftfy_fix_text", None)
    elif tokenizer_module._ftfy_fix_text is None:
        pytest.skip("ftfy is not installed")
    tokenizer = BPETokenizer(VOCAB)
    assert (tokenizer.vocab_size, tokenizer.sot, tokenizer.eot) == (2514, 2512, 2513)
    strings = [str(s) for s in IO["strings"]]
    for text, words in zip(strings, IO["words"], strict=True):
        assert "\n".join(split_words(clean_text(text))) == words, text
    np.testing.assert_array_equal(tokenizer(strings), IO["ids77"])
    np.testing.assert_array_equal(tokenizer(strings, 16), IO["ids16"])
    # The two long descriptions are cut: SOT, the first 75 ids, EOT.
    long = IO["ids77"][-3]
    assert long[-1] == tokenizer.eot and len(tokenizer.encode(strings[-3])) > 75
    np.testing.assert_array_equal(long[1:-1], tokenizer.encode(strings[-3])[:75])
    # OpenAI's special-token spellings map to SOT / EOT (open_clip spells them differently).
    assert tokenizer.encode("<|startoftext|>x<|endoftext|>") == [2512, *tokenizer.encode("x"), 2513]


def test_vocabulary_file(tmp_path):
    lines = gzip.decompress(VOCAB.read_bytes()).decode("utf-8").split("\n")
    plain = tmp_path / "vocab.txt"  # uncompressed, with a trailing newline
    plain.write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = "The Brewer's Blackbird, 2012"
    assert BPETokenizer(plain).encode(text) == BPETokenizer(VOCAB).encode(text)
    # Longer files keep OpenAI's 48,894 merges: 49,408 ids, EOT 49407 the largest.
    big = tmp_path / "big.txt"
    big.write_text("\n".join(["#version: 0.2"] + [f"x{i} y{i}" for i in range(50_000)]))
    full = BPETokenizer(big)
    assert (full.vocab_size, full.sot, full.eot) == (49408, 49406, 49407)

    bad = tmp_path / "bad.txt"
    bad.write_text("#version: 0.2\na b\nc d e\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt: line 3 is not a merge"):
        BPETokenizer(bad)
    with pytest.raises(FileNotFoundError, match="missing.txt.gz"):
        BPETokenizer(tmp_path / "missing.txt.gz")


def test_load_prototypes(tmp_path):
    x = load_prototypes(FIXTURES / "text_protos_fp16.pt")  # a bare fp16 tensor pickle
    assert x.dtype == np.float32 and x.shape == (6, 512)
    np.testing.assert_array_equal(x, IO["pt_values"])

    rng = np.random.default_rng(0)
    y = rng.normal(size=(4, 8)).astype(np.float32)
    unit = (y / np.sqrt((y.astype(np.float64) ** 2).sum(1, keepdims=True))).astype(np.float32)
    np.save(tmp_path / "p.npy", unit)
    np.savez(tmp_path / "p.npz", prototypes=unit, class_names=np.array(list("abcd")))
    save_pth(tmp_path / "p.pt", {"prototypes": unit})
    for name in ("p.npy", "p.npz", "p.pt"):
        np.testing.assert_allclose(load_prototypes(tmp_path / name), unit, atol=1e-7)

    raw = unit.copy()
    raw[2] *= 1.02  # a norm far from 1 (fp16 storage alone is within 5e-4): a warning
    np.save(tmp_path / "raw.npy", raw)
    with pytest.warns(UserWarning, match=r"raw\.npy: 1 of 4 rows .*\(row: norm 2: 1\.02\)"):
        np.testing.assert_array_equal(load_prototypes(tmp_path / "raw.npy"), raw)
    np.testing.assert_allclose(load_prototypes(tmp_path / "raw.npy", normalize=True), unit, 1e-6)

    bad = {
        "vec.npy": np.ones(8, np.float32),
        "ints.npy": np.ones((2, 8), np.int64),
        "nan.npy": np.where(np.eye(2, 8) > 0, np.nan, unit[:2]),
        "zero.npy": np.concatenate([unit[:1], np.zeros((1, 8))]),
    }
    for name, value in bad.items():
        np.save(tmp_path / name, value)
        with pytest.raises(ValueError, match=re.escape(name)):
            load_prototypes(tmp_path / name)
    np.savez(tmp_path / "two.npz", a=unit, b=unit)
    with pytest.raises(ValueError, match=r"two\.npz: .*\['a', 'b'\]"):
        load_prototypes(tmp_path / "two.npz")
    # A header declaring 10^12 floats in a 16-byte member: refused before numpy allocates.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    )
    with zipfile.ZipFile(tmp_path / "lying.npz", "w") as zf:
        zf.writestr("prototypes.npy", header.getvalue() + bytes(16))
    with pytest.raises(ValueError, match=r"lying\.npz: .*declares shape \(1000000000000,\)"):
        load_prototypes(tmp_path / "lying.npz")
    (tmp_path / "notes.txt").write_text("not a tensor")
    with pytest.raises(CheckpointFormatError, match=r"notes\.txt"):
        load_prototypes(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="gone.pt"):
        load_prototypes(tmp_path / "gone.pt")


def test_prototype_stats():
    x = np.random.default_rng(1).normal(size=(5, 3))
    stats = prototype_stats(x)
    cosines = {
        (i, j): x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
        for i in range(5)
        for j in range(i + 1, 5)
    }
    best = max(cosines, key=cosines.get)
    assert (stats["classes"], stats["dim"], stats["max_pair"]) == (5, 3, best)
    assert stats["max_cosine"] == pytest.approx(cosines[best])
    assert stats["mean_cosine"] == pytest.approx(np.mean(list(cosines.values())))
    assert stats["norm_max"] == pytest.approx(np.linalg.norm(x, axis=1).max())


def test_read_descriptions(tmp_path):
    names, texts = read_descriptions(CSV)  # the original's layout, empty third column
    assert names == [
        "Black footed Albatross",
        "Laysan Albatross",
        "Spotted Catbird",
        "Boeing 747-400",
        "Dodge Ram",
    ]
    assert texts[3] == 'A wide-body airliner with four engines, 70.6 m long; "Queen".'
    swapped = tmp_path / "swapped.csv"
    swapped.write_text('\ufeffDescription,Label\n"long, quoted",x\n\n"short",y\n', "utf-8")
    assert read_descriptions(swapped) == (["x", "y"], ["long, quoted", "short"])
    for body, error in [
        ("class name,text_only\na,b\n", "no 'description' column"),
        ("class name,description\na,\n", "line 2 has no description"),
        ("class name,description\n", "no descriptions"),
    ]:
        path = tmp_path / "bad.csv"
        path.write_text(body, encoding="utf-8")
        with pytest.raises(ValueError, match=rf"bad\.csv: {error}"):
            read_descriptions(path)
    # A vocabulary that does not fit the tower fails before any weights are read.
    with pytest.raises(ValueError, match=r"text_bpe_2000\.txt\.gz: 2514 token ids.* 49408"):
        build_prototypes(CSV, FIXTURES / "text_tiny.pth", VOCAB, tower=TINY.clone(vocab_size=49408))


def test_build_cli_matches_open_clip(tmp_path, monkeypatch, capsys):
    """CSV -> tokens -> text tower -> unit rows, through the CLI, against open_clip."""
    monkeypatch.setattr(prototypes_module, "clip_text_from_name", lambda arch, act: TINY)
    out = tmp_path / "protos.npz"
    argv = ["build", "--csv", str(CSV), "--weights", str(FIXTURES / "text_tiny.pth")]
    argv += ["--vocab", str(VOCAB), "--out", str(out), "--batch-size", "2"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    # Rows whose ids fill the context end in EOT at its last position: truncated or exact.
    cut = int(np.sum(IO["csv_ids"][:, -1] == 2513))
    assert f"{cut} of 5 texts are over 24 tokens" in printed
    saved = np.load(out)
    assert list(saved["class_names"]) == read_descriptions(CSV)[0]
    x = load_prototypes(out)
    np.testing.assert_allclose(x, IO["csv_prototypes"], atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)

    assert cli.main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    cos = IO["csv_prototypes"] @ IO["csv_prototypes"].T
    mean = cos[np.triu_indices(5, k=1)].mean()
    assert "C=5 D=12" in printed and f"mean {mean:.4f}" in printed
