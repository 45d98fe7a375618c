"""Command line -> frozen dataclasses, built once. eps values are given in 1/255 units and converted here."""
import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

from attacks.fgsm import TRAIN_ATTACKS
from datasets.registry import DATASETS
from methods import METHODS, get_method
from models.casa import CaSAConfig
from models.patchguard import READOUT_KEYS, ModelConfig
from models.tta import PARAM_SETS
from utils.errors import UserError

MODES = ("train", "test", "visualization", "all", "foreground", "predict", "seeds")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mvtec"
    class_name: str = ""
    dataset_dir: str = ""
    foreground_dir: Optional[str] = None
    foreground: str = "auto"          # auto: given masks, else estimated ones; none: whole image
    cache_dir: Optional[str] = None   # estimated foreground masks (default ~/.cache/patchguard)
    visa_split: str = "csv"           # csv: split_csv/1cls.csv; foreground: official rule
    on_corrupt: str = "stop"          # stop or skip unreadable images
    normal_dir: Optional[str] = None  # --dataset folder
    abnormal_dir: Tuple[str, ...] = ()
    mask_dir: Tuple[str, ...] = ()
    normal_test_dir: Optional[str] = None
    min_patch_size: Optional[int] = None  # None: the class's official lower bound
    pseudo_anomaly: str = "foreground"    # foreground (PatchGuard's generator) or attention (CaSA's cut-and-paste)
    saliency_every: int = 5               # attention: recompute the saliency of every training image every N epochs
    saliency_warmup: int = 5              # attention: epochs of foreground/uniform sampling first (0 with weights)
    saliency_layers: str = "last"         # last block, or mean over blocks
    saliency_heads: str = "mean"          # mean or max over heads
    cutpaste_area: Tuple[float, float] = (0.02, 0.15)
    cutpaste_aspect: Tuple[float, float] = (0.3, 3.3)
    cutpaste_rotation: float = 45.0
    cutpaste_jitter: float = 0.1
    train_batch_size: int = 16
    test_batch_size: int = 4
    num_workers: int = 2


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1000
    lr: float = 8e-4
    lr_decay_factor: float = 0.0125
    weight_decay: float = 0.01        # torch AdamW default, as the official code (its --wd is never used)
    adv_train: bool = True
    epsilon_train: float = 8 / 255
    step_train: int = 10
    train_attack: str = "pgd"         # pgd (official), fgsm_rs or nfgsm (single-step)
    co_guard: bool = True             # single-step: watch PGD-10 on a few training images every epoch
    co_factor: float = 3.0            # catastrophic overfitting: PGD-10 gains > this x the single step's gain
    co_every: int = 5                 # epochs between two checks
    attack_mode: str = "train"        # model mode during training attacks (official: train, dropout on)
    use_reg: bool = True
    reg_weights: Tuple[float, ...] = (0.005, 0.01, 0.05)
    save_every: int = 50
    resume: bool = False
    overwrite: bool = False           # train again over a finished model in the same checkpoint folder
    backbone_weights: Optional[str] = None


@dataclass(frozen=True)
class EvalConfig:
    adv_test: bool = True
    attack: Tuple[str, ...] = ("pgd",)
    epsilon_test: Tuple[float, ...] = (8 / 255,)
    step_test: Tuple[int, ...] = (10,)
    attack_target: str = "both"       # both, normal or anomalous test images are attacked
    random_start: bool = False
    restarts: int = 1
    recompute: bool = False           # re-run settings already in metrics.json for the same checkpoint
    # read-out options given explicitly: they override the checkpoint's (None: keep the checkpoint's)
    top_k: Optional[int] = None
    smoothing_sigma: Optional[float] = None
    smoothing_radius: Optional[int] = None
    predict_dir: Optional[str] = None
    threshold_dir: Optional[str] = None
    threshold_quantile: float = 0.99
    epsilon_visualization: float = 8 / 255
    step_visualization: int = 10
    num_visualization: int = 8


