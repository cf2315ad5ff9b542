"""torchvision ResNet <-> fgjax: numerical parity on the torch fixtures (Bottleneck and
BasicBlock), key maps of the methods' checkpoints, export round trips, load_pretrained and
the command line."""

import functools
import os
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.cli.weights import main
from fgjax.models import build_backbone
from fgjax.weights import (
    export_torch,
    load_pretrained,
    read_checkpoint,
    resnet_variables_from_torch,
    resnet_variables_to_torch,
    save_variables,
    target_for_arch,
    unflatten_strings,
)
from fgjax.weights.variables import flatten

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SMALL = os.path.join(FIXTURES, "resnet_small.npz")
# fixture (see fixtures/make_resnet_fixtures.py) -> the registry arch of its block type
CASES = {"resnet_small": "resnet50", "resnet_basic_small": "resnet18"}


@functools.cache
def _case(name):
    """The torch fixture `name`, the fgjax model of its layout, its abstract variables
    and the variables imported from its state dict (built once per test session)."""
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["sd"] = {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}
    stage_sizes, width = tuple(int(n) for n in arrays["stage_sizes"]), int(arrays["width"])
    model = build_backbone(CASES[name], stage_sizes=stage_sizes, width=width)
    # Abstract variables: a real init costs ~3 s per kernel shape on CPU.
    target = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    variables, report = resnet_variables_from_torch(arrays["sd"], target)
    return SimpleNamespace(
        name=name, arch=CASES[name], data=arrays, model=model, target=target,
        variables=variables, report=report,
    )  # fmt: skip


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return _case(request.param)


@pytest.fixture(scope="module")
def fixture():
    return _case("resnet_small").data


@pytest.fixture(scope="module")
def target():
    return _case("resnet_small").target


@pytest.fixture(scope="module")
def loaded():
    small = _case("resnet_small")
    return small.variables, small.report


def _backbone(sd):
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def _shapes(tree):
    return {path: (leaf.shape, leaf.dtype) for path, leaf in flatten(tree).items()}


def _assert_same(a, b):
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for path in fa:
        np.testing.assert_array_equal(np.asarray(fa[path]), np.asarray(fb[path]), err_msg=str(path))


def test_state_dict_maps_every_variable(case):
    variables, report, sd = case.variables, case.report, case.data["sd"]
    assert report.ok, str(report)
    counters = [k for k in sd if k.endswith("num_batches_tracked")]
    assert len(report.loaded) == len(flatten(case.target))
    assert sorted(report.loaded) == sorted(set(_backbone(sd)) - set(counters))
    assert sorted(report.ignored) == sorted(counters + ["fc.weight", "fc.bias"])
    assert any("num_batches_tracked" in n for n in report.notes)
    assert any("fc.* (2)" in n for n in report.notes)
    conv = sd["layer2.0.conv2.weight"]  # [O, I, kh, kw]
    kernel = variables["params"]["layer2_0"]["conv2"]["kernel"]
    assert kernel.dtype == np.float32 and kernel.shape == (3, 3, conv.shape[1], conv.shape[0])
    np.testing.assert_array_equal(kernel[1, 2], conv[:, :, 1, 2].T)
    np.testing.assert_array_equal(
        variables["batch_stats"]["layer2_0"]["downsample_bn"]["var"],
        sd["layer2.0.downsample.1.running_var"],
    )
    # torchvision: BasicBlock layer1.0 keeps the identity shortcut, Bottleneck widens 4x
    assert ("layer1.0.downsample.0.weight" in sd) == (case.arch == "resnet50")


