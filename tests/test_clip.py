"""CLIP image / text towers and their OpenAI / open_clip / Hugging Face weight import.

The fixtures come from `tests/fixtures/make_clip_fixtures.py` (open_clip 3.3.0,
transformers 5.24.0, torch on CPU): tiny random models saved as an open_clip state dict,
the same model as a TorchScript archive (OpenAI's download format) and an independent
Hugging Face `CLIPModel`, with their PyTorch embeddings of fixed images and token ids.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.models.clip import (
    CLIPTextTower,
    CLIPVisionTower,
    clip_text_from_name,
    clip_vision_from_name,
)
from fgjax.models.registry import arch_family, build_backbone
from fgjax.weights import (
    UnsafeCheckpointError,
    export_torch,
    load_pretrained,
    load_pth,
    read_checkpoint,
    target_for_arch,
)
from fgjax.weights.clip_keys import clip_variables_from_torch, clip_variables_to_torch

FIXTURES = Path(__file__).parent / "fixtures"
IO = dict(np.load(FIXTURES / "clip_tiny_io.npz"))
CONFIG = json.loads(str(IO["config"]))
VISION = CLIPVisionTower(
    img_size=CONFIG["image_size"],
    patch_size=CONFIG["patch_size"],
    width=CONFIG["vision_width"],
    layers=CONFIG["vision_layers"],
    heads=CONFIG["vision_heads"],
    embed_dim=CONFIG["embed_dim"],
)
TEXT = CLIPTextTower(
    context_length=CONFIG["context_length"],
    vocab_size=CONFIG["vocab_size"],
    width=CONFIG["text_width"],
    layers=CONFIG["text_layers"],
    heads=CONFIG["text_heads"],
    embed_dim=CONFIG["embed_dim"],
)
# One compile per tower (and activation), shared by every test.
_vision = jax.jit(VISION.apply)
_vision_gelu = jax.jit(VISION.clone(act="gelu").apply)
_text = jax.jit(TEXT.apply)
TOL = 1e-4


def _targets() -> tuple[dict, dict]:
    vision = jax.eval_shape(lambda: VISION.init(jax.random.key(0), IO["images"]))
    text = jax.eval_shape(lambda: TEXT.init(jax.random.key(0), IO["tokens"]))
    return vision, text


def _load(name: str) -> tuple[dict, dict]:
    """Both towers' variables from fixture `name`, strictly (any gap is an error)."""
    vision, text = _targets()
    path = FIXTURES / name
    return (
        load_pretrained(path, vision, "clip_vit_b16", strict=True)[0],
        load_pretrained(path, text, "clip_vit_b16", strict=True)[0],
    )


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.mark.parametrize(
    "name, image, text",
    [
        ("clip_tiny.pth", "image", "text"),
        ("clip_tiny_jit.pt", "image", "text"),
        ("clip_tiny_hf.safetensors", "hf_image", "hf_text"),
    ],
)
def test_towers_match_pytorch(name, image, text):
    vision_vars, text_vars = _load(name)
    out = _vision(vision_vars, IO["images"])
    assert out["pooled"].dtype == jnp.float32 and out["pooled"].shape == IO[image].shape
    assert _max_diff(out["pooled"], IO[image]) < TOL
    assert _max_diff(_text(text_vars, IO["tokens"]), IO[text]) < TOL
    # `pooled` is the projected class token of `tokens` (both after ln_post).
    np.testing.assert_allclose(
        out["tokens"][:, 0] @ vision_vars["params"]["proj"], out["pooled"], atol=1e-6
    )
    if image == "image":
        assert _max_diff(out["tokens"][:, 1:], IO["image_tokens"]) < TOL
        # open_clip's exact-GELU model on the same weights; QuickGELU is measurably off.
        assert _max_diff(_vision_gelu(vision_vars, IO["images"])["pooled"], IO["image_gelu"]) < TOL
        assert _max_diff(IO["image"], IO["image_gelu"]) > 10 * TOL


def test_text_tower_needs_only_the_tokens_up_to_eot():
    _, text_vars = _load("clip_tiny.pth")
    rows = [0, 2]  # EOT at 5 and 9: a context of 10 holds both
    short = _text(text_vars, IO["tokens"][rows, :10])
    assert _max_diff(short, IO["text"][rows]) < TOL


# A protocol-2 pickle of one TorchScript object `__torch__.evil.Module` whose BUILD state
# is {'a': 7}: GLOBAL, EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, 'a', 7, SETITEM, BUILD, STOP.
_SCRIPT_PICKLE = b"\x80\x02c__torch__.evil\nModule\n)\x81}X\x01\x00\x00\x00aK\x07sb."


def test_torchscript_archive_reads_module_attributes_without_code(tmp_path):
    jit = read_checkpoint(FIXTURES / "clip_tiny_jit.pt")
    state = read_checkpoint(FIXTURES / "clip_tiny.pth")
    assert set(jit) - set(state) == {"attn_mask"}  # open_clip's non-persistent buffer
    assert all(np.array_equal(jit[k], state[k]) for k in state)

    # `__torch__.*` globals become inert attribute dicts only inside a TorchScript archive
    # (one with a code/ tree, which is never read); elsewhere they stay refused.
    for with_code in (False, True):
        path = tmp_path / f"archive_{with_code}.pt"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("m/data.pkl", _SCRIPT_PICKLE)
            if with_code:
                zf.writestr("m/code/__torch__/evil.py", "raise SystemExit\n")
        if with_code:
            assert load_pth(path) == {"a": 7}
        else:
            with pytest.raises(UnsafeCheckpointError, match="__torch__.evil.Module"):
                load_pth(path)


