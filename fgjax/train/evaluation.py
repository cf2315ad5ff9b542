"""Evaluating a run's checkpoint or a weights file: the work of `fgjax eval`
(fgjax/cli/eval.py), in named steps.

    config = load_run_config("runs/cub_lcr")
    run = Run(config)
    evaluators = run.method.evaluators()  # e.g. HERBS' 9-head vote
    names, explicit = select_protocols(["retrieval", "knn"], evaluators, config.method)
    state, step = load_weights(run, config.seed, None, "runs/cub_lcr")
    weights = {"workdir": os.path.abspath("runs/cub_lcr"), "step": step}  # weights_identity
    settings = FeatureSettings("pooled")
    features = FeatureCache(config, run, state, out, weights, settings)
    results = run_protocols(names, explicit, evaluators, config, state, run, features)
    payload = eval_payload(results, step, os.path.abspath("runs/cub_lcr"), settings, run)
    write_report(out, payload, results, config, run, features("test", "pooled"), settings)

Features are extracted per split and encoder output, and cached in
`OUT/features_<split>[_<output>].npz` while the weights and settings are the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from fgjax.core.sharding import put_replicated
from fgjax.data.eval_loader import eval_crops, spread
from fgjax.eval import figures as plots
from fgjax.eval.cache import (
    cache_path,
    cached_features,
    files_identity,
    fingerprint,
    replaced_images,
)
from fgjax.eval.features import Embed, Features, MissingFeatureError, flip_averaged
from fgjax.eval.knn import nearest_neighbors
from fgjax.eval.protocols import PROTOCOLS
from fgjax.train.run import Run, feature_embed, restore_checkpoint
from fgjax.train.state import TrainState, create_train_state

Evaluators = dict[str, Callable[[Any, Any], dict[str, float]]]


class ProtocolError(Exception):
    """A protocol named explicitly cannot run on this model: `"<name>: <reason>"`."""


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """How features are computed: the default encoder output (`pooled`, `proj`,
    `stageN`, ...), averaged with the mirrored image (`flip`), recomputed even when
    cached (`refresh`)."""

    features: str = "pooled"
    flip: bool = False
    refresh: bool = False


def select_protocols(
    requested: list[str], evaluators: Evaluators, method_name: str
) -> tuple[list[str], bool]:
    """`(names, explicit)`: the protocols to run, each once, in order; `explicit` unless
    `requested` holds 'all' (every protocol and evaluator, those that do not apply to
    the model skipped). A name is a `PROTOCOLS` key or one of the method's `evaluators`
    (e.g. HERBS' 9-head vote); another raises ValueError."""
    explicit = "all" not in requested
    names = list(requested) if explicit else [*PROTOCOLS, *evaluators]
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in PROTOCOLS and n not in evaluators]
    if unknown:
        raise ValueError(
            f"unknown protocol {unknown[0]!r}; choose from {sorted(PROTOCOLS)}, the "
            f"evaluators of config.method={method_name!r} {sorted(evaluators)}, or 'all'"
        )
    return names, explicit


def load_weights(
    run: Run, seed: int, init_from: str | None, workdir: str | None, step: int | None = None
) -> tuple[TrainState, int | None]:
    """`(state replicated on run.mesh, step)`: a fresh model of the recipe loaded from
    the weights file `init_from` (step None), else `workdir`'s checkpoint (the newest, or
    `step`)."""
    if init_from:
        state = create_train_state(run.method, None, run.image_shape, seed, init_from)
    else:
        state, step = restore_checkpoint(run, seed, workdir, step)
    return put_replicated(state, run.mesh), step