def test_outputs_match_torchvision_eval_mode(case):
    x = jnp.asarray(case.data["input"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
    out = jax.jit(lambda v, x: case.model.apply(v, x, train=False))(case.variables, x)
    np.testing.assert_allclose(out["pooled"], case.data["pooled"], atol=1e-4, rtol=0)
    assert set(out) == {"pooled", "stage1", "stage2", "stage3", "stage4"}
    for s in range(1, 5):
        want = case.data[f"stage{s}"].transpose(0, 2, 3, 1)
        np.testing.assert_allclose(out[f"stage{s}"], want, atol=1e-4, rtol=0, err_msg=f"stage{s}")


@pytest.mark.parametrize(
    "name", ["resnet_small.pth", "resnet_small_legacy.pth", "resnet_basic_small.pth"]
)
def test_real_torch_save_files_load_strictly(name):
    small = _case(name.removesuffix(".pth").removesuffix("_legacy"))
    path = os.path.join(FIXTURES, name)
    variables, report = load_pretrained(path, small.target, small.arch, strict=True)
    assert report.ok
    _assert_same(variables, small.variables)
    # `resnet`: the layout (block included) is read from the file itself
    tensors = read_checkpoint(path)
    assert _shapes(target_for_arch("resnet", tensors)) == _shapes(small.target)
    _assert_same(load_pretrained(path, small.target, "resnet", strict=True)[0], small.variables)


def test_basicblock_checkpoint_into_a_bottleneck_model_fails_strictly():
    basic, bottleneck = _case("resnet_basic_small"), _case("resnet_small")
    path = os.path.join(FIXTURES, "resnet_basic_small.pth")
    with pytest.raises(ValueError, match="missing .*params/layer1_0/conv3/kernel"):
        load_pretrained(path, bottleneck.target, "resnet50", strict=True)
    _, report = load_pretrained(path, bottleneck.target, basic.arch)
    assert report.mismatched and report.missing and not report.ok


def test_round_trip_to_torchvision_and_back_is_exact(case):
    sd = resnet_variables_to_torch(case.variables)
    expected_keys = list(_backbone(case.data["sd"]))
    assert list(sd) == expected_keys  # torchvision's order, num_batches_tracked included
    for key in expected_keys:
        if key.endswith("num_batches_tracked"):
            assert sd[key].dtype == np.int64 and sd[key].shape == ()
        else:
            assert sd[key].dtype == np.float32 and sd[key].flags.c_contiguous
            np.testing.assert_array_equal(sd[key], case.data["sd"][key], err_msg=key)
    again, report = resnet_variables_from_torch(sd, case.target)
    assert report.ok
    _assert_same(again, case.variables)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_export_file_reads_back_as_the_exported_arrays(tmp_path, case, suffix):
    path = tmp_path / f"export{suffix}"
    exported = export_torch(path, case.variables, case.arch)
    back = read_checkpoint(path)
    assert list(back) == list(exported)
    for key, value in exported.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    variables, report = load_pretrained(path, case.target, case.arch, strict=True)
    _assert_same(variables, case.variables)


# --------------------------------------------------------------------------- key maps


def _shifted(sd, delta=1.0):
    return {k: v + np.asarray(delta, v.dtype) for k, v in sd.items()}


def _check_backbone(variables, report, loaded, prefix):
    assert report.ok, str(report)
    assert any(f"prefix {prefix!r}" in n for n in report.notes), report.notes
    _assert_same(variables, loaded[0])


def test_moco_style_checkpoint_loads_query_encoder(fixture, target, loaded):
    """LCR (MoCo path) / LEAD++: module.encoder_q.* with an MLP head at fc.0/fc.2,
    module.encoder_k.* (a different copy), queues and the rationale branch beside it."""
    sd = {f"module.encoder_q.{k}": v for k, v in _backbone(fixture["sd"]).items()}
    head = {"fc.0.weight": (32, 128), "fc.0.bias": (32,), "fc.2.weight": (8, 32), "fc.2.bias": (8,)}
    sd.update({f"module.encoder_q.{k}": np.ones(s, np.float32) for k, s in head.items()})
    sd.update({f"module.encoder_k.{k}": v for k, v in _shifted(_backbone(fixture["sd"])).items()})
    sd.update({f"module.encoder_k.{k}": np.ones(s, np.float32) for k, s in head.items()})
    sd["module.queue"] = np.ones((8, 64), np.float32)
    sd["module.queue_ptr"] = np.zeros(1, np.int64)
    sd["module.conv16.weight"] = np.ones((32, 128, 1, 1), np.float32)
    sd["module.bn16.weight"] = np.ones(32, np.float32)
    variables, report = resnet_variables_from_torch(sd, target)
    _check_backbone(variables, report, loaded, "module.encoder_q.")
    assert "module.encoder_q.fc.0.weight" in report.ignored and "module.queue" in report.ignored
    text = str(report)
    assert "module.encoder_q.fc.* (4)" in text
    assert "module.encoder_k.* (" in text and "module.queue" in text and "module.conv16" in text
    assert "2 ResNet backbones" in text


def test_explicit_prefix_selects_the_key_encoder(fixture, target):
    sd = {f"module.encoder_q.{k}": v for k, v in fixture["sd"].items()}
    sd.update({f"module.encoder_k.{k}": v for k, v in _shifted(fixture["sd"]).items()})
    variables, report = resnet_variables_from_torch(sd, target, prefix="module.encoder_k.")
    assert report.ok
    np.testing.assert_array_equal(
        variables["params"]["conv1"]["kernel"],
        (fixture["sd"]["conv1.weight"] + 1).transpose(2, 3, 1, 0),
    )


def test_bucsfr_checkpoint(fixture, target, loaded):
    """BuCSFR: module.encoder_q.net.* (fc is Identity), projector / classifer heads on the
    query encoder, a key encoder and label queues."""
    bb = {k: v for k, v in _backbone(fixture["sd"]).items()}
    sd = {f"module.encoder_q.net.{k}": v for k, v in bb.items()}
    sd["module.encoder_q.projector.0.weight"] = np.ones((128, 128), np.float32)
    sd["module.encoder_q.classifer.weight"] = np.ones((5, 128), np.float32)
    sd.update({f"module.encoder_k.net.{k}": v for k, v in _shifted(bb).items()})
    sd["module.embedding_dim"] = np.zeros(1, np.int64)
    sd["module.label_queue"] = np.zeros((64, 1), np.float32)
    variables, report = resnet_variables_from_torch(sd, target)
    _check_backbone(variables, report, loaded, "module.encoder_q.net.")
    assert "module.encoder_q.projector.0.weight" in report.ignored


def test_lcr_byol_checkpoint(fixture, target, loaded):
    """LCR's BYOL model: backbone.* (== online_encoder.0.*), target_encoder.0.* (EMA copy),
    projector.layer1/2, online_predictor, conv16/bn16."""
    bb = _backbone(fixture["sd"])
    sd = {f"backbone.{k}": v for k, v in bb.items()}
    sd.update({f"projector.layer1.0.{k}": np.ones(4, np.float32) for k in ("weight", "bias")})
    sd.update({f"online_encoder.0.{k}": v for k, v in bb.items()})
    sd.update({f"target_encoder.0.{k}": v for k, v in _shifted(bb).items()})
    sd["online_predictor.layer2.weight"] = np.ones((4, 4), np.float32)
    sd["conv16.weight"] = np.ones((32, 128, 1, 1), np.float32)
    variables, report = resnet_variables_from_torch(sd, target)
    _check_backbone(variables, report, loaded, "backbone.")
    assert "target_encoder.0.conv1.weight" in report.ignored


def test_byol_pytorch_and_sequential_backbones(fixture, target, loaded):
    bb = _backbone(fixture["sd"])
    sd = {f"online_encoder.net.{k}": v for k, v in bb.items()}
    sd.update({f"target_encoder.net.{k}": v for k, v in _shifted(bb).items()})
    sd["online_encoder.projector.net.0.weight"] = np.ones((4, 4), np.float32)
    _check_backbone(*resnet_variables_from_torch(sd, target), loaded, "online_encoder.net.")

    # nn.Sequential(*list(resnet.children())[:-1]): conv1=0, bn1=1, layer1..4=4..7
    rename = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    seq = {}
    for key, value in bb.items():
        head, _, tail = key.partition(".")
        seq[f"online_network.encoder.{rename[head]}.{tail}"] = value
    seq["online_network.projection.net.0.weight"] = np.ones((4, 4), np.float32)
    variables, report = resnet_variables_from_torch(seq, target)
    _check_backbone(variables, report, loaded, "online_network.encoder.")
    assert any("nn.Sequential" in n for n in report.notes)


def test_missing_unexpected_and_mismatched_are_reported_by_name(fixture, target):
    sd = dict(fixture["sd"])
    del sd["layer2.1.conv2.weight"]
    sd["layer1.0.attention.weight"] = np.ones(3, np.float32)
    sd["bn1.running_mean"] = np.zeros(5, np.float32)
    sd["layer1.0.conv2.weight"] = np.zeros((4, 2, 3, 3), np.float32)
    variables, report = resnet_variables_from_torch(sd, target)
    assert report.missing == ["params/layer2_1/conv2/kernel"]
    assert report.unexpected == ["layer1.0.attention.weight"]
    assert sorted(report.mismatched) == [  # checkpoint key, shapes in torch layout
        ("bn1.running_mean", (5,), (4,)),
        ("layer1.0.conv2.weight", (4, 2, 3, 3), (4, 4, 3, 3)),
    ]
    # unmapped / mismatched entries keep the target's values
    kept = [("params", "layer2_1", "conv2", "kernel"), ("params", "layer1_0", "conv2", "kernel")]
    kept.append(("batch_stats", "bn1", "mean"))
    for path in kept:
        assert flatten(variables)[path] is flatten(target)[path]
    with pytest.raises(ValueError, match="layer1.0.attention.weight"):
        report.raise_if_incomplete("x.pth")


def test_strict_load_of_a_different_architecture_fails(tmp_path, fixture):
    path = tmp_path / "small.pth"
    export_torch(path, resnet_variables_from_torch(fixture["sd"], _abstract(4))[0], "resnet")
    with pytest.raises(ValueError, match="incomplete weight import from .*small.pth"):
        load_pretrained(path, _abstract(8), "resnet50", strict=True)
    variables, report = load_pretrained(path, _abstract(8), "resnet50")
    assert report.mismatched and not report.ok
    conv1 = variables["params"]["conv1"]["kernel"]
    assert isinstance(conv1, jax.ShapeDtypeStruct)  # kept from the abstract target


def _abstract(width, stage_sizes=(1, 2, 1, 1)):
    model = build_backbone("resnet50", stage_sizes=stage_sizes, width=width)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), False))


