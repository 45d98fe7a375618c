"""Command line -> frozen dataclasses, built once. eps values are given in 1/255 units and converted here."""
import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from attacks.fgsm import TRAIN_ATTACKS
from datasets.generators import GENERATORS, ForegroundOptions, get_generator
from datasets.assembly import add_data_arguments
from methods import METHODS, get_method
from utils.config_file import config_file_defaults
from utils.distributed import default_workers
from utils.errors import UserError
from utils.precision import PRECISIONS, resolve_precision
from utils.readout import READOUT_KEYS

MODES = ("train", "test", "visualization", "all", "foreground", "predict", "seeds", "export")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mvtec"
    class_name: str = ""
    dataset_dir: str = ""
    foreground_dir: Optional[str] = None
    foreground: str = "auto"          # auto: given masks, else estimated ones; none: whole image
    cache_dir: Optional[str] = None   # estimated foreground masks (default ~/.cache/patchguard)
    visa_split: str = "csv"           # csv: split_csv/1cls.csv; foreground: official rule
    nih_split: str = "official"       # official: train_val_list.txt / test_list.txt; random: by patient
    on_corrupt: str = "stop"          # stop or skip unreadable images
    normal_dir: Optional[str] = None  # --dataset folder
    abnormal_dir: Tuple[str, ...] = ()
    mask_dir: Tuple[str, ...] = ()
    normal_test_dir: Optional[str] = None
    pseudo_anomaly: str = "foreground"    # a generator of datasets/generators.py, with its options:
    generator: Any = field(default_factory=ForegroundOptions)
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
    onnx: Optional[str] = None        # --mode predict with an exported model (ONNX Runtime)
    threshold_dir: Optional[str] = None
    threshold_quantile: float = 0.99
    epsilon_visualization: float = 8 / 255
    step_visualization: int = 10
    num_visualization: int = 8


@dataclass(frozen=True)
class RunConfig:
    mode: str
    method: str
    method_options: Any               # the method's own frozen options (methods/<method>.py); .model: its model
    output_dir: str
    checkpoint_dir: Optional[str]     # None: <output_dir>/checkpoints
    checkpoint: Optional[str]
    device: str
    precision: str                    # what runs (fp32 or bf16), decided from --precision and the hardware
    precision_reason: str
    seed: int
    tqdm: bool
    compile: bool = False
    use_data_prep: bool = False
    use_weight_prep: bool = False
    run_dirs: Tuple[str, ...] = ()
    devices: Tuple[int, ...] = ()
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

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
                   help="patchguard (CVPR 2025) or casa (BMVC 2022: attention-guided cut-and-paste, attention map, "
                        "TTA); a checkpoint of another method is refused")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda falls back to cpu when absent")
    g.add_argument("--devices", type=int, nargs="+", default=[],
                   help="--class_name all: run one class per listed GPU at a time, each in its own process")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast of the model's matrix products where the hardware has native bf16 "
                        "(CUDA compute capability >= 8, CPUs with AMX / AVX-512 bf16), fp32 elsewhere; bf16 asks for "
                        "it (fp32 where not native). Attack steps and projections stay fp32")
    g.add_argument("--bf16", action="store_const", const="bf16", dest="precision", help="--precision bf16")
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

    g = add_data_arguments(p)
    g.add_argument("--pseudo_anomaly", choices=tuple(GENERATORS),
                   help="foreground: PatchGuard's foreground-aware generator; attention: CaSA's attention-guided "
                        "cut-and-paste (default: the method's own)")
    g.add_argument("--train_batch_size", type=int, default=16)
    g.add_argument("--test_batch_size", type=int, default=4)
    g.add_argument("--num_workers", type=int,
                   help="DataLoader workers making pseudo-anomalies (default: 2 on the CPU; on a GPU every core but "
                        "one, shared among this node's GPU processes, at most 8)")

    g = p.add_argument_group("model (every method)")
    g.add_argument("--backbone", "--hf_path", dest="backbone",
                   help="any timm ViT name (default: the architecture of --backbone_weights when it is a DINO or "
                        "DINOv2 file, else vit_small_patch14_dinov2)")
    g.add_argument("--backbone_weights", help="local .pth/.safetensors backbone weights, or 'hub' (needs internet); "
                                              "default: random init as the official code")
    g.add_argument("--image_size", type=int, default=224)
    g.add_argument("--patch_size", type=int, help="override the backbone's patch size (random init only)")
    g.add_argument("--top_k", type=int, help="image score = mean of the top-k patch logits (default 3; given at "
                                            "test time, overrides the checkpoint's)")
    g.add_argument("--smoothing_sigma", type=float, help="Gaussian sigma on the upsampled map (default 6; given at "
                                                         "test time, overrides the checkpoint's)")
    g.add_argument("--smoothing_radius", type=int, help="Gaussian radius in px (default 7; as --smoothing_sigma)")

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
    g.add_argument("--save_every", type=int, default=50, help="keep a numbered checkpoint every N epochs")
    g.add_argument("--resume", action="store_true",
                   help="continue from <checkpoint_dir>/patchguard_<dataset>_<class>_last.pth")
    g.add_argument("--overwrite", action="store_true",
                   help="train from scratch even where a previous run left checkpoints or results, and test over "
                        "another checkpoint's metrics.json (they are replaced)")

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
    g.add_argument("--onnx", help="score with this exported model (--mode export) in ONNX Runtime instead of the "
                                  "run's PyTorch model; no dataset options needed")
    g.add_argument("--threshold_dir", help="normal validation images for the decision threshold "
                                           "(default: the class's normal training images)")
    g.add_argument("--threshold_quantile", type=float, default=0.99,
                   help="threshold = this quantile of the normal images' scores")
    for part in list(METHODS.values()) + list(GENERATORS.values()):
        part.add_arguments(p)
    return p