def test_reports_other_tower_prefixes_gaps_and_round_trips(tmp_path):
    vision, text = _targets()
    state = read_checkpoint(FIXTURES / "clip_tiny.pth")
    loaded, report = clip_variables_from_torch(state, vision)
    text_keys = {k for k in state if not k.startswith("visual.")}
    assert report.ok and set(report.ignored) == text_keys  # text tower + logit_scale
    assert len(report.loaded) == len(state) - len(text_keys)

    # Back to OpenAI names: exactly the checkpoint's tensors of each tower.
    exported = clip_variables_to_torch(loaded)
    assert set(exported) == set(state) - text_keys
    assert all(np.array_equal(exported[k], state[k]) for k in exported)
    # OpenAI's TorchScript models also hold their hyper-parameters as 0-d tensors.
    extras = {k: np.array(224) for k in ("input_resolution", "context_length", "vocab_size")}
    text_loaded, report = clip_variables_from_torch({**state, **extras}, text)
    assert report.ok and set(extras) | {"logit_scale"} <= set(report.ignored)
    exported = clip_variables_to_torch(text_loaded)
    assert set(exported) == text_keys - {"logit_scale"}
    assert all(np.array_equal(exported[k], state[k]) for k in exported)

    # A DDP-wrapped training checkpoint, and export_torch -> load_pretrained.
    ddp, report = clip_variables_from_torch({f"module.{k}": v for k, v in state.items()}, vision)
    assert report.ok and "'module.'" in report.notes[0]
    assert jax.tree.all(jax.tree.map(np.array_equal, ddp, loaded))
    export_torch(tmp_path / "visual.safetensors", loaded, "clip_vit_b16")
    again, report = load_pretrained(tmp_path / "visual.safetensors", vision, "clip_vit_b16")
    assert report.ok and jax.tree.all(jax.tree.map(np.array_equal, again, loaded))

    # Gaps are reported in checkpoint terms: a missing v_proj leaves q/k unexpected and
    # in_proj missing; a wrong shape names the torch shape of both sides.
    hf = read_checkpoint(FIXTURES / "clip_tiny_hf.safetensors")
    del hf["vision_model.encoder.layers.1.self_attn.v_proj.weight"]
    hf["visual_projection.weight"] = hf["visual_projection.weight"][:5]
    _, report = clip_variables_from_torch(hf, vision)
    assert sorted(report.unexpected) == [
        "visual.transformer.resblocks.1.attn.k_proj.weight",
        "visual.transformer.resblocks.1.attn.q_proj.weight",
    ]
    assert report.missing == ["params/transformer/resblocks_1/attn/in_proj/kernel"]
    assert report.mismatched == [("visual.proj", (24, 5), (24, 12))]


def test_full_size_towers_and_registry_names():
    # Exact counts from open_clip 3.3.0 (`create_model(name)`: `.visual`, and the rest less
    # logit_scale); its ViT-B-16 CLIP has 149,620,737 parameters in all. ViT-L-14-336's
    # image tower is 304,293,888 (L/14 plus 320 more positions of 1024).
    counts = {
        "clip_vit_b16": (86_192_640, 63_428_096),
        "clip_vit_b32": (87_849_216, 63_428_096),
        "clip_vit_l14": (303_966_208, 123_650_304),
    }
    tokens = jnp.zeros((3, 77), jnp.int32)
    for arch, (n_vision, n_text) in counts.items():
        target = target_for_arch(arch)
        text = jax.eval_shape(clip_text_from_name(arch).init, jax.random.key(0), tokens)
        assert sum(x.size for x in jax.tree.leaves(target)) == n_vision, arch
        assert sum(x.size for x in jax.tree.leaves(text)) == n_text, arch
    assert 86_192_640 + 63_428_096 + 1 == 149_620_737

    # ViT-B/16 at 224 (LEAD++'s teacher): 14x14 patches + class token, 512-d embeddings.
    model = build_backbone("clip_vit_b16")
    assert (model.img_size, model.patch_size, model.width, model.heads) == (224, 16, 768, 12)
    assert (model.layers, model.embed_dim, model.act) == (12, 512, "quick_gelu")
    out = jax.eval_shape(model.apply, target_for_arch("clip_vit_b16"), jnp.zeros((2, 224, 224, 3)))
    assert out["pooled"].shape == (2, 512) and out["tokens"].shape == (2, 197, 768)
    text = clip_text_from_name("clip_vit_b16")
    fields = (text.width, text.layers, text.heads, text.context_length, text.vocab_size)
    assert fields == (512, 12, 8, 77, 49408)
    variables = jax.eval_shape(text.init, jax.random.key(0), tokens)
    assert jax.eval_shape(text.apply, variables, tokens).shape == (3, 512)
    large = clip_vision_from_name("clip_vit_l14_336")
    assert (large.img_size, large.patch_size, large.width, large.layers) == (336, 14, 1024, 24)
    assert arch_family("clip_vit_b16") == "clip"
    assert build_backbone("clip_vit_b16", act="gelu", dtype=jnp.bfloat16).act == "gelu"


def test_clear_errors():
    variables, _ = _load("clip_tiny.pth")
    with pytest.raises(ValueError, match=r"expected \[B, 32, 32, 3\]"):
        VISION.apply(variables, jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="act must be one of"):
        jax.eval_shape(VISION.clone(act="relu").init, jax.random.key(0), IO["images"])
    with pytest.raises(ValueError, match=r"L <= 16"):
        TEXT.init(jax.random.key(0), jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="unknown architecture 'clip_vit_h14'"):
        build_backbone("clip_vit_h14")
    with pytest.raises(ValueError, match="not a CLIP tower"):
        clip_variables_from_torch({}, {"params": {"conv": {}}})