@dataclass(frozen=True)
class CaSAOptions:
    seg_loss: str = "focal_dice"      # focal_dice, bce_dice or bce
    seg_weight: float = 1.0
    tta: str = "both"                 # both: report without and with TTA; off
    tta_params: str = "layernorm"
    tta_lr: float = 1e-3
    tta_steps: int = 1
    tta_mode: str = "episodic"        # episodic (reset per batch) or online


def default_workers(device: str, class_processes: int = 0) -> int:
    """Workers when --num_workers is not given (bench/data.py measures the data side).

    CPU: 2; the model's own compute needs the cores, and a sample's pseudo-anomaly costs under 1% of its PGD-10
    training there. GPU: one 224 px sample takes ~11 ms on a core, and an H200 trains on one in 4 ms (FGSM-RS,
    bf16) to 26 ms (PGD-10, fp32), so: every core this process may use but one (the one feeding the GPU), divided
    among this node's GPU processes (torchrun ranks or --devices classes), at most 8 (more only add start-up
    time: workers start again every epoch)."""
    import torch
    if device != "cuda" or not torch.cuda.is_available():
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = class_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, cores // max(1, processes) - 1))


@dataclass(frozen=True)
class RunConfig:
    mode: str
    output_dir: str
    checkpoint_dir: Optional[str]     # None: <output_dir>/checkpoints
    checkpoint: Optional[str]
    device: str
    bf16: bool
    seed: int
    tqdm: bool
    compile: bool = False
    use_data_prep: bool = False
    use_weight_prep: bool = False
    run_dirs: Tuple[str, ...] = ()
    devices: Tuple[int, ...] = ()
    method: str = "patchguard"
    model: Union[ModelConfig, CaSAConfig] = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    casa: CaSAOptions = field(default_factory=CaSAOptions)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def checkpoints(self) -> str:
        return self.checkpoint_dir or os.path.join(self.output_dir, "checkpoints")

    def checkpoint_file(self, suffix: str = "") -> str:
        """<checkpoints>/<method>_<dataset>_<class><suffix>.pth; for patchguard the plain name is the official one."""
        return os.path.join(self.checkpoints, f"{self.method}_{self.data.dataset}_{self.data.class_name}{suffix}.pth")

    @property
    def final_checkpoint(self) -> str:
        return self.checkpoint_file()

    @property
    def last_checkpoint(self) -> str:
        return self.checkpoint_file("_last")

    def for_class(self, class_name: str, output_dir: str) -> "RunConfig":
        return dataclasses.replace(self, output_dir=output_dir, data=dataclasses.replace(self.data, class_name=class_name))


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes become one-line errors with exit code 2 (main prints them), not usage dumps."""

    def error(self, message):
        raise UserError(f"{message} (see python main.py --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        description="PatchGuard: adversarially robust anomaly detection and localization with ViTs and pseudo anomalies.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="JSON file of option defaults (keys = option names), or a run's own "
                                    "config.json to repeat it; the command line wins")
    g = p.add_argument_group("run")
    g.add_argument("--mode", choices=MODES, default="train")
    g.add_argument("--method", choices=tuple(METHODS), default="patchguard",
                   help="patchguard (CVPR 2025) or casa (BMVC 2022: attention-guided cut-and-paste, attention map, TTA)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda falls back to cpu when absent")
    g.add_argument("--devices", type=int, nargs="+", default=[],
                   help="--class_name all: run one class per listed GPU at a time, each in its own process")
    g.add_argument("--bf16", action="store_true",
                   help="bf16 autocast of the model's matrix products (CUDA, or CPUs with AMX / AVX-512 bf16); "
                        "attack steps and projections stay fp32")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model's forward/backward inside attacks (training and test); the first "
                        "batch of each shape pays the compile (about a minute); PatchGuard only")
    g.add_argument("--output_dir", help="run directory (default runs/<dataset>/<class_name>)")
    g.add_argument("--checkpoint_dir", help="where checkpoints go (default <output_dir>/checkpoints)")
    g.add_argument("--checkpoint", help="checkpoint to test/visualize (default <checkpoint_dir>/patchguard_<dataset>_<class>.pth)")
    g.add_argument("--no_tqdm", action="store_false", dest="tqdm")
    g.add_argument("--run_dirs", nargs="+", default=[],
                   help="--mode seeds: run directories that differ only in --seed; writes mean ± std tables into "
                        "--output_dir")
    g.add_argument("--use_data_prep", action="store_true", help="download the dataset and masks into --dataset_dir first")
    g.add_argument("--use_weight_prep", action="store_true",
                   help="download the official checkpoint into --checkpoint_dir first")

    g = p.add_argument_group("data")
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
    g.add_argument("--on_corrupt", choices=("stop", "skip"), default="stop",
                   help="unreadable image files: stop with an error, or skip them with a warning")
    g.add_argument("--normal_dir", help="--dataset folder: normal images (training, and test unless --normal_test_dir)")
    g.add_argument("--abnormal_dir", nargs="+", default=[],
                   help="--dataset folder: one or more folders of anomalous test images")
    g.add_argument("--mask_dir", nargs="+", default=[],
                   help="--dataset folder: one or more folders of pixel masks named like the anomalous images")
    g.add_argument("--normal_test_dir", help="--dataset folder: normal test images (else 20%% of --normal_dir)")
    g.add_argument("--min_patch_size", type=int, help="pseudo-anomaly lower bound in px (default: official per class)")
    g.add_argument("--pseudo_anomaly", choices=("foreground", "attention"),
                   help="foreground: PatchGuard's foreground-aware generator; attention: CaSA's attention-guided "
                        "cut-and-paste (default: the method's own)")
    g.add_argument("--saliency_every", type=int, default=5, help="attention: recompute saliency every N epochs")
    g.add_argument("--saliency_warmup", type=int, default=5,
                   help="attention: epochs sampling from the foreground (or uniformly) before the model's attention "
                        "is used (0 when --backbone_weights is given)")
    g.add_argument("--saliency_layers", choices=("last", "mean"), default="last")
    g.add_argument("--saliency_heads", choices=("mean", "max"), default="mean")
    g.add_argument("--cutpaste_area", type=float, nargs=2, default=[0.02, 0.15], help="patch area / image area")
    g.add_argument("--cutpaste_aspect", type=float, nargs=2, default=[0.3, 3.3])
    g.add_argument("--cutpaste_rotation", type=float, default=45.0, help="degrees, U(-r, r)")
    g.add_argument("--cutpaste_jitter", type=float, default=0.1, help="ColorJitter strength")
    g.add_argument("--train_batch_size", type=int, default=16)
    g.add_argument("--test_batch_size", type=int, default=4)
    g.add_argument("--num_workers", type=int,
                   help="DataLoader workers making pseudo-anomalies (default: 2 on the CPU; on a GPU every core but "
                        "one, shared among this node's GPU processes, at most 8)")

    g = p.add_argument_group("model")
    g.add_argument("--backbone", "--hf_path", dest="backbone", default="vit_small_patch14_dinov2",
                   help="any timm ViT name")
    g.add_argument("--backbone_weights", help="local .pth/.safetensors backbone weights, or 'hub' (needs internet); "
                                              "default: random init as the official code")
    g.add_argument("--image_size", type=int, default=224)
    g.add_argument("--patch_size", type=int, help="override the backbone's patch size (random init only)")
    g.add_argument("--feature_layers", type=int, nargs="+", default=[12], help="1-based block ids for features")
    g.add_argument("--reg_layers", type=int, nargs="+", default=[6, 9, 12], help="1-based block ids for the KL term")
    g.add_argument("--hidden_dim", type=int, default=2048)
    g.add_argument("--dsc_layers", type=int, default=1)
    g.add_argument("--dsc_heads", type=int, default=4)
    g.add_argument("--top_k", type=int, help="image score = mean of the top-k patch logits (default 3; given at "
                                            "test time, overrides the checkpoint's)")
    g.add_argument("--smoothing_sigma", type=float, help="Gaussian sigma on the upsampled map (default 6; given at "
                                                         "test time, overrides the checkpoint's)")
    g.add_argument("--smoothing_radius", type=int, help="Gaussian radius in px (default 7; as --smoothing_sigma)")

    g = p.add_argument_group("CaSA (--method casa)")
    g.add_argument("--casa_map_layers", type=int, nargs="+", help="1-based blocks whose CLS-to-patch attention "
                                                                   "makes the map (default: the last three)")
    g.add_argument("--casa_head_hidden", type=int, default=512, help="hidden width of the image head")
    g.add_argument("--casa_score", choices=("head", "head+map"), default="head",
                   help="image score: the head's logit, or plus the mean of the top-k map logits")
    g.add_argument("--casa_seg_loss", choices=("focal_dice", "bce_dice", "bce"), default="focal_dice")
    g.add_argument("--casa_seg_weight", type=float, default=1.0)
    g.add_argument("--tta", choices=("both", "off"), default="both",
                   help="both: every test setting without and with test-time adaptation; off: without only")
    g.add_argument("--tta_params", choices=PARAM_SETS, default="layernorm")
    g.add_argument("--tta_lr", type=float, default=1e-3)
    g.add_argument("--tta_steps", type=int, default=1)
    g.add_argument("--tta_mode", choices=("episodic", "online"), default="episodic")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=1000)
    g.add_argument("--lr", type=float, default=8e-4)
    g.add_argument("--lr_decay_factor", type=float, default=0.0125, help="cosine schedule ends at lr * this")
    g.add_argument("--weight_decay", type=float, default=0.01)
    g.add_argument("--adv_train", action="store_true", default=None,
                   help="adversarial training (default: on for patchguard, off for casa)")
    g.add_argument("--no_adv_train", action="store_false", dest="adv_train")
    g.add_argument("--epsilon_train", type=float, default=8, help="in 1/255 units")
    g.add_argument("--step_train", type=int, default=10, help="PGD steps (--train_attack pgd)")
    g.add_argument("--train_attack", choices=TRAIN_ATTACKS, default="pgd",
                   help="pgd: the official PGD-<step_train>; fgsm_rs: FGSM with random start (step 1.25 eps); "
                        "nfgsm: N-FGSM (noise 2 eps, step eps, no projection)")
    g.add_argument("--no_co_guard", action="store_false", dest="co_guard",
                   help="single-step training: do not watch for catastrophic overfitting")
    g.add_argument("--co_every", type=int, default=5, help="epochs between two catastrophic-overfitting checks")
    g.add_argument("--co_factor", type=float, default=3.0,
                   help="catastrophic overfitting when PGD-10's loss gain on training images exceeds this many times "
                        "the single-step attack's; training then goes on with PGD-<step_train>")
    g.add_argument("--train_attack_mode", choices=("train", "eval"), default="train",
                   help="model mode while attacking during training (official: train, dropout on)")
    g.add_argument("--no_reg", action="store_false", dest="use_reg")
    g.add_argument("--reg_weights", type=float, nargs="+", default=[0.005, 0.01, 0.05], help="one per --reg_layers")
    g.add_argument("--save_every", type=int, default=50, help="keep a numbered checkpoint every N epochs")
    g.add_argument("--resume", action="store_true",
                   help="continue from <checkpoint_dir>/patchguard_<dataset>_<class>_last.pth")
    g.add_argument("--overwrite", action="store_true",
                   help="train from scratch even where a previous run left checkpoints (they are replaced)")

    g = p.add_argument_group("evaluation")
    g.add_argument("--no_adv_test", action="store_false", dest="adv_test")
    g.add_argument("--epsilon_test", type=float, nargs="+", default=[8], help="in 1/255 units")
    g.add_argument("--step_test", type=int, nargs="+", default=[10], help="one or more step counts (a sweep)")
    g.add_argument("--attack", nargs="+", choices=("pgd", "apgd"), default=["pgd"])
    g.add_argument("--attack_target", choices=("both", "normal", "anomalous"), default="both",
                   help="attack all test images, or only the normal or only the anomalous ones")
    g.add_argument("--random_start", action="store_true")
    g.add_argument("--restarts", type=int, default=1)
    g.add_argument("--recompute", action="store_true",
                   help="re-run attack settings already in metrics.json for the same checkpoint (default: skip them)")
    g.add_argument("--epsilon_visualization", type=float, default=8)
    g.add_argument("--step_visualization", type=int, default=10)
    g.add_argument("--num_visualization", type=int, default=8, help="test images to draw; 0: all")

    g = p.add_argument_group("prediction (--mode predict)")
    g.add_argument("--predict_dir", help="folder of new images to score")
    g.add_argument("--threshold_dir", help="normal validation images for the decision threshold "
                                           "(default: the class's normal training images)")
    g.add_argument("--threshold_quantile", type=float, default=0.99,
                   help="threshold = this quantile of the normal images' scores")
    return p


def parse_config(argv=None) -> RunConfig:
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**config_file_defaults(parser, pre.config))
    return config_from_args(parser.parse_args(argv))


def config_file_defaults(parser: argparse.ArgumentParser, path: str) -> dict:
    """A JSON config file as parser defaults. Keys are option names as on the command line (`no_reg`, `hf_path`)
    or their destinations (`use_reg`, `backbone`); a flag's key with true means the flag was given."""
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a JSON object of option names and values")
    if any(isinstance(v, dict) for v in values.values()):
        values = flatten_run_config(values)
    by_dest = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    by_option = {o.lstrip("-"): a for a in by_dest.values() for o in a.option_strings}
    unknown = sorted(k for k in values if k not in by_dest and k not in by_option)
    if unknown:
        raise UserError(f"unknown keys in {path}: {', '.join(unknown)} (keys are option names, e.g. epochs, no_reg)")
    defaults = {}
    for key, value in values.items():
        action = by_dest.get(key) or by_option[key]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            value = _strict_bool(value, key, path)
            if key != action.dest:  # the flag's own name: true = the flag was given
                value = action.const if value else action.default
        else:
            value = _coerce(action, value, path)
        defaults[action.dest] = value
    return defaults