def parse_config(argv=None) -> RunConfig:
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**config_file_defaults(parser, pre.config))
    return config_from_args(parser.parse_args(argv))


def _positive(name: str, value) -> None:
    if value is None or value <= 0:
        raise UserError(f"--{name} must be positive, got {value}")


def config_from_args(a: argparse.Namespace) -> RunConfig:
    if a.mode == "seeds":
        if len(a.run_dirs) < 1 or not a.output_dir:
            raise UserError("--mode seeds needs --run_dirs (one or more run directories) and --output_dir")
        a.class_name, a.dataset_dir = a.class_name or "seeds", a.dataset_dir or "."
    if a.mode == "predict" and a.onnx:  # the exported model carries what it needs; outputs go to its run folder
        a.class_name, a.dataset_dir = a.class_name or "onnx", a.dataset_dir or "."
        a.output_dir = a.output_dir or os.path.dirname(os.path.dirname(os.path.abspath(a.onnx)))
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
    _check_numbers(a)
    method = get_method(a.method)
    generator = get_generator(a.pseudo_anomaly or method.generator_default)
    adv_train = method.adv_train_default if a.adv_train is None else a.adv_train
    precision, precision_reason = resolve_precision(a.precision, a.device)
    return RunConfig(
        mode=a.mode, method=method.name, method_options=method.options(a),
        output_dir=a.output_dir or os.path.join("runs", a.dataset, "" if a.class_name == "all" else a.class_name),
        checkpoint_dir=a.checkpoint_dir, checkpoint=a.checkpoint, device=a.device, precision=precision,
        precision_reason=precision_reason, compile=a.compile,
        seed=a.seed, tqdm=a.tqdm, use_data_prep=a.use_data_prep, use_weight_prep=a.use_weight_prep,
        run_dirs=tuple(a.run_dirs), devices=tuple(a.devices),
        data=DataConfig(dataset=a.dataset, class_name=a.class_name, dataset_dir=a.dataset_dir,
                        foreground_dir=a.foreground_dir, foreground=a.foreground, cache_dir=a.cache_dir,
                        visa_split=a.visa_split, nih_split=a.nih_split, on_corrupt=a.on_corrupt,
                        normal_dir=a.normal_dir,
                        abnormal_dir=tuple(a.abnormal_dir), mask_dir=tuple(a.mask_dir), normal_test_dir=a.normal_test_dir,
                        pseudo_anomaly=generator.name, generator=generator.options(a, bool(a.backbone_weights)),
                        train_batch_size=a.train_batch_size, test_batch_size=a.test_batch_size,
                        num_workers=a.num_workers if a.num_workers is not None else
                        default_workers(a.device, len(a.devices))),
        train=TrainConfig(epochs=a.epochs, lr=a.lr, lr_decay_factor=a.lr_decay_factor, weight_decay=a.weight_decay,
                          adv_train=adv_train and (a.step_train > 0 or a.train_attack != "pgd") and a.epsilon_train > 0,
                          train_attack=a.train_attack, co_guard=a.co_guard, co_factor=a.co_factor,
                          co_every=a.co_every, epsilon_train=a.epsilon_train / 255, step_train=a.step_train,
                          attack_mode=a.train_attack_mode, save_every=a.save_every, resume=a.resume,
                          overwrite=a.overwrite, backbone_weights=a.backbone_weights),
        eval=EvalConfig(adv_test=a.adv_test, attack=tuple(dict.fromkeys(a.attack)),
                        epsilon_test=tuple(e / 255 for e in a.epsilon_test), step_test=tuple(a.step_test),
                        attack_target=a.attack_target, random_start=a.random_start, restarts=a.restarts,
                        recompute=a.recompute, **{k: getattr(a, k) for k in READOUT_KEYS},
                        predict_dir=a.predict_dir, onnx=a.onnx, threshold_dir=a.threshold_dir,
                        threshold_quantile=a.threshold_quantile,
                        epsilon_visualization=a.epsilon_visualization / 255, step_visualization=a.step_visualization,
                        num_visualization=a.num_visualization))


def _check_numbers(a: argparse.Namespace) -> None:
    """The shared options' ranges (each method and generator checks its own)."""
    for name in ("step_test", "step_train", "step_visualization", "save_every", "num_visualization", "co_every"):
        values = getattr(a, name)
        if any(n < 0 for n in (values if isinstance(values, list) else [values])):
            raise UserError(f"--{name} must be >= 0, got {values}")
    if not 0 < a.threshold_quantile <= 1:
        raise UserError(f"--threshold_quantile must be in (0, 1], got {a.threshold_quantile}")
    for name in ("image_size", "epochs", "train_batch_size", "test_batch_size", "restarts", "lr"):
        _positive(name, getattr(a, name))
    for name in ("top_k", "smoothing_radius", "patch_size"):
        if getattr(a, name) is not None:
            _positive(name, getattr(a, name))
    if a.smoothing_sigma is not None and a.smoothing_sigma < 0:
        raise UserError(f"--smoothing_sigma must be >= 0, got {a.smoothing_sigma}")
    if a.num_workers is not None and a.num_workers < 0:
        raise UserError(f"--num_workers must be >= 0, got {a.num_workers}")
    for eps in list(a.epsilon_test) + [a.epsilon_train, a.epsilon_visualization]:
        if not 0 <= eps <= 255:
            raise UserError(f"epsilon {eps} is outside [0, 255] (values are in 1/255 units)")
