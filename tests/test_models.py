"""Backbone registry, ResNet (BasicBlock and Bottleneck) and BatchNorm: shapes at full size
(eval_shape only) and semantics on tiny nets."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fgjax.models import MLP, BatchNorm, ResNet, Swin, registry, swin_from_name
from fgjax.models.factory import backbone_from_config, compute_dtype
from fgjax.models.registry import arch_family, arch_names, build_backbone, register

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# Real inits use the rbg PRNG: XLA:CPU compiles threefry for every kernel shape in seconds,
# rbg in a fraction (a ~10x shorter test).
RBG = jax.random.key(0, impl="rbg")
TINY_SWIN = dict(embed_dim=12, depths=(1, 1), num_heads=(1, 2), window_size=4, img_size=16)


def _eval_shape(model, size, batch=2):
    """(output shapes, parameter count, abstract variables) without any real compute."""
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    out, variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, train=False), x
    )
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    return {k: v.shape for k, v in out.items()}, count, variables


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    "arch, block, pooled, stage_channels, torchvision_params, fc_params",
    [
        ("resnet18", "basic", 512, (64, 128, 256, 512), 11_689_512, 513_000),
        ("resnet34", "basic", 512, (64, 128, 256, 512), 21_797_672, 513_000),
        ("resnet50", "bottleneck", 2048, (256, 512, 1024, 2048), 25_557_032, 2_049_000),
        ("resnet101", "bottleneck", 2048, (256, 512, 1024, 2048), 44_549_160, 2_049_000),
        ("resnet152", "bottleneck", 2048, (256, 512, 1024, 2048), 60_192_808, 2_049_000),
    ],
)
def test_resnets_full_size_shapes_and_param_counts(
    arch, block, pooled, stage_channels, torchvision_params, fc_params
):
    model = build_backbone(arch)
    assert isinstance(model, ResNet) and model.block == block and arch_family(arch) == "resnet"
    shapes, count, variables = _eval_shape(model, 224)
    assert count == torchvision_params - fc_params  # torchvision's count without the fc
    assert shapes == {
        "pooled": (2, pooled),
        **{f"stage{s + 1}": (2, 56 >> s, 56 >> s, c) for s, c in enumerate(stage_channels)},
    }
    # torchvision puts a downsample in layer1.0 only for Bottleneck (64 -> 256 channels)
    assert ("downsample_conv" in variables["params"]["layer1_0"]) == (block == "bottleneck")
    assert "downsample_conv" in variables["params"]["layer2_0"]


def test_swin_large_384_builds_by_name_at_full_size():
    arch = "swin_large_patch4_window12_384"
    model = build_backbone(arch)
    assert model == swin_from_name(arch) and arch_family(arch) == "swin"
    shapes, _, _ = _eval_shape(model, 384)
    assert shapes["pooled"] == (2, 1536) and shapes["layer4"] == (2, 144, 1536)


def test_every_timm_swin_name_builds():
    with np.load(os.path.join(FIXTURES, "swin_param_counts.npz")) as counts:
        names = list(counts.files)
    assert len(names) == 6
    for arch in names + [f"{names[0]}_in22k", f"{names[-1]}.ms_in22k"]:
        assert build_backbone(arch) == swin_from_name(arch), arch
        assert arch_family(arch) == "swin"


def test_unknown_arch_lists_known_names():
    for arch in ("vit_b16", "resnet", "resnet200", "swinv2_tiny_window8_256", "swin_tiny"):
        with pytest.raises(ValueError, match=f"unknown architecture '{arch}'") as err:
            build_backbone(arch)
        assert "resnet18" in str(err.value) and "resnet152" in str(err.value)
        assert "swin_{tiny,small,base,large}" in str(err.value)
        with pytest.raises(ValueError, match="unknown architecture"):
            arch_family(arch)
    assert arch_names()[:5] == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def test_overrides_dtype_and_bn_groups():
    model = build_backbone("resnet50", dtype=jnp.bfloat16, bn_groups=4, stage_sizes=(1, 1), width=4)
    assert (model.stage_sizes, model.width, model.block) == ((1, 1), 4, "bottleneck")
    assert model.dtype == jnp.bfloat16 and model.bn_groups == 4
    assert build_backbone("resnet18", stem_maxpool=False).stem_maxpool is False
    with pytest.raises(ValueError, match=r"ResNet has no field\(s\) \['depths'\]"):
        build_backbone("resnet18", depths=(1, 1))


def test_bn_groups_is_ignored_for_swin():
    model = build_backbone("swin_tiny_patch4_window7_224", bn_groups=8, **TINY_SWIN)
    assert isinstance(model, Swin) and not hasattr(model, "bn_groups")
    assert (model.embed_dim, tuple(model.depths), model.img_size) == (12, (1, 1), 16)
    with pytest.raises(ValueError, match="no field"):
        build_backbone("swin_tiny_patch4_window7_224", width=4)


def test_register_by_pattern_and_by_name(monkeypatch):
    """How ViT will come in: one register call with a name pattern and a builder."""
    monkeypatch.setattr(registry, "_ENTRIES", list(registry._ENTRIES))

    class Toy(nn.Module):
        features: int = 8
        dtype: jnp.dtype = jnp.float32

        @nn.compact
        def __call__(self, x, train=False):
            return {"pooled": nn.Dense(self.features, dtype=self.dtype)(x.mean((1, 2)))}

    register("toy_{N}", lambda arch: Toy(features=int(arch[4:])), family="toy", pattern=r"toy_\d+")
    register("toy_special", lambda arch: Toy(features=3), family="toy")
    assert arch_names()[-2:] == ["toy_{N}", "toy_special"]
    assert build_backbone("toy_16", bn_groups=2).features == 16  # no BatchNorm: ignored
    assert build_backbone("toy_16", features=5).features == 5
    assert build_backbone("toy_special").features == 3 and arch_family("toy_7") == "toy"
    with pytest.raises(ValueError, match="unknown architecture 'toy_x'"):
        build_backbone("toy_x")
    with pytest.raises(ValueError, match="already registered"):
        register("resnet50", lambda arch: Toy(), family="toy")


# --------------------------------------------------------------------------- config


def _model_config(arch, **overrides):
    c = ml_collections.ConfigDict()
    c.arch = arch
    c.dtype = "float32"
    c.overrides = ml_collections.ConfigDict(overrides)
    c.stem_maxpool = False
    c.bn_momentum = 0.8
    c.bn_epsilon = 1e-3
    c.zero_init_last_bn = True
    c.drop_path_rate = 0.3
    c.remat = True
    return c


def test_backbone_from_config_applies_family_fields_and_overrides():
    resnet = backbone_from_config(_model_config("resnet18", stage_sizes=[1, 1], width=4), 2)
    assert resnet == ResNet(
        stage_sizes=(1, 1),
        block="basic",
        width=4,
        stem_maxpool=False,
        bn_momentum=0.8,
        bn_epsilon=1e-3,
        bn_groups=2,
        zero_init_last_bn=True,
        dtype=jnp.float32,
    )
    swin = backbone_from_config(_model_config("swin_tiny_patch4_window4_16", **TINY_SWIN), 8)
    assert swin == Swin(**TINY_SWIN, drop_path_rate=0.3, remat=True, dtype=jnp.float32)
    assert backbone_from_config(_model_config("resnet50")).stage_sizes == (3, 4, 6, 3)


@pytest.mark.parametrize("field", ["stem_maxpool", "dtype", "bn_groups"])
def test_backbone_from_config_refuses_overrides_of_config_entries(field):
    with pytest.raises(ValueError, match=f"overrides sets \\['{field}'\\]"):
        backbone_from_config(_model_config("resnet50", **{field: 1}))


def test_compute_dtype():
    assert compute_dtype("auto") == jnp.float32  # the tests run on the CPU
    assert compute_dtype("bfloat16") == jnp.bfloat16
    with pytest.raises(ValueError, match="float16"):
        compute_dtype("int8")


# --------------------------------------------------------------------------- tiny nets


def test_tiny_basicblock_resnet_forward_and_train_step():
    model = build_backbone("resnet18", stage_sizes=(1, 2), width=4)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 32, 32, 3)), jnp.float32)
    variables = jax.jit(lambda x: model.init(RBG, x, train=False))(x)
    params = variables["params"]
    assert set(params["layer1_0"]) == {"conv1", "bn1", "conv2", "bn2"}  # 4 -> 4: no downsample
    assert set(params["layer2_1"]) == {"conv1", "bn1", "conv2", "bn2"}
    assert params["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 4, 8)
    assert params["layer2_0"]["conv1"]["kernel"].shape == (3, 3, 4, 8)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out = apply(variables, x)
    assert out["pooled"].shape == (4, 8) and out["pooled"].dtype == jnp.float32
    assert out["stage1"].shape == (4, 8, 8, 4) and out["stage2"].shape == (4, 4, 4, 8)
    np.testing.assert_allclose(out["pooled"], out["stage2"].mean((1, 2)), rtol=1e-5)
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    _, updates = train(variables, x)
    moved = jax.tree.map(
        lambda a, b: bool(np.any(a != b)), updates["batch_stats"], variables["batch_stats"]
    )
    assert all(jax.tree.leaves(moved))


def test_resnet_without_stem_maxpool_doubles_map_resolution():
    shapes, _, _ = _eval_shape(build_backbone("resnet50", stem_maxpool=False), 224, batch=1)
    assert shapes["stage4"] == (1, 14, 14, 2048)


@pytest.mark.parametrize("arch, last", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_last_bn_makes_blocks_identity_on_residual(arch, last):
    model = build_backbone(arch, stage_sizes=(1, 1), width=4, zero_init_last_bn=True)
    variables = jax.jit(lambda x: model.init(RBG, x, train=False))(jnp.zeros((1, 16, 16, 3)))
    scales = [v[last]["scale"] for k, v in variables["params"].items() if k.startswith("layer")]
    assert len(scales) == 2 and all(np.all(np.asarray(s) == 0) for s in scales)


def test_unknown_block_is_an_error():
    model = ResNet(stage_sizes=(1,), width=2, block="wide")
    with pytest.raises(ValueError, match="ResNet block 'wide'"):
        model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)


def test_batchnorm_groups_match_numpy_and_running_stats_are_unbiased():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 5)).astype(np.float32) * 2 + 1
    bn = BatchNorm(groups=2, momentum=0.9)
    variables = bn.init(jax.random.key(0), x, train=True)
    y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    groups = x.reshape(2, 4, 3, 5)
    mean = groups.mean(axis=(1, 2), keepdims=True)
    var = groups.var(axis=(1, 2), keepdims=True)
    expected = ((groups - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5)
    unbiased = groups.var(axis=(1, 2), ddof=1).mean(0)
    np.testing.assert_allclose(
        np.asarray(updates["batch_stats"]["var"]), 0.9 + 0.1 * unbiased, rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(updates["batch_stats"]["mean"]),
        0.1 * groups.mean(axis=(1, 2)).mean(0),
        rtol=1e-5,
        atol=1e-7,
    )


def test_mlp_with_bn_shapes():
    head = MLP(features=(16, 8), use_bn=True)
    x = jnp.ones((4, 12))
    variables = head.init(RBG, x, train=True)
    y, _ = head.apply(variables, x, train=True, mutable=["batch_stats"])
    assert y.shape == (4, 8) and y.dtype == jnp.float32
    assert set(variables["params"]) == {"fc0", "bn0", "fc1"}
