"""DDT localisation and crops, LEAD++'s preprocessing (spec leadpp.md section 4).

    fgjax ddt --config RECIPE --out ROOT --weights resnet50-19c8e357.pth

`pca`: the fit (moments streamed on the device, the first principal direction and its
sign rule); `locate`: the mask (threshold, largest 4-connected component), the cut-rate
box search and the crop policies; `run`: the passes over a dataset and what they write
(crops under a parallel root, boxes.tsv, contact_sheet.png).
"""

from fgjax.methods.leadpp.ddt.crops import DDTSettings, locate_dataset, read_boxes
from fgjax.methods.leadpp.ddt.locate import POLICIES, crop_policy, ddt_mask, search_box
from fgjax.methods.leadpp.ddt.pca import principal_direction, sign_rule

__all__ = [
    "POLICIES",
    "DDTSettings",
    "crop_policy",
    "ddt_mask",
    "locate_dataset",
    "principal_direction",
    "read_boxes",
    "search_box",
    "sign_rule",
]
