"""Public datasets, downloaded once, checked, and turned into the folder layout that every source ends as.

A download appears at its path only once it is complete and its checksum is right, so a
later run never trusts half a file; a failure names the address, the cause and the two
ways out (place the file by hand, or set ``data.base_url`` to a mirror).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from seglab.atomic import atomic_dir, atomic_file, check_ours
from seglab.readers import DataError

OXFORD_PETS = {
    "url": "https://www.robots.ox.ac.uk/~vgg/data/pets/data/",
    "files": {"images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c", "annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdf3f68f"},
    "classes": ["background", "pet", "border"],
    "colors": [[0, 0, 0], [255, 140, 0], [255, 255, 255]],
}
_TRIMAP_TO_CLASS = np.array([0, 1, 0, 2], np.uint8)  # trimap 1 = pet, 2 = background, 3 = border


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


DOWNLOAD_TIMEOUT = 60  # seconds without an answer before a download counts as failed


def download(url: str, dest: Path, md5: str) -> Path:
    """Fetch ``url`` to ``dest`` unless a file with the right checksum is already there.

    The file appears at ``dest`` only once it is complete and verified, so a later run never
    trusts half a download. A failure names the address, the cause and the two ways out.
    """
    found = md5sum(dest) if dest.exists() else None
    if found == md5:
        return dest

    def failed(cause: str) -> DataError:
        instead = f" instead of the file there now (md5 {found})" if found else ""
        return DataError(f"could not download {url}: {cause}; place the file by hand at {dest} (md5 {md5}){instead}, "
                         f"or set data.base_url to a mirror that serves {dest.name}")

    def fetch(tmp: Path) -> None:
        received = 0
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                with tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
            raise failed(_network_cause(error)) from None
        if received < total:  # http.client ends a short body quietly
            raise failed(f"the connection closed after {received} of {total} bytes")
        got = md5sum(tmp)
        if got != md5:
            raise failed(f"checksum mismatch (got md5 {got}), so the download is corrupt or the file has changed")

    return atomic_file(dest, fetch)


def _network_cause(error: Exception) -> str:
    """Why a download failed, in words: the HTTP status, or what the network said."""
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {error.reason}"
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, socket.gaierror):
        return f"name resolution failed, so there is no network or the host is wrong ({reason.strerror})"
    if isinstance(reason, ConnectionRefusedError):
        return "the connection was refused (nothing listens at that address)"
    if isinstance(reason, TimeoutError):
        return f"no answer within {DOWNLOAD_TIMEOUT} s"
    return f"network error ({reason})"


def prepare_oxford_pets(download_dir: str | Path, base_url: Optional[str] = None) -> Path:
    """Download (once) and convert the Oxford-IIIT Pet trimaps to the folder layout."""
    download_dir = Path(download_dir)
    root = download_dir / "oxford_pets"
    if (root / "classes.json").exists():
        return root
    check_ours(root, "data.download_dir")  # before hundreds of MB are downloaded: a folder of the user's stays
    base = (base_url or OXFORD_PETS["url"]).rstrip("/") + "/"
    archives = {name: download(base + name, download_dir / name, md5) for name, md5 in OXFORD_PETS["files"].items()}
    with tempfile.TemporaryDirectory(dir=download_dir) as extracted, atomic_dir(root) as out:
        for archive in archives.values():
            with tarfile.open(archive) as tar:
                tar.extractall(extracted, filter="data")
        (out / "images").mkdir()
        (out / "masks").mkdir()
        images = {p.stem: p for p in Path(extracted, "images").glob("*.jpg")}
        for trimap in sorted(Path(extracted, "annotations", "trimaps").glob("*.png")):
            if trimap.name.startswith(".") or trimap.stem not in images:
                continue
            values = np.asarray(Image.open(trimap))
            Image.fromarray(_TRIMAP_TO_CLASS[np.clip(values, 0, 3)]).save(out / "masks" / f"{trimap.stem}.png")
            shutil.move(images[trimap.stem], out / "images" / images[trimap.stem].name)
        classes = {"classes": OXFORD_PETS["classes"], "colors": OXFORD_PETS["colors"]}
        (out / "classes.json").write_text(json.dumps(classes))
    return root
