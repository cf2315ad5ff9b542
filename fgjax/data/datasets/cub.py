"""CUB-200-2011 as distributed: `CUB_200_2011/` with images.txt, image_class_labels.txt,
train_test_split.txt (1 = train), bounding_boxes.txt (x y w h) and classes.txt.

Splits: 'train' / 'test' (official, 5,994 / 5,794), 'all', and the metric-learning
retrieval protocol 'retrieval_train' / 'retrieval_test': the first half of the classes
(1-100) against the second (101-200), every image of a class on its side. Labels are
positions in classes.txt (official id - 1). Coarse levels: 'family' (the default), the last
word of the species name (Albatross, Warbler, ...), and 'bucsfr', the 24 hand-made groups of
BuCSFR (`BUCSFR_GROUPS`). `config.data.crop_to_box` crops every image to its bird box first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from fgjax.data.datasets import register_dataset
from fgjax.data.layout import (
    DatasetFormatError,
    dataset_folder,
    keyed_values,
    parse_boxes,
    parse_int,
    read_keyed,
    require_paths,
    train_flags,
)
from fgjax.data.sources import CoarseLevel, LabeledSource, coarse_from_names, last_word, name_words

FOLDER = "CUB_200_2011"
INDEX_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "classes.txt",
)
LAYOUT = f"the official {FOLDER}/ folder ({', '.join(INDEX_FILES)}, images/)"
SPLITS = ("train", "test", "all", "retrieval_train", "retrieval_test")

# BuCSFR's 24 groups (datasets/cub200.py, `CUB200.fine_to_coarse`), in its order (= coarse
# ids), by the classes.txt names without the 'NNN.' prefix. The original capitalises every
# word ('Black_Footed_Albatross'); names are matched ignoring case, so both spellings work.
# fmt: off
BUCSFR_GROUPS: dict[str, tuple[str, ...]] = {
    "Waterbird": (
        "Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Crested_Auklet",
        "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet", "Horned_Puffin", "Pigeon_Guillemot",
        "Brandt_Cormorant", "Red_faced_Cormorant", "Pelagic_Cormorant", "Eared_Grebe",
        "Horned_Grebe", "Pied_billed_Grebe", "Western_Grebe", "Brown_Pelican", "White_Pelican",
        "Frigatebird", "Northern_Fulmar", "Long_tailed_Jaeger", "Pomarine_Jaeger",
        "California_Gull", "Glaucous_winged_Gull", "Heermann_Gull", "Herring_Gull", "Ivory_Gull",
        "Ring_billed_Gull", "Slaty_backed_Gull", "Western_Gull", "Artic_Tern", "Black_Tern",
        "Caspian_Tern", "Common_Tern", "Elegant_Tern", "Forsters_Tern", "Least_Tern",
        "Pacific_Loon", "Gadwall", "Mallard", "Hooded_Merganser", "Red_breasted_Merganser",
        "Red_legged_Kittiwake",
    ),
    "Icterid": (
        "Brewer_Blackbird", "Red_winged_Blackbird", "Rusty_Blackbird", "Yellow_headed_Blackbird",
        "Bobolink", "Bronzed_Cowbird", "Shiny_Cowbird", "Boat_tailed_Grackle", "Baltimore_Oriole",
        "Hooded_Oriole", "Orchard_Oriole", "Scott_Oriole", "Western_Meadowlark",
    ),
    "Finch": (
        "American_Goldfinch", "European_Goldfinch", "Gray_crowned_Rosy_Finch", "Purple_Finch",
    ),
    "Grosbeak/Cardinal": (
        "Blue_Grosbeak", "Evening_Grosbeak", "Pine_Grosbeak", "Rose_breasted_Grosbeak", "Cardinal",
    ),
    "Bunting": ("Indigo_Bunting", "Lazuli_Bunting", "Painted_Bunting"),
    "Sparrow": (
        "Baird_Sparrow", "Black_throated_Sparrow", "Brewer_Sparrow", "Chipping_Sparrow",
        "Clay_colored_Sparrow", "House_Sparrow", "Field_Sparrow", "Fox_Sparrow",
        "Grasshopper_Sparrow", "Harris_Sparrow", "Henslow_Sparrow", "Le_Conte_Sparrow",
        "Lincoln_Sparrow", "Nelson_Sharp_tailed_Sparrow", "Savannah_Sparrow", "Seaside_Sparrow",
        "Song_Sparrow", "Tree_Sparrow", "Vesper_Sparrow", "White_crowned_Sparrow",
        "White_throated_Sparrow", "Dark_eyed_Junco", "Horned_Lark", "Eastern_Towhee",
        "Green_tailed_Towhee",
    ),
    "Warbler/Chat": (
        "Bay_breasted_Warbler", "Black_and_white_Warbler", "Black_throated_Blue_Warbler",
        "Blue_winged_Warbler", "Canada_Warbler", "Cape_May_Warbler", "Cerulean_Warbler",
        "Chestnut_sided_Warbler", "Golden_winged_Warbler", "Hooded_Warbler", "Kentucky_Warbler",
        "Magnolia_Warbler", "Mourning_Warbler", "Myrtle_Warbler", "Nashville_Warbler",
        "Orange_crowned_Warbler", "Palm_Warbler", "Pine_Warbler", "Prairie_Warbler",
        "Prothonotary_Warbler", "Swainson_Warbler", "Tennessee_Warbler", "Wilson_Warbler",
        "Worm_eating_Warbler", "Yellow_Warbler", "Northern_Waterthrush", "Louisiana_Waterthrush",
        "Common_Yellowthroat", "American_Redstart", "Ovenbird", "Yellow_breasted_Chat",
    ),
    "Flycatcher": (
        "Acadian_Flycatcher", "Great_Crested_Flycatcher", "Least_Flycatcher",
        "Olive_sided_Flycatcher", "Scissor_tailed_Flycatcher", "Vermilion_Flycatcher",
        "Yellow_bellied_Flycatcher", "Western_Wood_Pewee", "Sayornis", "Tropical_Kingbird",
        "Gray_Kingbird",
    ),
    "Vireo": (
        "Black_capped_Vireo", "Blue_headed_Vireo", "Philadelphia_Vireo", "Red_eyed_Vireo",
        "Warbling_Vireo", "White_eyed_Vireo", "Yellow_throated_Vireo",
    ),
    "Wren": (
        "Bewick_Wren", "Cactus_Wren", "Carolina_Wren", "House_Wren", "Marsh_Wren", "Rock_Wren",
        "Winter_Wren",
    ),
    "Thrasher/Mimid": (
        "Spotted_Catbird", "Gray_Catbird", "Brown_Thrasher", "Sage_Thrasher", "Mockingbird",
    ),
    "Nightjar": ("Chuck_will_Widow", "Nighthawk", "Whip_poor_Will"),
    "Hummingbird": (
        "Anna_Hummingbird", "Ruby_throated_Hummingbird", "Rufous_Hummingbird", "Green_Violetear",
    ),
    "Woodpecker": (
        "American_Three_toed_Woodpecker", "Pileated_Woodpecker", "Red_bellied_Woodpecker",
        "Red_cockaded_Woodpecker", "Red_headed_Woodpecker", "Downy_Woodpecker", "Northern_Flicker",
    ),
    "Corvid": (
        "American_Crow", "Fish_Crow", "Common_Raven", "White_necked_Raven", "Blue_Jay",
        "Florida_Jay", "Green_Jay", "Clark_Nutcracker",
    ),
    "Cuculidae": (
        "Black_billed_Cuckoo", "Mangrove_Cuckoo", "Yellow_billed_Cuckoo", "Groove_billed_Ani",
        "Geococcyx",
    ),
    "Swallow": ("Bank_Swallow", "Barn_Swallow", "Cliff_Swallow", "Tree_Swallow"),
    "Tanager": ("Scarlet_Tanager", "Summer_Tanager"),
    "Pipit": ("American_Pipit",),
    "Bark_Forager": ("White_breasted_Nuthatch", "Brown_Creeper"),
    "Shrike": ("Loggerhead_Shrike", "Great_Grey_Shrike"),
    "Kingfisher": (
        "Belted_Kingfisher", "Green_Kingfisher", "Pied_Kingfisher", "Ringed_Kingfisher",
        "White_breasted_Kingfisher",
    ),
    "Starling": ("Cape_Glossy_Starling",),
    "Waxwing": ("Bohemian_Waxwing", "Cedar_Waxwing"),
}
# fmt: on


def _species_key(class_name: str) -> str:
    """'001.Black_footed_Albatross' / 'Black_Footed_Albatross' -> 'black_footed_albatross'."""
    return "_".join(name_words(class_name)).lower()


def bucsfr_level(class_names: Sequence[str], source: str = "classes.txt") -> CoarseLevel:
    """BUCSFR_GROUPS as a coarse level over `class_names` (classes.txt order, with or without
    the 'NNN.' prefix; any subset of the 200 species). All 24 groups are kept, in BuCSFR's
    order, even when a subset leaves some empty. `source` names the list in errors."""
    group_of = {
        _species_key(name): k
        for k, members in enumerate(BUCSFR_GROUPS.values())
        for name in members
    }
    unknown = [c for c in class_names if _species_key(c) not in group_of]
    if unknown:
        raise DatasetFormatError(
            f"{source}: class(es) {unknown[:5]} are in none of BuCSFR's 24 CUB groups "
            "(config.data.coarse='bucsfr' needs the official CUB-200-2011 class names)"
        )
    of_class = [group_of[_species_key(c)] for c in class_names]
    return CoarseLevel(list(BUCSFR_GROUPS), np.array(of_class, np.int32))


@register_dataset("cub", splits=SPLITS, coarse_levels=("family", "bucsfr"), layout=LAYOUT)
def cub(data_config, split: str) -> LabeledSource:
    base = dataset_folder(data_config.root, FOLDER)
    require_paths(base, [*INDEX_FILES, "images"], kind="cub", layout=LAYOUT)
    files = {name: os.path.join(base, name) for name in INDEX_FILES}
    images = read_keyed(files["images.txt"], 1)
    if not images:
        raise DatasetFormatError(f"{files['images.txt']}: lists no images")
    ids = sorted(images)
    class_rows = read_keyed(files["classes.txt"], 1)
    class_names = [class_rows[c][0] for c in sorted(class_rows)]
    position = {c: k for k, c in enumerate(sorted(class_rows))}
    class_of = [
        parse_int(v[0], files["image_class_labels.txt"], f"of image {i}")
        for i, v in zip(ids, keyed_values(files["image_class_labels.txt"], ids), strict=True)
    ]
    unknown = sorted(set(class_of) - set(position))
    if unknown:
        raise DatasetFormatError(
            f"{files['image_class_labels.txt']}: class id(s) {unknown[:5]} not in classes.txt"
        )
    labels = np.array([position[c] for c in class_of], np.int32)
    split_path = files["train_test_split.txt"]
    is_train = train_flags(keyed_values(split_path, ids), ids, split_path)
    half = len(class_names) // 2  # retrieval: classes 1-100 / 101-200
    keep = {
        "train": is_train,
        "test": ~is_train,
        "all": np.ones(len(ids), bool),
        "retrieval_train": labels < half,
        "retrieval_test": labels >= half,
    }[split]
    boxes = None
    if data_config.get("crop_to_box", False):
        boxes_path = files["bounding_boxes.txt"]
        boxes = parse_boxes(keyed_values(boxes_path, ids, num_values=4), ids, boxes_path)
    paths = [os.path.join("images", images[i][0]) for i in ids]
    coarse = data_config.get("coarse", "")
    levels = {"family": coarse_from_names(class_names, last_word)}
    if coarse == "bucsfr":  # only when asked: a renamed classes.txt still works with 'family'
        levels["bucsfr"] = bucsfr_level(class_names, files["classes.txt"])
    return LabeledSource(
        dataset="cub",
        split=split,
        root=base,
        paths=paths,
        labels=labels,
        keep=keep,
        class_names=class_names,
        coarse_levels=levels,
        coarse=coarse,
        boxes=boxes,
    )
