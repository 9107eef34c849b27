"""The public-dataset path, against a server on 127.0.0.1 serving archives the test builds."""
import functools
import hashlib
import http.server
import io
import socket
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

from seglab import downloads
from seglab.data_loading import prepare_dataset
from seglab.readers import DataError
from seglab.rundir import RunDir


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
    monkeypatch.setitem(downloads.OXFORD_PETS, "files", {n: hashlib.md5(d).hexdigest() for n, d in archives.items()})
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", served
    server.shutdown()


def test_download_verify_extract_and_convert(tmp_path, pets_server, make_config):
    url, _ = pets_server
    cfg = make_config("data.source=oxford_pets", f"data.base_url={url}", "data.image_size=32")
    dataset = prepare_dataset(cfg, RunDir(cfg.run_dir))
    assert dataset.classes == ["background", "pet", "border"]
    assert dataset.source.images == 5 and dataset.source.kind == "oxford_pets"
    pixels = np.sum([info.pixels for info in dataset.splits.values()], axis=0)
    assert (pixels > 0).all()  # all three trimap values arrived, remapped
    root = tmp_path / "downloads" / "oxford_pets"
    mask = np.asarray(Image.open(root / "masks" / "Cat_0.png"))
    assert mask[0, 0] == 0 and mask[10, 15] == 1 and mask[5, 15] == 2


def test_second_run_uses_the_cache(tmp_path, pets_server):
    url, served = pets_server
    downloads.prepare_oxford_pets(tmp_path / "dl", url)
    for f in served.iterdir():
        f.unlink()  # the server has nothing now: a second download would fail
    assert (downloads.prepare_oxford_pets(tmp_path / "dl", url) / "classes.json").exists()


def test_checksum_mismatch_is_an_error_and_leaves_no_file(tmp_path, pets_server, monkeypatch):
    url, served = pets_server
    monkeypatch.setitem(downloads.OXFORD_PETS, "files", {"images.tar.gz": "0" * 32})
    with pytest.raises(DataError) as raised:
        downloads.prepare_oxford_pets(tmp_path / "dl", url)
    served_md5 = hashlib.md5((served / "images.tar.gz").read_bytes()).hexdigest()
    _assert_failed_usefully(str(raised.value), url + "images.tar.gz", f"checksum mismatch (got md5 {served_md5})",
                            tmp_path / "dl" / "images.tar.gz")
    assert _left_in(tmp_path / "dl") == []  # neither the file nor its temporary


def _refusing_url() -> str:
    """An address on 127.0.0.1 with nothing listening: what an offline machine meets."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _assert_failed_usefully(message: str, url: str, cause: str, dest):
    assert f"could not download {url}: {cause}" in message
    assert f"place the file by hand at {dest} (md5 " in message and "set data.base_url to a mirror" in message
    assert "\n" not in message


def _left_in(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_no_network_names_the_address_the_cause_and_the_ways_out(tmp_path):
    url = _refusing_url()
    with pytest.raises(DataError) as raised:
        downloads.prepare_oxford_pets(tmp_path / "dl", url)
    _assert_failed_usefully(str(raised.value), url + "images.tar.gz", "the connection was refused",
                            tmp_path / "dl" / "images.tar.gz")
    assert _left_in(tmp_path / "dl") == []


def test_an_http_error_is_named_with_its_status(tmp_path, pets_server):
    url, served = pets_server
    (served / "annotations.tar.gz").unlink()
    with pytest.raises(DataError) as raised:
        downloads.prepare_oxford_pets(tmp_path / "dl", url)
    _assert_failed_usefully(str(raised.value), url + "annotations.tar.gz", "the server answered HTTP 404 File not found",
                            tmp_path / "dl" / "annotations.tar.gz")
    assert _left_in(tmp_path / "dl") == ["images.tar.gz"]  # complete and verified: kept for the next run


def test_a_connection_cut_mid_download_leaves_nothing(tmp_path):
    class Truncated(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)  # then the connection closes

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncated)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/images.tar.gz"
    try:
        with pytest.raises(DataError) as raised:
            downloads.download(url, tmp_path / "dl" / "images.tar.gz", "0" * 32)
    finally:
        server.shutdown()
    _assert_failed_usefully(str(raised.value), url, "the connection closed after 1000 of 100000 bytes",
                            tmp_path / "dl" / "images.tar.gz")
    assert _left_in(tmp_path / "dl") == []


def test_a_wrong_file_placed_by_hand_is_named_and_kept(tmp_path):
    dest = tmp_path / "dl" / "images.tar.gz"
    dest.parent.mkdir()
    dest.write_bytes(b"not the archive")
    with pytest.raises(DataError, match=f"instead of the file there now \\(md5 {hashlib.md5(b'not the archive').hexdigest()}\\)"):
        downloads.prepare_oxford_pets(tmp_path / "dl", _refusing_url())
    assert dest.read_bytes() == b"not the archive" and _left_in(tmp_path / "dl") == ["images.tar.gz"]


def test_offline_the_default_address_is_named_with_name_resolution_failing(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(DataError) as raised:
        downloads.prepare_oxford_pets(tmp_path / "dl")
    _assert_failed_usefully(str(raised.value), downloads.OXFORD_PETS["url"] + "images.tar.gz",
                            "name resolution failed, so there is no network",
                            tmp_path / "dl" / "images.tar.gz")
    assert _left_in(tmp_path / "dl") == []