class FeatureCache:
    """Features of a split (role 'train' or 'test') and encoder output, extracted once
    per evaluation and cached in `out` under a fingerprint of the weights (`weights`, see
    `fgjax.train.run.weights_identity`), settings, data, model and image files. Every
    process takes part in an extraction; only `write` ones write the cache."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        run: Run,
        state: TrainState,
        out: str,
        weights: dict[str, Any],
        settings: FeatureSettings,
        write: bool = True,
        log: Callable[[str], None] = print,
    ):
        self.config, self.run, self.state, self.out = config, run, state, out
        self.weights, self.settings, self.write, self.log = weights, settings, write, log
        self._embeds: dict[str, Embed] = {}
        self._features: dict[tuple[str, str], Features] = {}

    def __call__(self, role: str, output: str) -> Features:
        """The features of split `role` for encoder `output`: from memory, the cache
        file, or extracted (and cached)."""
        if (role, output) not in self._features:
            self._features[(role, output)] = self._load_or_extract(role, output)
        return self._features[(role, output)]

    def _embed(self, output: str) -> Embed:
        """The embedding of `output`, flip-averaged under `settings.flip`."""
        if output not in self._embeds:
            embed = feature_embed(self.run.method, output)
            self._embeds[output] = flip_averaged(embed) if self.settings.flip else embed
        return self._embeds[output]

    def _key(self, role: str, output: str) -> str:
        """The fingerprint a cache file must carry to be reused."""
        c = self.config
        data = {k: v for k, v in c.data.to_dict().items() if k != "num_workers"}
        return fingerprint(
            dict(
                weights=self.weights,
                feature=output,
                flip=self.settings.flip,
                data=data,
                split=c.data[f"{role}_split"],
                model=c.model.to_dict(),
                files=files_identity(self.run.sources[role]),
            )
        )

    def _load_or_extract(self, role: str, output: str) -> Features:
        embed, extractor = self._embed(output), self.run.extractor
        key = self._key(role, output)
        name = role if output == self.settings.features else f"{role}_{output}"
        path = cache_path(self.out, name)
        features, hit = cached_features(
            path,
            key,
            lambda: extractor.extract(role, embed, self.state),
            paths=getattr(self.run.sources[role], "paths", None),
            write=self.write,
            refresh=self.settings.refresh,
            replaced=lambda: extractor.replaced.get(role, []),
        )
        if hit:
            self.log(f"features {role}: loaded {path}")
            extractor.replaced[role] = replaced_images(path)
        return features


def run_protocols(
    names: list[str],
    explicit: bool,
    evaluators: Evaluators,
    config: ml_collections.ConfigDict,
    state: TrainState,
    run: Run,
    features: FeatureCache,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run each of `names` (from `select_protocols`): `name/metric` for a method's
    evaluator (keys as in the trainer's eval.json), `name_metric` for a protocol on the
    features its splits need. A protocol that does not apply to the model raises
    `ProtocolError` when `explicit`; under 'all' it is skipped (a missing default feature
    still raises)."""
    results: dict[str, float] = {}
    for name in names:
        if name in evaluators:
            metrics = evaluators[name](state, run.extractor)
            results.update({f"{name}/{k}": float(v) for k, v in metrics.items()})
            continue
        protocol = PROTOCOLS[name]
        output = protocol.output or features.settings.features
        try:
            feats = {role: features(role, output) for role in protocol.splits(config)}
            metrics = protocol.run(feats, config)
        except (NotImplementedError, MissingFeatureError) as err:
            if explicit or (isinstance(err, MissingFeatureError) and protocol.output is None):
                raise ProtocolError(f"{name}: {err}") from None
            log(f"skipped {name}: {err}")  # 'all' runs what applies to this model
            continue
        results.update({f"{name}_{k}": float(v) for k, v in metrics.items()})
    return results


def eval_payload(
    results: dict[str, float], step: int | None, weights: str, settings: FeatureSettings, run: Run
) -> dict[str, Any]:
    """What eval.json holds: the step (None for a weights file), the `weights` (file or
    workdir), the feature settings, the numbers, and the images the extraction replaced
    by black stand-ins (config.data.skip_bad: the numbers are not of these images)."""
    payload = {
        "step": step,
        "weights": weights,
        "features": settings.features,
        "flip": settings.flip,
        **results,
    }
    replaced = {split: names for split, names in run.extractor.replaced.items() if names}
    if replaced:
        payload["replaced_images"] = replaced
    return payload


def write_report(
    out: str,
    payload: dict[str, Any],
    results: dict[str, float],
    config: ml_collections.ConfigDict,
    run: Run,
    test: Features | None,
    settings: FeatureSettings,
    grid_queries: int = 6,
    grid_k: int = 5,
) -> str:
    """Write `payload` to `out`/eval.json and, given the `test` features,
    retrieval_grid.png, embedding_map.png and recall_curve.png (when `results` hold
    recalls); returns the eval.json path. Process 0's work."""
    path = os.path.join(out, "eval.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    if test is not None:
        grid_pictures(out, run, test, config, settings, grid_queries, grid_k)
        if plots.recall_points(results)[0]:
            plots.recall_curve(os.path.join(out, "recall_curve.png"), {out: results})
    return path


def grid_pictures(
    out: str,
    run: Run,
    test: Features,
    config: ml_collections.ConfigDict,
    settings: FeatureSettings,
    queries: int = 6,
    k: int = 5,
) -> None:
    """`out`/retrieval_grid.png (`queries` test images spread over the split, each with
    its `k` nearest other test images) and `out`/embedding_map.png (the test features)."""
    source = run.sources["test"]
    n = len(test.labels)
    picked = spread(n, queries)
    _, neighbours = nearest_neighbors(test.features[picked], test.features, k + 1)
    # Leave the query itself out (the search above includes it; drop its own row).
    rows = [[j for j in nb if j != q][:k] for q, nb in zip(picked, neighbours, strict=True)]
    k = min(len(r) for r in rows)
    ids = np.array([[q, *r[:k]] for q, r in zip(picked, rows, strict=True)])
    images = np.stack([eval_crops(source, r, config.data) for r in ids])
    correct = test.labels[ids[:, 1:]] == test.labels[ids[:, :1]]
    names = [[source.class_names[test.labels[i]] for i in r] for r in ids]
    plots.retrieval_grid(os.path.join(out, "retrieval_grid.png"), images, correct, names)
    plots.embedding_map(
        os.path.join(out, "embedding_map.png"),
        test.features,
        test.labels,
        source.class_names,
        title=f"{config.data.kind}/{config.data.test_split}: {settings.features}"
        + (" + flip" if settings.flip else ""),
    )
