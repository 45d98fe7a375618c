"""PatchGuard command line: python main.py --mode train|test|visualization|all --dataset D --class_name C ..."""
import sys

from utils.errors import UserError


def run_class(cfg) -> dict:
    """One class: the modes asked for, in order. Returns the test metrics when tested."""
    import torch
    from engine.common import log, setup_logging
    from engine.evaluate import run_test
    from engine.foreground_report import run_foreground_report
    from engine.predict import run_predict
    from engine.train import run_train
    from engine.visualize import run_visualization
    from methods import get_method
    from utils.distributed import is_main
    from utils.io import ensure_writable_dir

    ensure_writable_dir(cfg.output_dir)
    setup_logging(cfg.output_dir)
    device = torch.device("cuda" if cfg.device == "cuda" and torch.cuda.is_available() else "cpu")
    log.info("precision: %s on %s (%s)", "bf16 autocast" if cfg.bf16 else "fp32", device, cfg.precision_reason)
    if cfg.compile:
        method = get_method(cfg.method)
        log.info("--compile: %s", "attacks evaluate the model through torch.compile" if method.compilable else
                 f"{method.eager_reason}: attacks run eagerly")
    results = {}
    if cfg.mode == "foreground" and is_main():
        run_foreground_report(cfg)
    if cfg.mode in ("train", "all"):
        run_train(cfg)  # refuses before writing anything where a previous run's model lies
    if cfg.mode in ("test", "all"):
        results = run_test(cfg)
    if cfg.mode in ("visualization", "all") and is_main():  # pictures: rank 0 alone
        run_visualization(cfg)
    if cfg.mode == "predict" and is_main():
        run_predict(cfg)
    if cfg.mode == "export" and is_main():
        from engine.export import run_export
        run_export(cfg)
    if is_main() and cfg.mode != "foreground":
        from engine.report_page import write_report
        page = write_report(cfg.output_dir)
        if page:
            log.info("report: %s", page)
    log.info("run directory: %s", cfg.output_dir)
    return results


def run(cfg) -> None:
    if cfg.use_data_prep:
        from download_data import download_dataset
        download_dataset(cfg.data.dataset, cfg.data.dataset_dir)
    if cfg.use_weight_prep:
        from download_weight import download_weights
        download_weights(cfg.data.dataset, cfg.data.class_name, cfg.checkpoints)
    if cfg.data.dataset == "demo":
        from datasets.demo import build_demo
        build_demo(cfg.data.dataset_dir, seed=0)
    if cfg.mode == "seeds":
        from engine.common import setup_logging
        from engine.summary import summarize_seeds
        from utils.distributed import is_main
        if is_main():  # a summary of finished runs: one process writes it
            setup_logging(cfg.output_dir)
            summarize_seeds(cfg.run_dirs, cfg.output_dir)
        return
    if cfg.data.class_name != "all":
        run_class(cfg)
        return
    from engine.summary import run_all_classes
    run_all_classes(cfg, run_class)


def main(argv=None) -> int:
    try:
        from config import parse_config
        from utils.distributed import init_from_env
        cfg = parse_config(argv)
        init_from_env(cfg.device, cfg.devices)  # torchrun: one process per device
        run(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; training continues from the last complete checkpoint with --resume, and a "
              "test re-run skips the settings already in metrics.json", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
