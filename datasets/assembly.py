"""Dataset assembly for a run: the data group of the command line and, from the run's config, the sample lists,
foreground masks (given or estimated), the pseudo-anomaly generator and the corrupt-file policy. The engine only
loops over what this returns."""
import functools
import logging
from dataclasses import replace
from typing import List, Optional

from datasets import registry
from datasets.registry import DATASETS
from datasets.dataset import AnomalyDataset
from datasets.foreground import default_cache_dir, foreground_for
from datasets.generators import get_generator
from datasets.samples import FolderSpec, Sample, make_samples
from utils.errors import UserError

log = logging.getLogger("patchguard")


def add_data_arguments(parser):
    """The data group of the command line: which dataset, where, its layout's options; returns the group."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", choices=tuple(DATASETS), default="mvtec")
    g.add_argument("--class_name", default=None)
    g.add_argument("--dataset_dir", default=None)
    g.add_argument("--foreground_dir", help="folder of foreground masks named like the training images")
    g.add_argument("--foreground", choices=("auto", "none"), default="auto",
                   help="auto: foreground masks when present, else estimated offline (cached); none: whole image")
    g.add_argument("--cache_dir", help="cache of estimated foreground masks (default $PATCHGUARD_CACHE or "
                                       "~/.cache/patchguard; never inside the dataset)")
    g.add_argument("--visa_split", choices=("csv", "foreground"), default="csv",
                   help="VisA split: split_csv/1cls.csv, or the official rule (normals with a foreground mask train)")
    g.add_argument("--nih_split", choices=("official", "random"), default="official",
                   help="NIH: the released train_val/test lists (the paper's protocol), or a seeded split by patient")
    g.add_argument("--on_corrupt", choices=("stop", "skip"), default="stop",
                   help="unreadable image files: stop with an error, or skip them with a warning")
    g.add_argument("--normal_dir", help="--dataset folder: normal images (training, and test unless --normal_test_dir)")
    g.add_argument("--abnormal_dir", nargs="+", default=[],
                   help="--dataset folder: one or more folders of anomalous test images")
    g.add_argument("--mask_dir", nargs="+", default=[],
                   help="--dataset folder: one or more folders of pixel masks named like the anomalous images")
    g.add_argument("--normal_test_dir", help="--dataset folder: normal test images (else 20%% of --normal_dir)")
    return g


def samples(cfg, split: str) -> List[Sample]:
    d = cfg.data
    folder = None
    if d.dataset == "folder":
        folder = FolderSpec(d.normal_dir, d.abnormal_dir, d.mask_dir, d.normal_test_dir, seed=cfg.seed)
    return make_samples(d.dataset, d.dataset_dir, d.class_name, split, d.foreground_dir, d.visa_split, folder,
                        seed=cfg.seed, nih_split=d.nih_split, skip_corrupt=d.on_corrupt == "skip")


def whole_image_foreground(cfg) -> bool:
    return cfg.data.foreground == "none" or registry.uses_whole_image(cfg.data.dataset, cfg.data.class_name)


def with_estimated_foreground(items: List[Sample], cache_dir: Optional[str], skip_corrupt: bool) -> List[Sample]:
    """Fill in estimated (cached) foreground masks where none was given. With `skip_corrupt`, an unreadable image
    keeps no mask here; the dataset then skips it and lists it with the others."""
    todo = [s for s in items if s.foreground is None]
    if todo:
        log.info("estimating foreground masks for %d images (cache: %s)", len(todo), cache_dir or default_cache_dir())
    out = []
    for s in items:
        if s.foreground is None:
            try:
                s = replace(s, foreground=foreground_for(s.image, cache_dir))
            except UserError:
                if not skip_corrupt:
                    raise
        out.append(s)
    return out


def _report_skipped(dataset: AnomalyDataset) -> AnomalyDataset:
    if dataset.skipped:
        log.warning("skipped %d unreadable images: %s", len(dataset.skipped),
                    "; ".join(f"{p} ({e})" for p, e in dataset.skipped[:10]))
    return dataset


def train_dataset(cfg, image_size: int, patch_size: int) -> AnomalyDataset:
    d = cfg.data
    items = samples(cfg, "train")
    whole = whole_image_foreground(cfg)
    given = sum(s.foreground is not None for s in items)
    if not whole and d.foreground == "auto" and given < len(items):
        items = with_estimated_foreground(items, d.cache_dir, d.on_corrupt == "skip")
    generator, kind = get_generator(d.pseudo_anomaly).build(d.generator, d.dataset, d.class_name)
    if d.dataset != "folder" and not registry.is_known_class(d.dataset, d.class_name):
        log.info("class '%s' is not one of %s's own: %s layout, default pseudo-anomaly lower bound %d px, "
                 "foreground %s", d.class_name, d.dataset, d.dataset, registry.min_patch_size(d.dataset, d.class_name),
                 "whole image" if whole else "from masks where given, else estimated")
    log.info("train: %d normal images; foreground: %s; pseudo-anomalies: %s", len(items),
             "whole image" if whole else f"{given} given, {len(items) - given} estimated", kind)
    return _report_skipped(AnomalyDataset(items, image_size, patch_size, generator,
                                          whole_image_foreground=whole, seed=cfg.seed,
                                          skip_corrupt=d.on_corrupt == "skip"))


@functools.lru_cache(maxsize=1)  # --mode all tests, then draws: decode the test set once
def test_dataset(cfg, image_size: int, patch_size: int) -> AnomalyDataset:
    return _report_skipped(AnomalyDataset(samples(cfg, "test"), image_size, patch_size,
                                          skip_corrupt=cfg.data.on_corrupt == "skip"))
