"""--mode export: the trained model as ONNX, checked against PyTorch before it is kept.

<run>/export/model.onnx takes images (B, 3, S, S) in [0, 1] at the model's input size (normalisation inside, as in
the model; dynamic batch) and returns the image scores (B,) and the smoothed anomaly maps (B, S, S), read out and
smoothed exactly as --mode test does (scipy's Gaussian with mode "reflect" as index gathers and convolutions).
Its metadata carry what --mode predict needs without the run folder: the decision threshold (a quantile of the
normal training images' scores), the heatmap colour range, the method and the run's config. Test-time adaptation
is not exported (CaSA exports without TTA).
"""
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn

from config import RunConfig
from datasets.assembly import test_dataset
from engine.common import loader, log
from engine.loading import checkpoint_path, load_for_evaluation
from engine.scoring import score_loader
from utils.anomaly_map import SmoothedMaps
from utils.errors import UserError
from utils.io import atomic_write, ensure_writable_dir

OPSET = 18
SCORE_TOLERANCE, MAP_TOLERANCE = 1e-4, 1e-3


class Deployable(nn.Module):
    """images in [0, 1] -> (image scores, smoothed maps at the input size): the method's read-out in one graph."""

    def __init__(self, method, model):
        super().__init__()
        self.method, self.model = method, model
        c = model.cfg
        self.maps = SmoothedMaps(model.grid_size, (c.image_size, c.image_size), c.smoothing_sigma, c.smoothing_radius)

    def forward(self, images: torch.Tensor):
        out = self.method.read_out(self.model, self.model(images).float())
        return out.image_scores, self.maps(out.patch_map)


def onnx_path(cfg: RunConfig) -> str:
    return os.path.join(cfg.output_dir, "export", "model.onnx")


def run_export(cfg: RunConfig) -> str:
    import onnx
    from engine.predict import normal_reference
    path = onnx_path(cfg)
    ensure_writable_dir(os.path.dirname(path))
    method, model, device = load_for_evaluation(cfg)
    model = model.cpu().eval()
    deployable = Deployable(method, model).eval()
    size = model.cfg.image_size
    reference = normal_reference(cfg, method, model, torch.device("cpu"), bf16=False)  # as the graph: fp32
    example = torch.rand(2, 3, size, size)
    try:
        program = torch.onnx.export(deployable, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=["images"], output_names=["scores", "maps"],
                                    dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}}, verbose=False)
    except Exception as e:  # an architecture the exporter cannot trace
        raise UserError(f"cannot export {checkpoint_path(cfg)} to ONNX: {str(e).splitlines()[0]}") from None
    proto = program.model_proto
    metadata = {"method": method.name, "input_size": str(size), "threshold": repr(reference["threshold"]),
                "threshold_quantile": repr(cfg.eval.threshold_quantile), "threshold_from": reference["source"],
                "heat_range": json.dumps(reference["heat_range"]), "flat": str(reference["flat"]),
                "checkpoint": os.path.abspath(checkpoint_path(cfg)), "config": json.dumps(cfg.as_dict())}
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    def write_checked(tmp):
        onnx.save(proto, tmp)
        check_against_pytorch(tmp, cfg, method, model)  # raises (and the file is never kept) if they disagree
    atomic_write(path, write_checked)
    log.info("wrote %s (opset %d, dynamic batch, input %dx%d in [0, 1]; threshold %.4f from %s)", path, OPSET,
             size, size, reference["threshold"], reference["source"])
    return path


def check_against_pytorch(path: str, cfg: RunConfig, method, model) -> None:
    """The run's test images through ONNX Runtime and PyTorch: scores within 1e-4, maps within 1e-3, or no file."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    dataset = test_dataset(cfg, model.cfg.image_size, model.patch_size)
    torch_out = score_loader(method, model, loader(dataset, cfg.data.test_batch_size, 0), torch.device("cpu"),
                             False, show=False)
    scores, maps = [], []
    for batch in loader(dataset, cfg.data.test_batch_size, 0):
        s, m = session.run(None, {"images": batch["image"].numpy()})
        scores.append(s)
        maps.append(m)
    score_diff = float(np.abs(np.concatenate(scores) - torch_out["scores"]).max())
    map_diff = float(np.abs(np.concatenate(maps) - torch_out["maps"]).max())
    log.info("ONNX Runtime against PyTorch on %d test images: max |score difference| %.2e (allowed %.0e), "
             "max |map difference| %.2e (allowed %.0e)", len(dataset), score_diff, SCORE_TOLERANCE, map_diff,
             MAP_TOLERANCE)
    if not (score_diff <= SCORE_TOLERANCE and map_diff <= MAP_TOLERANCE):
        raise UserError(f"the ONNX model disagrees with PyTorch on the test images (scores {score_diff:.2e}, maps "
                        f"{map_diff:.2e}; allowed {SCORE_TOLERANCE:.0e}, {MAP_TOLERANCE:.0e}): not written")


def throughput(session_or_model, size: int, batch: int, repeats: int = 5) -> float:
    """Images per second of an ONNX Runtime session or a torch module on random inputs (median of `repeats`)."""
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    if isinstance(session_or_model, nn.Module):
        def run():
            with torch.no_grad():
                session_or_model(torch.from_numpy(x))
    else:
        def run():
            session_or_model.run(None, {"images": x})
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return batch / sorted(times)[len(times) // 2]
