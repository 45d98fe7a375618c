"""One Dataset over a sample list. Training items carry a pseudo-anomaly made in the DataLoader worker."""
from typing import List, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.images import box_mask, image_size_of, load_image, load_mask
from datasets.pseudo_anomaly import PseudoAnomalyGenerator, patch_labels
from datasets.samples import Sample
from utils.errors import UserError


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255)


class AnomalyDataset(Dataset):
    """Images decoded and resized once, up front (also surfaces unreadable files before training starts).

    Test items: image (3, S, S) in [0, 1], label, mask (S, S), has_mask, index.
    Train items (with `generator`): image, pseudo (pseudo-anomalous copy), pseudo_mask, patch_labels (N,), index.
    The pseudo-anomaly RNG is seeded from (seed, epoch, index): the same item is the same in any worker
    and after a resume. Items are asked for by index (the epoch set by `set_epoch`) or by (index, epoch), which
    is how workers that live across epochs learn the epoch. The attention saliency lives in shared memory, so
    such workers see every refresh.
    """

    def __init__(self, samples: List[Sample], image_size: int, patch_size: int,
                 generator: Optional[PseudoAnomalyGenerator] = None, whole_image_foreground: bool = False,
                 seed: int = 0, skip_corrupt: bool = False):
        self.image_size, self.patch_size = image_size, patch_size
        self.generator, self.seed, self.epoch = generator, seed, 0
        self.use_foreground = generator is not None and not whole_image_foreground
        self.samples, self.images, self.masks, self.foregrounds, self.skipped = [], [], [], [], []
        for s in samples:
            try:
                image, mask = load_image(s.image, image_size), self._mask(s)
                fg = load_mask(s.foreground, image_size) if self.use_foreground and s.foreground else None
            except UserError as e:
                if not skip_corrupt:
                    raise
                self.skipped.append((s.image, str(e)))
                continue
            self.samples.append(s)
            self.images.append(image)
            self.masks.append(mask)
            self.foregrounds.append(fg)
        if not self.samples:
            raise UserError(f"no readable images among {len(samples)} (first: {samples[0].image if samples else '-'})")
        grid = image_size // patch_size
        self._saliency = torch.zeros(len(self.samples), grid, grid).share_memory_() if generator else None
        self._has_saliency = torch.zeros(1, dtype=torch.bool).share_memory_()

    def _mask(self, s: Sample) -> Optional[np.ndarray]:
        if s.boxes:
            return box_mask(s.boxes, s.box_frame, image_size_of(s.image), self.image_size)
        if s.mask is None:
            return None
        return load_mask(s.mask, self.image_size, expected_size=image_size_of(s.image))

    @property
    def has_masks(self) -> bool:
        anomalous = [m for s, m in zip(self.samples, self.masks) if s.label]
        return bool(anomalous) and all(m is not None for m in anomalous)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_saliency(self, maps: Optional[np.ndarray]) -> None:
        """(n, gh, gw) attention saliency per image, guiding the attention generator instead of the foreground
        masks; None goes back to the foreground (or uniform) sampling."""
        if maps is not None:
            self._saliency.copy_(torch.as_tensor(np.asarray(maps, dtype=np.float32)))
        self._has_saliency.fill_(maps is not None)

    @property
    def saliency(self) -> Optional[np.ndarray]:
        return self._saliency.numpy() if bool(self._has_saliency) else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        image = self.images[index]
        if self.generator is None:
            mask = self.masks[index]
            return {"image": to_tensor(image), "label": self.samples[index].label,
                    "mask": torch.from_numpy(np.array(mask) if mask is not None else
                                             np.zeros(image.shape[:2], bool)).float(),
                    "has_mask": mask is not None, "index": index}
        rng = np.random.default_rng([self.seed, epoch, index])
        guide = self.foregrounds[index] if self.saliency is None else self.saliency[index]
        pseudo, pmask = self.generator(image, guide, rng)
        return {"image": to_tensor(image), "pseudo": to_tensor(pseudo),
                "pseudo_mask": torch.from_numpy(pmask).float(),
                "patch_labels": torch.from_numpy(patch_labels(pmask, self.patch_size)), "index": index}
