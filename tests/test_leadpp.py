"""LEAD++ (fgjax/methods/leadpp.py) against numpy and ../shared/methods/leadpp.md.

One real jitted step with non-default values is recomputed in numpy from the networks'
outputs: the three successively EMA-updated key forwards, both queues and L3's snapshot,
the CLIP teacher on view3, the prototype distributions, entropy weights, the per-group
sums and min-max, the Grad-CAM fitting term and the total."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, jitted_step, normalized, random_batch, run_info, tiny_config
from numpy_refs import kl_rows, log_softmax, unit64
from test_contract import _assert_same_state, _checkpoint
from test_lcr import _moco_and_pooled_grad

from fgjax.config import load_config_file, photometric_config
from fgjax.core.sharding import global_batch, put_replicated
from fgjax.data.augment import no_augment_spec
from fgjax.methods.base import StepContext, backbone_variables
from fgjax.methods.lcr.method import last_stage_map, without_branch
from fgjax.methods.leadpp.method import CLIP_MEAN, CLIP_STD
from fgjax.models.clip import CLIPVisionTower
from fgjax.train.loop import train_and_evaluate

B, S, C, D, G = 8, 16, 5, 8, 2
TINY_CLIP = dict(width=12, layers=1, heads=2, patch_size=8, img_size=S, embed_dim=D)


# Non-default values, so that a wiring mistake changes the numbers.
VALUES = dict(
    temperature=0.3,
    momentum=0.5,
    alpha=0.7,
    l2_weight=0.3,
    beta=7.0,
    proto_temperature=0.2,
    loss_weight=0.5,
    tau=0.5,
    teacher_norm="clip",
)


def _config(tmp_path):
    """A tiny LEAD++ (width-4 ResNet, 8-d head, tiny CLIP teacher, C = 5 random unit
    prototypes written to `tmp_path`) with `VALUES`, unaugmented views, 16 training
    images: 2 steps of 8 an epoch."""
    rng = np.random.default_rng(7)
    protos = rng.normal(size=(C, D))
    path = tmp_path / "protos.npy"
    np.save(path, (protos / np.linalg.norm(protos, axis=1, keepdims=True)).astype(np.float32))
    config = tiny_config("leadpp")
    config.leadpp.update(
        dict(hidden_dim=16, dim=D, queue_size=32, bn_groups=G, loss_device_groups=G, **VALUES)
    )
    config.leadpp.teacher_overrides = TINY_CLIP
    config.leadpp.prototypes = str(path)
    config.train.batch_size = B
    config.eval.enabled = False
    for view in config.views.values():
        view.photometric = photometric_config(no_augment_spec())
    return config


def method_for(config):
    """The method of `config` for the tiny run (2 steps an epoch)."""
    from fgjax.methods import build_method

    return build_method(config, run_info(config, num_classes=2, steps_per_epoch=2))


def _ce(q, k, queue, temperature):
    logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ queue.T], 1) / temperature
    top = logits.max(1)
    return top + np.log(np.exp(logits - top[:, None]).sum(1)) - logits[:, 0]


def test_one_jitted_step_equals_numpy_with_non_default_values(
    tmp_path, capsys, module_compilation_cache
):
    config = _config(tmp_path)
    # The run of the resume test (2 steps an epoch, 2 epochs): its step compiles to this
    # step's program, loaded from the module's compilation cache.
    run = run_info(config, num_classes=2, steps_per_epoch=2, num_epochs=2)
    method, state, frozen, step, mesh = jitted_step(config, run)
    assert "WARNING" in capsys.readouterr().out  # no teacher weights: a random tower
    # Key params apart from the online ones (a fresh run starts them equal), so that the
    # number of EMA updates before each key forward shows.
    noise = np.random.default_rng(1)
    key_params = jax.tree.map(
        lambda p: p + 0.3 * noise.normal(size=p.shape).astype(p.dtype) * (np.abs(p).mean() + 0.1),
        jax.device_get(state.method_state["key_params"]),
    )
    state = state.replace(method_state={**state.method_state, "key_params": key_params})
    state = put_replicated(state, mesh)  # as the run's state: its step program is this one
    before = jax.device_get(state)
    batch = random_batch(np.random.default_rng(0), method.view_names, B, S)
    after, metrics = step(state, frozen, global_batch(batch, mesh))
    after = jax.device_get(after)
    x1, x2, x3, x4 = (
        normalized(batch["views"][v], config.views[v].photometric) for v in batch["views"]
    )

    # The step's loss rng: fold_in(rng, step), split (aug, loss), micro-batch 0, 3 keys.
    loss_rng = jax.random.split(jax.random.fold_in(before.rng, 0))[1]
    key_rngs = jax.random.split(jax.random.fold_in(loss_rng, 0), 3)
    params, model_state = before.params, before.model_state
    enc, enc_state = without_branch(params), {c: without_branch(t) for c, t in model_state.items()}
    # Three successive EMAs (m = 0.5), one before each key forward.
    key_params, key_state, keys = (
        before.method_state["key_params"],
        before.method_state["key_model_state"],
        [],
    )
    key_embeddings = jax.jit(method.key_embeddings)
    for x, r in zip((x2, x4, x4), key_rngs, strict=True):
        key_params = jax.tree.map(lambda t, o: 0.5 * t + 0.5 * o, key_params, enc)
        k, key_state = key_embeddings(
            {"key_params": key_params, "key_model_state": key_state}, x, r
        )
        keys.append(np.asarray(k, np.float64))
    k2, k4a, k4b = keys
    fwd = jax.jit(
        lambda x: method.net.apply(
            {"params": enc, **enc_state}, x, train=True, mutable=list(enc_state)
        )[0]
    )
    out1, out3 = fwd(x1), fwd(x3)
    z1, z3 = unit64(out1["proj"]), unit64(out3["proj"])
    queue = np.asarray(before.method_state["queue"], np.float64)
    queue2 = np.asarray(before.method_state["queue2"], np.float64)
    queue2_after = queue2.copy()
    queue2_after[:B] = k4a  # L3 reads queue2 after L2's enqueue (the faithful bug)

    # Teacher: the tiny CLIP tower on view3 re-normalised with CLIP's mean / std.
    x3_clip = (batch["views"]["view3"] / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    tower = jax.jit(lambda x: method.teacher.apply(frozen["teacher"], x)["pooled"])
    teacher = lambda x: unit64(tower(np.float32(x)))
    f_t = teacher(x3_clip)
    protos = np.asarray(frozen["prototypes"], np.float64)
    log_s = log_softmax(z3 @ protos.T / 0.2)

    def distill(f_t):  # entropy [B], per-group-summed L_dis of the teacher's embeddings
        log_t = log_softmax(f_t @ protos.T / 0.2)
        p_t = np.exp(log_t)
        entropy = -np.sum(p_t * np.log(p_t + 1e-10), 1) / np.log(C)
        d = np.sum(p_t * (log_t - log_s), 1) / C
        per_group = ((1 - entropy**2) * d).reshape(G, B // G).sum(1)
        return entropy, 7.0 * np.mean(per_group)

    entropy, l_dis = distill(f_t)
    w_con = entropy**2
    assert 0.05 < entropy.min() and entropy.max() < 0.95  # both weights matter

    ce1, ce2 = _ce(z1, k2, queue, 0.3), _ce(z1, k4a, queue2, 0.3)
    ce3 = _ce(z3, k4b, queue2_after, 0.3)
    l1, l2, l3 = (0.7 * np.mean(w_con * ce) for ce in (ce1, ce2, ce3))

    # Rationale: Grad-CAM of each group's L3_g = 0.7 mean_g(w_con CE3) w.r.t. y3.
    maps = np.asarray(out3["stage2"], np.float64)
    head = jax.tree.map(lambda v: np.asarray(v, np.float64), enc["projector"])
    _, d_mean = _moco_and_pooled_grad(maps.mean((1, 2)), head, k4b, queue2_after, 0.3)
    gcam = G * 0.7 * w_con[:, None] * d_mean  # d(mean CE) -> d(L3_g)
    cam = np.maximum(np.einsum("bhwc,bc->bhw", maps, gcam) / (maps.shape[1] * maps.shape[2]), 0)
    branch = params["rationale"]
    x = (maps @ np.asarray(branch["conv"]["kernel"], np.float64)).reshape(G, B // G, 2, 2, -1)
    x = (x - x.mean((1, 2, 3), keepdims=True)) / np.sqrt(x.var((1, 2, 3), keepdims=True) + 1e-5)
    m = np.maximum(x * np.asarray(branch["bn"]["scale"]) + np.asarray(branch["bn"]["bias"]), 0)
    m = m.max(-1)  # [G, B/G, 2, 2]
    att = m - m.min((1, 2, 3), keepdims=True)
    att = (att / (att.max((1, 2, 3), keepdims=True) + 1e-7)).reshape(B, 2, 2)
    l_cam = np.mean(
        [
            sum(
                kl_rows(cam[i, h] / 0.5, att[i, h] / 0.5)
                for i in range(g * 4, g * 4 + 4)
                for h in range(2)
            )
            for g in range(G)
        ]
    )
    total = l1 + 0.3 * l2 + l3 + 0.5 * l_cam + l_dis
    for name, want in dict(l1=l1, l2=l2, l3=l3, l_dis=l_dis, l_cam=l_cam, loss=total).items():
        np.testing.assert_allclose(float(metrics[name]), want, rtol=2e-4, err_msg=name)
    # The numbers tell the wiring apart: L3's queue, the teacher's view, the CAM visible.
    assert abs(0.7 * np.mean(w_con * _ce(z3, k4b, queue2, 0.3)) - l3) > 1e-3
    x1_clip = (batch["views"]["view1"] / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    for other in (teacher(x1_clip), teacher(x3)):  # view1; view3 ImageNet-normalised
        assert abs(distill(other)[1] - l_dis) > 1e-3
    assert 0.5 * l_cam > 1e-4

    # After the step: queue <- k(view2), queue2 <- k(view4) of the first key forward,
    # the key encoder holds the third EMA; the teacher is not in the state.
    new = after.method_state
    np.testing.assert_allclose(np.asarray(new["queue"])[:B], k2, atol=1e-5)
    np.testing.assert_allclose(np.asarray(new["queue2"])[:B], k4a, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(new["queue2"])[B:], queue2[B:].astype(np.float32))
    assert int(new["queue_ptr"]) == int(new["queue2_ptr"]) == B
    for got, want in zip(
        jax.tree.leaves(new["key_params"]), jax.tree.leaves(key_params), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "teacher" not in new and "prototypes" not in new


def test_a_run_resumes_bit_identically_without_the_teacher_in_the_checkpoint(
    tmp_path, module_compilation_cache
):
    config = _config(tmp_path)
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    assert straight["finished"] and straight["step"] == 4
    interrupted = config.copy_and_resolve_references()
    interrupted.train.max_steps = 3  # stops mid-epoch 2 with a checkpoint
    assert train_and_evaluate(interrupted, str(tmp_path / "resumed"))["step"] == 3
    saved = _checkpoint(tmp_path / "resumed")
    assert saved["step"] == 3
    # No teacher and no prototypes: nothing of the tower's or the prototypes' shapes.
    tower = jax.eval_shape(
        lambda: CLIPVisionTower(**TINY_CLIP).init(jax.random.PRNGKey(0), np.zeros((1, S, S, 3)))
    )
    teacher_shapes = {tuple(x.shape) for x in jax.tree.leaves(tower)}  # width 12: unique
    assert not any("teacher" in name or "prototypes" in name for name in saved)
    shapes = {getattr(v, "shape", None) for v in saved.values()}
    assert not shapes & (teacher_shapes | {(C, D)}), shapes & (teacher_shapes | {(C, D)})
    assert any("queue2" in name for name in saved)
    train_and_evaluate(config, str(tmp_path / "resumed"))  # resumes at step 3
    _assert_same_state(_checkpoint(tmp_path / "straight"), _checkpoint(tmp_path / "resumed"))

    # Evaluation features of the trained state: plain GAP (retrieval) by default, LCR's
    # mask-weighted descriptor (the linear probe's) as embed_feature='rationale'.
    trained = straight["state"]
    images = np.random.default_rng(2).normal(size=(4, S, S, 3)).astype(np.float32)
    maps = (
        method_for(config)
        .backbone()
        .apply(backbone_variables(trained.params, trained.model_state), images, train=False)[
            "stage2"
        ]
    )
    maps = np.asarray(maps, np.float64)
    np.testing.assert_allclose(
        method_for(config).embed(trained.params, trained.model_state, images),
        maps.mean((1, 2)),
        rtol=1e-5,
        atol=1e-6,
    )
    config.leadpp.embed_feature = "rationale"
    method = method_for(config)
    _, attention = method.attention(trained.params, trained.model_state, images)
    pooled = (np.asarray(attention, np.float64)[..., None] * maps).mean((1, 2))
    np.testing.assert_allclose(
        method.embed(trained.params, trained.model_state, images),
        pooled / np.linalg.norm(pooled, axis=1, keepdims=True),
        rtol=1e-4,
        atol=1e-6,
    )
    assert float(np.ptp(np.asarray(attention))) > 0.5  # min-max over the eval batch

    # The linear probe (configs/cub_leadpp_lincls.py): lincls loads this run's backbone and
    # branch and classifies that same descriptor.
    from fgjax.methods import build_method
    from fgjax.train.state import create_train_state

    probe_config = tiny_config("lincls")
    recipe = load_config_file(os.path.join(REPO, "configs", "cub_leadpp_lincls.py"))
    probe_config.lincls = recipe.lincls
    probe_config.optim.freeze = recipe.optim.freeze
    probe = build_method(probe_config, run_info(probe_config))
    state = create_train_state(probe, None, (2, S, S, 3), 0, str(tmp_path / "straight"))
    np.testing.assert_allclose(
        probe.embed(state.params, state.model_state, images),
        method.embed(trained.params, trained.model_state, images),
        rtol=1e-5,
        atol=1e-6,
    )


SECTION_10 = dict(
    hidden_dim=2048,
    dim=512,
    queue_size=65536,
    momentum=0.999,
    temperature=0.27,
    ema_updates_per_step=3,
    view1_stat_updates=2,
    l3_queue_snapshot="after_L2_enqueue",
    alpha=0.5,
    l2_weight=0.1,
    beta=20.0,
    proto_temperature=0.02,
    teacher_arch="clip_vit_b16",
    teacher_norm="imagenet",
    loss_weight=0.0005,
    cam_softmax_axis="row",
    cam_target_stopgrad=False,
    cam_norm="none",
    att_norm="group_minmax",
    bn_groups=2,
    loss_device_groups=2,
    proj_dim=32,
)
RECIPES = {"cub": ("bird", 200), "cars": ("car", 196), "aircraft": ("aircraft", 100)}
RECIPES["dogs"] = ("dog", 120)


def test_explain_is_the_grad_cam_of_l3_against_the_partners_keys_and_queue_two(tmp_path):
    """`explain` (python -m fgjax.cli.rationale): L3's InfoNCE, with queries from the
    images, keys from the key encoder on the partners, queue 2 (not MoCo's queue) and T;
    its Grad-CAM as LCR takes it."""
    method = method_for(_config(tmp_path))
    init = jax.jit(method.init_variables, static_argnums=1)
    params, model_state = init(jax.random.PRNGKey(0), (B, S, S, 3))
    state = method.init_state(params, model_state, jax.random.PRNGKey(4))
    images = jax.random.normal(jax.random.PRNGKey(5), (B, S, S, 3))
    partners = jnp.flip(images, axis=2)
    cam, attention = jax.jit(method.explain)(params, model_state, state, images, partners)

    apply = lambda x: method.net.apply({"params": params, **model_state}, x, train=False)
    maps = np.asarray(last_stage_map(apply(images)), np.float64)
    k = unit64(apply(partners)["proj"])  # the key encoder is the encoder at init
    head = jax.tree.map(np.asarray, params["projector"])
    pooled = maps.mean(axis=(1, 2))
    queue2 = np.asarray(state["queue2"], np.float64)
    _, d_pooled = _moco_and_pooled_grad(pooled, head, k, queue2, VALUES["temperature"])
    positions = maps.shape[1] * maps.shape[2]
    want = np.maximum(np.einsum("bhwc,bc->bhw", maps, d_pooled) / positions, 0.0)
    assert want.max() > 0 and (want == 0).any()
    np.testing.assert_allclose(cam, want, atol=1e-6, rtol=1e-4)
    # MoCo's queue would give another map
    _, d_other = _moco_and_pooled_grad(pooled, head, k, np.asarray(state["queue"]), 0.3)
    assert not np.allclose(d_other, d_pooled, rtol=1e-3)
    assert cam.shape == attention.shape == maps.shape[:3]


def test_recipes_are_the_spec_section_10_preset_with_full_size_shapes():
    from fgjax.methods import RunInfo, build_method

    for name, (prototypes, classes) in RECIPES.items():
        config = load_config_file(os.path.join(REPO, "configs", f"{name}_leadpp.py"))
        s = config.leadpp
        assert config.method == "leadpp" and config.data.kind == name
        assert {k: s[k] for k in SECTION_10} == SECTION_10, name
        assert s.prototypes == f"text_description_tensor/{prototypes}_text_tensor.pt"
        assert s.num_classes == classes and s.teacher_weights == "ViT-B-16.pt"
        assert config.views.view3.root == config.views.view4.root == f"data/{name}_ddt_crops"
        assert config.views.view1.root == config.views.view2.root == ""
        optim = config.optim
        assert (optim.name, optim.lr, optim.momentum, optim.weight_decay) == (
            "sgd",
            0.02,
            0.9,
            5e-4,
        )
        assert (optim.weight_decay_mask, optim.schedule_unit, optim.warmup_epochs) == (
            "all",
            "epoch",
            0.0,
        )
        assert (config.train.batch_size, config.train.num_epochs, config.seed) == (64, 100, 123)
        # The original's test transform: Resize((256, 256)) (aspect ignored), CenterCrop(224).
        data = config.data
        assert (data.eval_resize, data.eval_squash_size, data.image_size) == ("squash", 256, 224)
    assert config.data.train_split == "train"
    aircraft = load_config_file(os.path.join(REPO, "configs", "aircraft_leadpp.py"))
    assert aircraft.data.train_split == "trainval"
    # The linear probe (spec 7.1 and its switches): lincls on the mask-weighted descriptor
    # over the whole batch, every image a DDT crop, the best and the last epoch reported.
    probe = load_config_file(os.path.join(REPO, "configs", "cub_leadpp_lincls.py"))
    o = probe.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.schedule) == ("sgd", 30.0, 0.9, 0.0, "step")
    assert (tuple(o.decay_epochs), o.decay_factor, tuple(o.freeze)) == (
        (60, 80),
        0.1,
        ("backbone", "rationale"),
    )
    t = probe.train
    assert (t.batch_size, t.num_epochs, probe.eval.every_epochs) == (256, 100, 1)
    assert (probe.lincls.feature, probe.lincls.lcr_att_norm, probe.lincls.init_std) == (
        "lcr",
        "batch_minmax",
        0.01,
    )
    assert probe.lincls.lcr_maps == SECTION_10["proj_dim"]
    crops = load_config_file(os.path.join(REPO, "configs", "cub_leadpp.py")).views.view3.root
    assert probe.data.eval_root == probe.views.view1.root == crops
    assert (probe.data.eval_resize, probe.data.eval_squash_size) == ("squash", 256)

    # Full size (CUB): ResNet-50 at 224, CLIP ViT-B/16 teacher, one loss, all as shapes.
    config = load_config_file(os.path.join(REPO, "configs", "cub_leadpp.py"))
    config.model.dtype = "float32"
    run = RunInfo(93, 9300, 64, 200, 0, 5994)
    method = build_method(config, run)

    def shapes():
        rng = jax.random.PRNGKey(0)
        params, model_state = method.init_variables(rng, (2, 224, 224, 3))
        maps = method.backbone().apply(
            backbone_variables(params, model_state), jnp.zeros((2, 224, 224, 3)), train=False
        )["stage4"]
        state = method.init_state(params, model_state, rng)
        teacher = method.teacher.init(rng, jnp.zeros((1, 224, 224, 3)))
        frozen = {"teacher": teacher, "prototypes": jnp.zeros((200, 512))}
        views = {name: jnp.zeros((64, 224, 224, 3)) for name in method.view_names}
        ctx = StepContext(step=jnp.zeros((), jnp.int32), epoch=jnp.zeros(()), run=run)
        loss, aux = method.loss(params, model_state, state, frozen, views, {}, ctx, rng)
        return params, maps, state, teacher, loss, aux

    params, maps, state, teacher, loss, aux = jax.eval_shape(shapes)
    assert maps.shape == (2, 7, 7, 2048)  # layer4 at 224 with the stem max-pool
    assert params["projector"]["fc0"]["kernel"].shape == (2048, 2048)
    assert params["projector"]["fc1"]["kernel"].shape == (2048, 512)
    assert params["rationale"]["conv"]["kernel"].shape == (2048, 32)
    assert state["queue"].shape == state["queue2"].shape == (65536, 512)
    assert "rationale" not in state["key_params"]
    assert teacher["params"]["positional_embedding"].shape == (197, 768)  # ViT-B/16
    assert teacher["params"]["proj"].shape == (768, 512)
    assert loss.shape == () and aux.state_update["keys2"].shape == (64, 512)

    config.leadpp.dim = 256  # the projection must be the prototypes' / teacher's width
    with pytest.raises(ValueError, match="config.leadpp.dim=256 must match"):
        build_method(config, run)


def test_init_frozen_loads_the_clip_teacher_strictly_and_checks_the_prototypes(tmp_path):
    """The teacher from a CLIP checkpoint (the open_clip fixture of test_clip.py) embeds
    as open_clip does; prototype count and width mismatches are errors naming the file."""
    from fgjax.methods.leadpp.method import LEADPP

    fixtures = os.path.join(REPO, "tests", "fixtures")
    io = dict(np.load(os.path.join(fixtures, "clip_tiny_io.npz")))
    fields = json.loads(str(io["config"]))
    config = _config(tmp_path)
    config.leadpp.teacher_overrides = dict(
        img_size=fields["image_size"],
        patch_size=fields["patch_size"],
        width=fields["vision_width"],
        layers=fields["vision_layers"],
        heads=fields["vision_heads"],
        embed_dim=fields["embed_dim"],
    )
    config.leadpp.teacher_weights = os.path.join(fixtures, "clip_tiny.pth")
    config.leadpp.dim = fields["embed_dim"]
    config.views.view3.size = fields["image_size"]
    protos = np.eye(3, fields["embed_dim"], dtype=np.float32)
    np.save(tmp_path / "wide.npy", protos)
    config.leadpp.prototypes = str(tmp_path / "wide.npy")
    method = method_for(config)
    assert isinstance(method, LEADPP)
    frozen = method.init_frozen()
    got = method.teacher.apply(frozen["teacher"], io["images"])["pooled"]
    np.testing.assert_allclose(got, io["image"], atol=1e-4)
    np.testing.assert_array_equal(frozen["prototypes"], protos)
    config.leadpp.num_classes = 4
    with pytest.raises(ValueError, match=r"num_classes=4 but .*wide.npy has 3 rows"):
        method_for(config).init_frozen()
    config.leadpp.num_classes = 0
    np.save(tmp_path / "narrow.npy", protos[:, :8])
    config.leadpp.prototypes = str(tmp_path / "narrow.npy")
    with pytest.raises(ValueError, match=r"narrow.npy: prototypes are 8-d but config.leadpp.dim"):
        method_for(config).init_frozen()
