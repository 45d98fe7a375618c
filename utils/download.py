"""Downloads that resume, check what they got, and fail within seconds with what to do by hand."""
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from typing import Optional

from utils.errors import UserError

TIMEOUT = 10.0


def manual_hint(url: str, place: str) -> str:
    return f"download {url} by hand and put it at {place}"


GDRIVE = "https://drive.google.com"


def require_host(url: str, place: str, host_url: Optional[str] = None, timeout: float = 3.0) -> None:
    """Fail fast (one TCP connect) when the host of `host_url` (default: of `url`) cannot be reached."""
    parts = urllib.parse.urlsplit(host_url or url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"cannot reach {parts.hostname} ({e.strerror or e}); {manual_hint(url, place)}") from None


def fetch(url: str, dest: str, timeout: float = TIMEOUT) -> str:
    """Download url to dest through dest.part (resumed with an HTTP Range request); rename only when complete."""
    if os.path.isfile(dest):
        return dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # server ignores Range: start over
                have = 0
            total = response.headers.get("Content-Length")
            expected = have + int(total) if total else None
            with open(part, "ab" if have else "wb") as f:
                shutil.copyfileobj(response, f, length=1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise UserError(f"download of {url} failed ({reason}); rerun to resume, or {manual_hint(url, dest)}") from None
    if expected is not None and os.path.getsize(part) != expected:
        raise UserError(f"download of {url} is incomplete ({os.path.getsize(part)} of {expected} bytes); "
                        f"rerun to resume")
    os.replace(part, dest)
    return dest


def check_archive(path: str) -> None:
    """Read the whole archive once: a truncated or corrupt file fails here, before anything is extracted."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                if bad:
                    raise UserError(f"archive {path} is corrupt (first bad member: {bad}); delete it and rerun")
        else:
            with tarfile.open(path) as t:
                for _ in t:
                    pass
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise UserError(f"archive {path} is corrupt or truncated ({e}); delete it and rerun") from None


def extract(path: str, target: str, replace: bool = False) -> list:
    """Extract into a temp folder beside `target`, then move each top-level entry in: no half-extracted dataset.

    An entry that already exists in `target` is kept as it is (the user's data), unless `replace`: then the new one
    is moved in first and the old one deleted only after. Returns the names kept.
    """
    check_archive(path)
    os.makedirs(target, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=target, prefix=".extract-")
    kept = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                z.extractall(tmp)
        else:
            with tarfile.open(path) as t:
                t.extractall(tmp, filter="data")  # refuses absolute paths and '..'
        for name in os.listdir(tmp):
            final = os.path.join(target, name)
            if os.path.lexists(final) and not replace:
                kept.append(name)
                continue
            replace_path(os.path.join(tmp, name), final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return kept


def replace_path(new: str, final: str) -> None:
    """Move `new` to `final`; an existing `final` is set aside first and deleted only once `new` is in place."""
    old = None
    if os.path.lexists(final):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(final)), prefix=".replaced-")
        os.replace(final, os.path.join(old, "entry"))
    try:
        os.replace(new, final)
    except OSError:
        if old:
            os.replace(os.path.join(old, "entry"), final)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def gdown_fetch(file_id: str, dest: str, hint_url: Optional[str] = None) -> str:
    """One Google Drive file via gdown, through a .part file."""
    url = hint_url or f"{GDRIVE}/uc?id={file_id}"
    require_host(url, dest, GDRIVE)
    try:
        import gdown
    except ImportError:
        raise UserError(f"gdown is not installed (pip install gdown); or {manual_hint(url, dest)}") from None
    part = dest + ".part"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    try:
        out = gdown.download(id=file_id, output=part, quiet=False, resume=True)
    except Exception as e:  # gdown raises many kinds
        raise UserError(f"Google Drive download failed ({e}); {manual_hint(url, dest)}") from None
    if not out or not os.path.isfile(part):
        raise UserError(f"Google Drive download failed; {manual_hint(url, dest)}")
    os.replace(part, dest)
    return dest


def gdown_folder_files(folder_id: str, place: str):
    """List (name, id) of the files in a Google Drive folder without downloading them."""
    url = f"{GDRIVE}/drive/folders/{folder_id}"
    require_host(url, place, GDRIVE)
    try:
        import gdown
        files = gdown.download_folder(id=folder_id, skip_download=True, quiet=True)
    except ImportError:
        raise UserError(f"gdown is not installed (pip install gdown); or {manual_hint(url, place)}") from None
    except Exception as e:
        raise UserError(f"cannot list Google Drive folder {url} ({e}); {manual_hint(url, place)}") from None
    return [(os.path.basename(f.path), f.id) for f in files or []]