def test_fgjax_npz_loads_without_key_map(tmp_path, loaded, target):
    path = tmp_path / "vars.npz"
    assert save_variables(path, loaded[0]) == len(flatten(target))
    with np.load(path) as data:
        assert "params/layer1_0/conv1/kernel" in data.files and "batch_stats/bn1/mean" in data.files
    variables, report = load_pretrained(path, target, "resnet50", strict=True)
    _assert_same(variables, loaded[0])
    assert "fgjax variables file" in report.notes[0]


@pytest.mark.parametrize(
    "arch, params, last_bn",
    [("resnet50", 25_557_032 - 2_049_000, "layer4_2/bn3")]
    + [("resnet18", 11_689_512 - 513_000, "layer4_1/bn2")],
)
def test_registry_target_shapes(arch, params, last_bn):
    target = target_for_arch(arch)
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(target["params"]))
    assert n == params  # torchvision's count without the fc
    block, bn = last_bn.split("/")
    assert target["batch_stats"][block][bn]["var"].shape == (512 if arch == "resnet18" else 2048,)


def test_unknown_arch_is_an_error_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown architecture 'resnet200'.*resnet18"):
        target_for_arch("resnet200")
    with pytest.raises(ValueError, match="pass its tensors"):
        target_for_arch("resnet")


