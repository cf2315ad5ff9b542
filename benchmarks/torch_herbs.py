"""HERBS in PyTorch, written from shared/methods/herbs.md (not from the HERBS repository):
the head (section 3), the timm Swin taps (section 2.4), the loss (section 4) and the
original's training step (section 5: SGD Nesterov, fp16 autocast + GradScaler, gradient
accumulation). Standalone (torch, and timm for the backbone); fgjax never imports it.

Used by `benchmarks/herbs_step.py` (the PyTorch side of the train-step benchmark) and
`tests/fixtures/make_herbs_fixtures.py` (the head parity fixture).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Spec 4 / 5.1 loss weights (configs/config.yaml of the original code).
LOSS_WEIGHTS = {"hr": 1.375, "layer": 0.3, "drop": 5.0, "select": 0.0, "comb": 1.0}


def mlp2(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


def token_classifier(d: int, n: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(d, d, 1), nn.BatchNorm1d(d), nn.ReLU(), nn.Conv1d(d, n, 1))


class HerbsHead(nn.Module):
    """HERBS head from the spec; attribute names = best.pt keys (section 8.2 (C)).

    `tokens` S_k and `channels` C_k of the taps `layer1..layerL`, D = `fpn_size`, K_k =
    `num_selects`; `tokens_per_node` is HERBS' hard-coded 64 (graph nodes = sum(K) // it).
    Input: the taps `[B, S_k, C_k]`; output: the 17 logits of spec 3.8.
    """

    def __init__(
        self,
        tokens: Sequence[int],
        channels: Sequence[int],
        fpn_size: int,
        num_classes: int,
        num_selects: Sequence[int],
        tokens_per_node: int,
        comb_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        d, n, levels = fpn_size, num_classes, len(tokens)
        if not all(0 < k < s for k, s in zip(num_selects, tokens, strict=True)):
            raise ValueError(f"num_selects {num_selects} must be in [1, S_k) for tokens {tokens}")
        self.num_selects = tuple(num_selects)
        self.fpn_down = nn.Module()
        self.fpn_up = nn.Module()
        for k in range(1, levels + 1):
            c = channels[k - 1]
            self.fpn_down.add_module(f"Proj_layer{k}", mlp2(c, c, d))
            self.fpn_up.add_module(f"Proj_layer{k}", mlp2(d, d, d))
            if k > 1:  # level k's tokens -> level k-1's tokens
                self.fpn_down.add_module(f"Up_layer{k}", nn.Conv1d(tokens[k - 1], tokens[k - 2], 1))
            if k < levels:  # level k's tokens -> level k+1's tokens
                self.fpn_up.add_module(f"Down_layer{k}", nn.Conv1d(tokens[k - 1], tokens[k], 1))
        for k in range(1, levels + 1):
            self.add_module(f"fpn_classifier_down_layer{k}", token_classifier(d, n))
        for k in range(1, levels + 1):
            self.add_module(f"fpn_classifier_up_layer{k}", token_classifier(d, n))
        total = sum(num_selects)
        nodes = total // tokens_per_node
        comb = nn.Module()
        comb.param_pool0 = nn.Linear(total, nodes)
        comb.adj1 = nn.Parameter(torch.eye(nodes) / 100 + 1 / 100)
        comb.conv1 = nn.Conv1d(d, d, 1)
        comb.batch_norm1 = nn.BatchNorm1d(d)
        comb.conv_q1 = nn.Conv1d(d, d // 4, 1)
        comb.conv_k1 = nn.Conv1d(d, d // 4, 1)
        comb.alpha1 = nn.Parameter(torch.zeros(1))
        comb.param_pool1 = nn.Linear(nodes, 1)
        comb.dropout = nn.Dropout(comb_dropout)
        comb.classifier = nn.Linear(d, n)
        self.combiner = comb

    @staticmethod
    def per_token(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Channel Conv1d stack on [B, S, C] -> [B, S, out] (Conv1d wants [B, C, S])."""
        return module(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, taps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        levels = len(taps)
        out: dict[str, torch.Tensor] = {}
        # 3.1 + 3.2: project every tap to D, then add the token-mixed coarser level.
        proj = [getattr(self.fpn_down, f"Proj_layer{k + 1}")(f) for k, f in enumerate(taps)]
        p = list(proj)
        for k in range(levels - 2, -1, -1):
            p[k] = proj[k] + getattr(self.fpn_down, f"Up_layer{k + 2}")(p[k + 1])
        # 3.3: first-pass classifiers.
        for k in range(levels):
            cls = getattr(self, f"fpn_classifier_down_layer{k + 1}")
            out[f"FPN1_layer{k + 1}"] = self.per_token(cls, p[k])
        # 3.4 + 3.5: bottom-up refinement and refined classifiers.
        q = [getattr(self.fpn_up, f"Proj_layer{k + 1}")(x) for k, x in enumerate(p)]
        feats = list(q)
        for k in range(1, levels):
            feats[k] = q[k] + getattr(self.fpn_up, f"Down_layer{k}")(feats[k - 1])
        # 3.6: per sample (a Python loop over the batch, as in the original), rank tokens by
        # confidence in the image-level predicted class.
        kept = []
        for k in range(levels):
            logits = self.per_token(getattr(self, f"fpn_classifier_up_layer{k + 1}"), feats[k])
            out[f"layer{k + 1}"] = logits
            sel_f, sel_l, drop_l = [], [], []
            for b in range(logits.shape[0]):
                cls = torch.softmax(logits[b].mean(0), dim=-1).argmax()
                conf = torch.softmax(logits[b], dim=-1)[:, cls]
                order = torch.sort(conf, descending=True).indices
                keep, drop = order[: self.num_selects[k]], order[self.num_selects[k] :]
                sel_f.append(feats[k][b, keep])
                sel_l.append(logits[b, keep])
                drop_l.append(logits[b, drop])
            kept.append(torch.stack(sel_f))
            out[f"select_layer{k + 1}"] = torch.stack(sel_l)
            out[f"drop_layer{k + 1}"] = torch.stack(drop_l)
        # 3.7: GCN combiner, channels-first [B, D, tokens] as in the original.
        c = self.combiner
        x = c.param_pool0(torch.cat(kept, dim=1).transpose(1, 2))  # [B, D, J]
        qn = c.conv_q1(x).mean(1)  # [B, J]
        kn = c.conv_k1(x).mean(1)
        adj = c.adj1 + c.alpha1 * torch.tanh(qn[:, :, None] - kn[:, None, :])
        z = c.batch_norm1(torch.matmul(c.conv1(x), adj))
        z = c.dropout(c.param_pool1(z)).flatten(1)
        out["comb_outs"] = c.classifier(z)
        return out


def swin_taps(swin: nn.Module, x: torch.Tensor, checkpoint: bool = False) -> list[torch.Tensor]:
    """HERBS' `layer1..layer4` `[B, S_k, C_k]` of a new-timm (>= 0.9) SwinTransformer.

    timm 0.4.12 semantics (spec 2.4): a tap is a stage's output AFTER its patch merging;
    new timm merges at the START of the next stage, so tap_k = layers[k].downsample(
    layers[k-1](...)) for k < L and tap_L = layers[L-1](...). `checkpoint` recomputes each
    Swin block in the backward pass (timm's `checkpoint_seq`, one block per segment).
    """
    from timm.models import checkpoint_seq

    def blocks(stage: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return checkpoint_seq(stage.blocks, h) if checkpoint else stage.blocks(h)

    layers = swin.layers
    h = blocks(layers[0], layers[0].downsample(swin.patch_embed(x)))  # NHWC
    taps = []
    for k in range(1, len(layers)):
        h = layers[k].downsample(h)
        taps.append(h)
        h = blocks(layers[k], h)
    taps.append(h)
    return [t.reshape(t.shape[0], -1, t.shape[-1]) for t in taps]


class HerbsNet(nn.Module):
    """timm Swin (its final norm and head unused, as in HERBS) + HerbsHead:
    `[B, 3, H, W]` -> the head's dict of logits."""

    def __init__(self, swin: nn.Module, head: HerbsHead, checkpoint: bool = False) -> None:
        super().__init__()
        self.backbone, self.head, self.checkpoint = swin, head, checkpoint

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(swin_taps(self.backbone, x, self.checkpoint))


def build_herbs(
    arch: str,
    num_classes: int,
    fpn_size: int,
    num_selects: Sequence[int],
    tokens_per_node: int,
    image_size: int,
    drop_path_rate: float = 0.1,
    checkpoint: bool = False,
    **swin_kwargs,
) -> HerbsNet:
    """Random-init timm Swin `arch` (no download) with a HERBS head sized from its taps at
    `image_size`; `swin_kwargs` go to `timm.create_model` (e.g. a tiny `embed_dim`)."""
    import timm

    swin = timm.create_model(
        arch,
        pretrained=False,
        num_classes=0,
        drop_path_rate=drop_path_rate,
        img_size=image_size,
        **swin_kwargs,
    )
    with torch.no_grad():
        taps = swin_taps(swin.eval(), torch.zeros(1, 3, image_size, image_size))
    head = HerbsHead(
        tokens=[t.shape[1] for t in taps],
        channels=[t.shape[2] for t in taps],
        fpn_size=fpn_size,
        num_classes=num_classes,
        num_selects=num_selects,
        tokens_per_node=tokens_per_node,
    )
    return HerbsNet(swin.train(), head, checkpoint)


def herbs_loss(
    out: dict[str, torch.Tensor],
    labels: torch.Tensor,
    temperature: float,
    weights: dict[str, float] = LOSS_WEIGHTS,
) -> torch.Tensor:
    """Spec 4: sum over levels of 1.375 L_HR + 0.3 L_layer + 5 L_drop (+ L_sel, skipped at
    weight 0) and 1.0 L_comb, as the original computes it (inside autocast)."""
    levels = sum(1 for name in out if name.startswith("layer"))
    loss = weights["comb"] * F.cross_entropy(out["comb_outs"], labels)
    for k in range(1, levels + 1):
        refined, first = out[f"layer{k}"], out[f"FPN1_layer{k}"]
        teacher = torch.softmax(refined.detach() / temperature, dim=-1)
        student = torch.log_softmax(first / temperature, dim=-1)
        # KLDivLoss() with its default 'mean' reduction: over every element, no T^2
        # (spelt out: torch warns that reduction='mean' will become 'batchmean').
        loss = loss + weights["hr"] * F.kl_div(student, teacher, reduction="none").mean()
        loss = loss + weights["layer"] * F.cross_entropy(refined.mean(1), labels)
        dropped = torch.tanh(out[f"drop_layer{k}"])
        loss = loss + weights["drop"] * F.mse_loss(dropped, -torch.ones_like(dropped))
        if weights["select"]:
            sel = out[f"select_layer{k}"]
            loss = loss + weights["select"] * F.cross_entropy(
                sel.flatten(0, 1), labels.repeat_interleave(sel.shape[1])
            )
    return loss


def make_train_step(
    net: HerbsNet,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    amp: str,
    lr: float = 5e-4,
    weight_decay: float = 3e-4,
    temperature: float = 64.0,
) -> Callable[[], torch.Tensor]:
    """One optimiser step of the original recipe over `micro_batches` (images, labels):
    per micro-batch the forward and loss under autocast, the loss divided by their count,
    a (scaled) backward; then SGD (momentum 0.9, Nesterov, coupled weight decay) and
    `zero_grad`. `amp`: 'fp16' (autocast + GradScaler, the original), 'bf16' (autocast,
    no scaler) or 'none'. Returns the closure; it returns the last micro-batch's loss."""
    device = micro_batches[0][0].device
    opt = torch.optim.SGD(
        net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "none": None}[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    n = len(micro_batches)

    def step() -> torch.Tensor:
        for images, labels in micro_batches:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = herbs_loss(net(images), labels, temperature) / n
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        return loss

    return step
