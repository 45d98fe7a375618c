"""What we know about each dataset: its classes, which use the whole image as foreground, patch-size lower bounds."""
from typing import Dict, Tuple

MVTEC = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
         "tile", "toothbrush", "transistor", "wood", "zipper")
VISA = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3",
        "pcb4", "pipe_fryum")
MPDD = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
BTAD = ("01", "02", "03")
WFDD = ("grey_cloth", "grid_cloth", "pink_flower", "yellow_cloth")
DTD = ("Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037", "Stratified_154",
       "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127")

# dataset -> (classes, default lower bound, per-class lower bounds); None classes = any folder name
DATASETS: Dict[str, Tuple[Tuple[str, ...], int, Dict[str, int]]] = {
    "mvtec": (MVTEC, 14, {"screw": 9}),
    "visa": (VISA, 14, {"capsules": 6, "cashew": 10, "fryum": 6}),
    "mpdd": (MPDD, 6, {"metal_plate": 14}),
    "btad": (BTAD, 9, {"02": 14}),
    "wfdd": (WFDD, 9, {}),
    "dtd": (DTD, 14, {}),
    "brats2021": (("brats2021",), 14, {}),
    "headct": (("headct",), 9, {}),
    "nih": (("nih",), 14, {}),
    "demo": (("widget",), 6, {}),
    "folder": ((), 14, {}),
}

# classes that use the whole image as foreground (textures and the official exceptions)
WHOLE_IMAGE_CLASSES = {
    "mvtec": {"carpet", "grid", "leather", "tile", "wood", "transistor"},
    "btad": {"02"},
    "wfdd": set(WFDD),
    "dtd": set(DTD),
}


def classes(dataset: str) -> Tuple[str, ...]:
    return DATASETS[dataset][0]


def min_patch_size(dataset: str, class_name: str) -> int:
    """Official per-class lower bound (pixels) on pseudo-anomaly patch width and height."""
    _, default, per_class = DATASETS[dataset]
    return per_class.get(class_name, default)


# layouts that hold any product in MVTec AD's folder structure: a class folder not listed above is accepted
ANY_CLASS = {"mvtec", "mpdd", "btad", "wfdd", "dtd", "visa", "demo"}


def accepts_any_class(dataset: str) -> bool:
    return dataset in ANY_CLASS


def is_known_class(dataset: str, class_name: str) -> bool:
    return class_name in DATASETS[dataset][0]


def uses_whole_image(dataset: str, class_name: str) -> bool:
    return class_name in WHOLE_IMAGE_CLASSES.get(dataset, set())
