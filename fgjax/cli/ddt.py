"""DDT localisation and crops (LEAD++'s preprocessing): `fgjax ddt`.

    fgjax ddt --config configs/cub_moco.py --out data/CUB_ddt \\
        --weights resnet50-19c8e357.pth --config.data.root=data/CUB_200_2011

Fits the mean and first principal direction of the recipe backbone's layer4 descriptors
over the images of the fitting splits (default: every cropped split, i.e. train + test as
the code), locates one box per image, applies the dataset's crop policy and writes each
crop under --out at the image's path relative to the dataset root: the parallel root a
view reads with `--config.views.<view>.root=OUT`. Also writes OUT/boxes.tsv (one row per
image, see `ddt.run.BOX_COLUMNS`) and OUT/contact_sheet.png. A rerun reuses the fit
and the maps (OUT/ddt_fit.npz, OUT/ddt_maps_<split>.npz) while weights, model, data and
sizes are the same, and keeps crops whose box did not change.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from fgjax.config import load_config_file
from fgjax.core.cli import command
from fgjax.methods.leadpp.ddt.crops import DDTSettings
from fgjax.methods.leadpp.ddt.locate import CUT_RATES, KIND_POLICIES, MASK_RULES, POLICIES
from fgjax.methods.leadpp.ddt.pca import PCA_SIGNS

DEFAULTS = DDTSettings()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fgjax ddt",
        description=__doc__.split("\n\n")[0],
        epilog="Any --config.FIELD=VALUE overrides that field of the recipe.",
    )
    p.add_argument(
        "--config", required=True, help="recipe file or a run's config.json (its model and data)"
    )
    p.add_argument("--out", required=True, help="output root (crops, boxes.tsv, sheet)")
    p.add_argument(
        "--split",
        action="append",
        help="splits to crop (repeatable or comma-separated; default config.data.train_split "
        "and test_split)",
    )
    p.add_argument("--fit-split", action="append", help="splits to fit on (default: --split)")
    p.add_argument("--weights", help="backbone weights file (default config.model.init_from)")
    p.add_argument("--layer", default="stage4", help="the backbone map (default stage4)")
    p.add_argument("--fit-size", type=int, default=DEFAULTS.fit_size, help="fit Resize (512)")
    p.add_argument(
        "--locate-size", type=int, default=DEFAULTS.locate_size, help="locate Resize (448)"
    )
    p.add_argument(
        "--cut-rates",
        default=",".join(f"{r:g}" for r in CUT_RATES),
        help="comma-separated cut rates of the box search",
    )
    p.add_argument(
        "--mask-rule",
        choices=MASK_RULES,
        default=DEFAULTS.mask_rule,
        help="leadpp: P above the smallest P >= 0 (the code); ddt: P > 0 (original DDT)",
    )
    p.add_argument("--over-num", type=float, default=DEFAULTS.over_num, help="leadpp threshold")
    p.add_argument(
        "--pca-sign",
        choices=PCA_SIGNS,
        default=DEFAULTS.pca_sign,
        help="max_abs: largest |entry| positive (the code); border: also flip when the "
        "positive cells lie mostly on the map's border",
    )
    p.add_argument("--fix-xyxy", action="store_true", help="do not misread boxes as xywh")
    p.add_argument(
        "--policy",
        choices=sorted(POLICIES),
        help=f"crop policy (default by config.data.kind: {KIND_POLICIES}, else square)",
    )
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--sheet", type=int, default=24, help="images in contact_sheet.png")
    p.add_argument("--no-cache", action="store_true", help="refit and recompute the maps")
    return p


def _names(values: list[str] | None, default: list[str]) -> list[str]:
    names = [n for v in values or [] for n in v.split(",") if n]
    return list(dict.fromkeys(names or default))


def ddt(argv: list[str]) -> dict[str, Any]:
    """Run the command line `argv` (without the program name); returns the summary."""
    import jax

    from fgjax.core.sharding import make_mesh
    from fgjax.data.datasets import build_source
    from fgjax.eval.cache import fingerprint
    from fgjax.methods.leadpp.ddt.crops import (
        backbone_features,
        check_file_source,
        load_backbone,
        locate_dataset,
    )
    from fgjax.train.run import apply_overrides

    overrides = [x for x in argv if x.startswith("--config.")]
    a = _parser().parse_args([x for x in argv if not x.startswith("--config.")])
    config = load_config_file(a.config)
    apply_overrides(config, overrides)
    weights = a.weights or config.model.init_from
    if not weights:
        raise ValueError("give --weights FILE (or set config.model.init_from)")
    if not any(x.startswith("--config.model.dtype=") for x in overrides):
        config.model.dtype = "float32"  # the code's DDT runs in float32
    try:
        cut_rates = tuple(float(r) for r in a.cut_rates.split(",") if r)
    except ValueError:
        raise ValueError(f"--cut-rates: numbers separated by commas, got {a.cut_rates!r}") from None
    settings = DDTSettings(
        fit_size=a.fit_size,
        locate_size=a.locate_size,
        cut_rates=cut_rates,
        mask_rule=a.mask_rule,
        over_num=a.over_num,
        pca_sign=a.pca_sign,
        fix_xyxy=a.fix_xyxy,
        policy=a.policy or KIND_POLICIES.get(config.data.kind, "square"),
        batch_size=a.batch_size,
    )
    splits = _names(a.split, [config.data.train_split, config.data.test_split])
    fit_splits = _names(a.fit_split, splits)
    if not set(fit_splits) <= set(splits):
        raise ValueError(f"--fit-split {fit_splits}: fit on splits that are cropped ({splits})")
    sources = {s: build_source(config.data, s) for s in splits}
    for split, source in sources.items():
        check_file_source(source, split, config.data.kind)
        print(f"ddt data {config.data.kind}/{split}: {len(source)} images")
    print(f"ddt settings: {settings}; fit on {fit_splits}")
    backbone, variables = load_backbone(config.model, weights)
    info = os.stat(weights)
    data = {k: v for k, v in config.data.to_dict().items() if k != "num_workers"}
    key = None
    if not a.no_cache:
        key = fingerprint(
            dict(
                weights=[os.path.abspath(weights), info.st_size, info.st_mtime],
                model=config.model.to_dict(),
                data=data,
                layer=a.layer,
            )
        )
    return locate_dataset(
        sources,
        fit_splits,
        backbone_features(backbone, a.layer),
        jax.device_put(variables),
        settings,
        a.out,
        mesh=make_mesh(),
        num_workers=config.data.num_workers,
        cache_key=key,
        sheet=a.sheet,
        show_progress=config.train.progress_bar,
    )


main = command(ddt)


if __name__ == "__main__":
    main()
