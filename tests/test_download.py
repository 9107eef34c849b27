"""The public-dataset path, against a server on 127.0.0.1 serving archives the test builds."""
import functools
import hashlib
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

from seglab import sources
from seglab.data_loading import prepare_dataset
from seglab.artifacts import RunDir


def _tar(files: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _png(array, fmt="PNG"):
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def pets_server(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    trimap = np.full((30, 40), 2, np.uint8)
    trimap[5:25, 10:30] = 1
    trimap[5, 10:30] = 3
    images, trimaps = {}, {}
    for i in range(5):
        images[f"images/Cat_{i}.jpg"] = _png(np.full((30, 40, 3), 40 * i, np.uint8), "JPEG")
        trimaps[f"annotations/trimaps/Cat_{i}.png"] = _png(trimap)
    trimaps["annotations/trimaps/._Cat_0.png"] = b"resource fork junk"
    archives = {"images.tar.gz": _tar(images), "annotations.tar.gz": _tar(trimaps)}
    for name, data in archives.items():
        (served / name).write_bytes(data)
    monkeypatch.setitem(sources.OXFORD_PETS, "files", {n: hashlib.md5(d).hexdigest() for n, d in archives.items()})
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", served
    server.shutdown()


def test_download_verify_extract_and_convert(tmp_path, pets_server, make_config):
    url, _ = pets_server
    cfg = make_config("data.source=oxford_pets", f"data.base_url={url}", "data.image_size=32")
    manifest = prepare_dataset(cfg, RunDir(cfg.run_dir))
    assert manifest["classes"] == ["background", "pet", "border"]
    assert manifest["source"]["images"] == 5
    pixels = np.sum([manifest["splits"][s]["pixels"] for s in manifest["splits"]], axis=0)
    assert (pixels > 0).all()  # all three trimap values arrived, remapped
    root = tmp_path / "downloads" / "oxford_pets"
    mask = np.asarray(Image.open(root / "masks" / "Cat_0.png"))
    assert mask[0, 0] == 0 and mask[10, 15] == 1 and mask[5, 15] == 2


def test_second_run_uses_the_cache(tmp_path, pets_server):
    url, served = pets_server
    sources.prepare_oxford_pets(tmp_path / "dl", url)
    for f in served.iterdir():
        f.unlink()  # the server has nothing now: a second download would fail
    assert (sources.prepare_oxford_pets(tmp_path / "dl", url) / "classes.json").exists()


def test_checksum_mismatch_is_an_error_and_leaves_no_file(tmp_path, pets_server, monkeypatch):
    url, _ = pets_server
    monkeypatch.setitem(sources.OXFORD_PETS, "files", {"images.tar.gz": "0" * 32})
    with pytest.raises(sources.DataError, match="images.tar.gz: checksum mismatch"):
        sources.prepare_oxford_pets(tmp_path / "dl", url)
    assert not any((tmp_path / "dl").glob("*.tar.gz"))
