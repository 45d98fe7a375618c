"""Reading images and masks of any mode (gray, RGBA, 16-bit, palette) as square uint8 arrays."""
import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError


def _open(path: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float: rescale to 8 bits, don't clip
        a = np.asarray(img, dtype=np.float64)
        lo, hi = a.min(), a.max()
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        img = Image.fromarray(a.astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 at the file's own size."""
    return np.asarray(_to_rgb(_open(path)))


def load_image(path: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8, resized with LANCZOS (official)."""
    return np.asarray(_to_rgb(_open(path)).resize((size, size), Image.LANCZOS))


def image_size_of(path: str):
    """(width, height) from the header, without decoding."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def load_mask(path: str, size: int, expected_size=None) -> np.ndarray:
    """(size, size) bool; LANCZOS resize then any non-zero pixel is set (official)."""
    img = _open(path)
    if expected_size is not None and img.size != tuple(expected_size):
        raise UserError(f"mask {path} is {img.size[0]}x{img.size[1]} but its image is "
                        f"{expected_size[0]}x{expected_size[1]}")
    a = np.asarray(img.convert("L").resize((size, size), Image.LANCZOS))
    return a > 0


def box_mask(boxes, frame: int, image_size, size: int) -> np.ndarray:
    """(size, size) bool mask of (x, y, w, h) boxes given in a `frame` px square frame (0: the image's own size).

    Drawn straight at the output size (scaled like the image), not resized: LANCZOS ringing of a drawn box would
    mark stray pixels around it."""
    width, height = image_size
    sx, sy = (size / frame, size / frame) if frame else (size / width, size / height)
    mask = np.zeros((size, size), bool)
    for x, y, w, h in boxes:
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = int(np.ceil((x + w) * sx)), int(np.ceil((y + h) * sy))
        mask[max(0, y0):min(size, y1), max(0, x0):min(size, x1)] = True
    return mask