def _strict_bool(value, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserError(f"{where}: '{key}' must be true or false, got {value!r}")


RUN_ONLY_KEYS = {"mode", "resume", "overwrite", "recompute", "dsc_dropout", "run_dirs", "devices",
                 "use_data_prep", "use_weight_prep"}  # not carried over from a run's config.json
RENAMED = {"attack_mode": "train_attack_mode", "map_layers": "casa_map_layers", "head_hidden": "casa_head_hidden",
           "score": "casa_score", "seg_loss": "casa_seg_loss", "seg_weight": "casa_seg_weight"}
IN_255_UNITS = {"epsilon_train", "epsilon_test", "epsilon_visualization"}


def flatten_run_config(run: dict) -> dict:
    """A run directory's config.json (nested, eps in [0, 1]) as option defaults (flat, eps in 1/255 units)."""
    flat = {}
    for key, value in run.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            if k in RUN_ONLY_KEYS or v is None:
                continue
            if k in IN_255_UNITS:
                v = [x * 255 for x in v] if isinstance(v, list) else v * 255
            flat[RENAMED.get(k, k)] = v
    return flat


def _coerce(action: argparse.Action, value, where: str):
    """A config-file value as the command line would have parsed it (lists for nargs options, typed items)."""
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    items = value if isinstance(value, list) else [value]
    if action.type is not None:
        try:
            items = [action.type(v) for v in items]
        except (TypeError, ValueError):
            raise UserError(f"{where}: '{action.dest}' must be {action.type.__name__}"
                            f"{' values' if many else ''}, got {value!r}") from None
    if action.choices is not None and any(v not in action.choices for v in items):
        raise UserError(f"{where}: '{action.dest}' must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        raise UserError(f"{where}: '{action.dest}' takes {action.nargs} values, got {value!r}")
    if many:
        return items
    if len(items) != 1:
        raise UserError(f"{where}: '{action.dest}' takes one value, got {value!r}")
    return items[0]


def _positive(name: str, value) -> None:
    if value is None or value <= 0:
        raise UserError(f"--{name} must be positive, got {value}")


def config_from_args(a: argparse.Namespace) -> RunConfig:
    if a.mode == "seeds":
        if len(a.run_dirs) < 1 or not a.output_dir:
            raise UserError("--mode seeds needs --run_dirs (one or more run directories) and --output_dir")
        a.class_name, a.dataset_dir = a.class_name or "seeds", a.dataset_dir or "."
    if a.dataset == "folder":
        if not (a.normal_dir and a.abnormal_dir):
            raise UserError("--dataset folder needs --normal_dir and --abnormal_dir")
        a.class_name = a.class_name or os.path.basename(os.path.normpath(a.normal_dir)) or "custom"
        a.dataset_dir = a.dataset_dir or os.path.dirname(os.path.abspath(a.normal_dir))
    if not a.class_name:
        raise UserError("--class_name is required (the class folder name, e.g. bottle, or 'all')")
    if not a.dataset_dir:
        raise UserError("--dataset_dir is required (the folder that holds the class folders)")
    if a.mode == "predict" and not a.predict_dir:
        raise UserError("--mode predict needs --predict_dir (a folder of images to score)")
    if a.devices and a.class_name != "all":
        raise UserError("--devices runs one class per GPU with --class_name all; for one class use "
                        "torchrun --nproc_per_node N main.py ...")
    if a.checkpoint and a.class_name == "all":
        raise UserError("--checkpoint names one class's model; with --class_name all each class uses its own "
                        "(give --checkpoint_dir, or one --class_name)")
    for name in ("step_test", "step_train", "step_visualization", "save_every", "num_visualization"):
        values = getattr(a, name)
        if any(n < 0 for n in (values if isinstance(values, list) else [values])):
            raise UserError(f"--{name} must be >= 0, got {values}")
    if not 0 < a.threshold_quantile <= 1:
        raise UserError(f"--threshold_quantile must be in (0, 1], got {a.threshold_quantile}")
    for name in ("image_size", "epochs", "train_batch_size", "test_batch_size", "restarts", "hidden_dim",
                 "dsc_layers", "dsc_heads", "lr"):
        _positive(name, getattr(a, name))
    for name in ("top_k", "smoothing_radius", "min_patch_size", "patch_size"):
        if getattr(a, name) is not None:
            _positive(name, getattr(a, name))
    if a.smoothing_sigma is not None and a.smoothing_sigma < 0:
        raise UserError(f"--smoothing_sigma must be >= 0, got {a.smoothing_sigma}")
    if a.num_workers is not None and a.num_workers < 0:
        raise UserError(f"--num_workers must be >= 0, got {a.num_workers}")
    if a.use_reg and len(a.reg_weights) != len(a.reg_layers):
        raise UserError(f"--reg_weights has {len(a.reg_weights)} values but --reg_layers has {len(a.reg_layers)}")
    for eps in list(a.epsilon_test) + [a.epsilon_train, a.epsilon_visualization]:
        if not 0 <= eps <= 255:
            raise UserError(f"epsilon {eps} is outside [0, 255] (values are in 1/255 units)")
    output_dir = a.output_dir or os.path.join("runs", a.dataset, "" if a.class_name == "all" else a.class_name)
    method = get_method(a.method)
    model = method.model_config(a)
    adv_train = method.adv_train_default if a.adv_train is None else a.adv_train
    for name in ("saliency_every", "saliency_warmup", "tta_steps", "co_every"):
        if getattr(a, name) < 0:
            raise UserError(f"--{name} must be >= 0, got {getattr(a, name)}")
    lo, hi = a.cutpaste_area
    if not 0 < lo <= hi < 1:
        raise UserError(f"--cutpaste_area must be two shares 0 < lo <= hi < 1 of the image, got {a.cutpaste_area}")
    if not 0 < a.cutpaste_aspect[0] <= a.cutpaste_aspect[1]:
        raise UserError(f"--cutpaste_aspect must be 0 < lo <= hi, got {a.cutpaste_aspect}")
    return RunConfig(
        mode=a.mode, method=a.method, output_dir=output_dir, checkpoint_dir=a.checkpoint_dir,
        checkpoint=a.checkpoint, device=a.device, bf16=a.bf16, compile=a.compile, seed=a.seed, tqdm=a.tqdm,
        use_data_prep=a.use_data_prep, use_weight_prep=a.use_weight_prep, run_dirs=tuple(a.run_dirs), devices=tuple(a.devices), model=model,
        data=DataConfig(dataset=a.dataset, class_name=a.class_name, dataset_dir=a.dataset_dir,
                        foreground_dir=a.foreground_dir, foreground=a.foreground, cache_dir=a.cache_dir,
                        visa_split=a.visa_split, on_corrupt=a.on_corrupt, normal_dir=a.normal_dir,
                        abnormal_dir=tuple(a.abnormal_dir), mask_dir=tuple(a.mask_dir), normal_test_dir=a.normal_test_dir,
                        min_patch_size=a.min_patch_size,
                        pseudo_anomaly=a.pseudo_anomaly or method.pseudo_anomaly_default,
                        saliency_every=a.saliency_every, saliency_warmup=a.saliency_warmup,
                        saliency_layers=a.saliency_layers, saliency_heads=a.saliency_heads,
                        cutpaste_area=tuple(a.cutpaste_area), cutpaste_aspect=tuple(a.cutpaste_aspect),
                        cutpaste_rotation=a.cutpaste_rotation, cutpaste_jitter=a.cutpaste_jitter,
                        train_batch_size=a.train_batch_size, test_batch_size=a.test_batch_size,
                        num_workers=a.num_workers if a.num_workers is not None else
                        default_workers(a.device, len(a.devices))),
        train=TrainConfig(epochs=a.epochs, lr=a.lr, lr_decay_factor=a.lr_decay_factor, weight_decay=a.weight_decay,
                          adv_train=adv_train and (a.step_train > 0 or a.train_attack != "pgd") and a.epsilon_train > 0,
                          train_attack=a.train_attack, co_guard=a.co_guard, co_factor=a.co_factor,
                          co_every=a.co_every, epsilon_train=a.epsilon_train / 255, step_train=a.step_train,
                          attack_mode=a.train_attack_mode, use_reg=a.use_reg, reg_weights=tuple(a.reg_weights),
                          save_every=a.save_every, resume=a.resume, overwrite=a.overwrite, backbone_weights=a.backbone_weights),
        eval=EvalConfig(adv_test=a.adv_test, attack=tuple(dict.fromkeys(a.attack)),
                        epsilon_test=tuple(e / 255 for e in a.epsilon_test), step_test=tuple(a.step_test),
                        attack_target=a.attack_target, random_start=a.random_start, restarts=a.restarts,
                        recompute=a.recompute, **{k: getattr(a, k) for k in READOUT_KEYS},
                        predict_dir=a.predict_dir, threshold_dir=a.threshold_dir,
                        threshold_quantile=a.threshold_quantile,
                        epsilon_visualization=a.epsilon_visualization / 255, step_visualization=a.step_visualization,
                        num_visualization=a.num_visualization),
        casa=CaSAOptions(seg_loss=a.casa_seg_loss, seg_weight=a.casa_seg_weight, tta=a.tta, tta_params=a.tta_params,
                         tta_lr=a.tta_lr, tta_steps=a.tta_steps, tta_mode=a.tta_mode))