# --------------------------------------------------------------------------- command line


def test_cli_convert_both_directions(tmp_path, capsys, loaded):
    out = tmp_path / "small.npz"
    assert (
        main(["convert", os.path.join(FIXTURES, "resnet_small.pth"), str(out), "--arch", "resnet"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "loaded 100 tensors" in printed and "fc.* (2)" in printed
    with np.load(out) as data:
        assert data["params/layer1_0/conv1/kernel"].shape == (1, 1, 4, 4)
        np.testing.assert_array_equal(
            data["batch_stats/layer4_0/bn3/mean"],
            loaded[0]["batch_stats"]["layer4_0"]["bn3"]["mean"],
        )
    back = tmp_path / "back.safetensors"
    argv = ["convert", str(out), str(back), "--arch", "resnet", "--to", "torchvision", "--strict"]
    assert main(argv) == 0
    exported = read_checkpoint(back)
    np.testing.assert_array_equal(
        exported["layer3.0.conv2.weight"],
        np.load(SMALL)["sd/layer3.0.conv2.weight"],
    )


def test_cli_converts_basicblock_resnets(tmp_path, capsys):
    basic = _case("resnet_basic_small")
    src = os.path.join(FIXTURES, "resnet_basic_small.pth")
    out = tmp_path / "basic.npz"
    assert main(["convert", src, str(out), "--arch", "resnet", "--strict"]) == 0
    assert "loaded 70 tensors" in capsys.readouterr().out
    with np.load(out) as data:
        assert data["params/layer1_0/conv1/kernel"].shape == (3, 3, 4, 4)
        assert "params/layer1_0/downsample_conv/kernel" not in data.files
        _assert_same(unflatten_strings(dict(data)), basic.variables)
    back = tmp_path / "back.pth"
    assert main(["convert", str(out), str(back), "--arch", "resnet", "--strict"]) == 0
    exported = read_checkpoint(back)
    assert list(exported) == list(_backbone(basic.data["sd"]))
    for key, value in exported.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(value, basic.data["sd"][key], err_msg=key)


def test_cli_reports_bad_inputs_by_name(tmp_path, capsys):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["convert", str(bad), str(tmp_path / "o.npz"), "--arch", "resnet50"]) == 2
    assert "broken.pth" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "absent.pth"), "o.npz", "--arch", "resnet50"]) == 2
    assert "absent.pth" in capsys.readouterr().err


def test_cli_inspect_subprocess():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fgjax.weights",
            "inspect",
            os.path.join(FIXTURES, "resnet_small.pth"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert proc.returncode == 0, proc.stderr
    assert "layer4.0.downsample.0.weight\tfloat32\t(128, 64, 1, 1)" in proc.stdout
    assert "ResNet backbone prefix: ''" in proc.stdout


def test_cli_exports_the_backbone_of_an_fgjax_training_run(tiny_lcr_run, tmp_path):
    """`convert WORKDIR/checkpoints/STEP OUT.npz`: that step's backbone, nothing else."""
    from fgjax.train.checkpoint import read_saved_state

    out = str(tmp_path / "backbone.npz")
    assert main(["convert", f"{tiny_lcr_run}/checkpoints/2", out, "--arch", "resnet"]) == 0
    saved, _ = read_saved_state(tiny_lcr_run, 2)
    want = {"params": saved["params"]["backbone"]}
    want.update({c: t["backbone"] for c, t in saved["model_state"].items()})
    want = {
        "/".join(str(k.key) for k in path): v
        for path, v in jax.tree_util.tree_leaves_with_path(want)
    }
    with np.load(out) as got:
        assert sorted(got.files) == sorted(want)
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], value, err_msg=key)
