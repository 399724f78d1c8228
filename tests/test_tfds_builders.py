"""The tensorflow-datasets path as a user takes it: tfds' own MNIST, CIFAR-10 and CIFAR-100
builders download tiny files in the original formats from a server on 127.0.0.1, prepare them
into a data_dir, and lbtf trains on that data_dir with downloads off. No `mock_data`: the builders,
their download manager and their file parsers all run."""

from __future__ import annotations

import gzip
import http.server
import io
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_experiment

TRAIN, TEST = 24, 8


def _idx(array: np.ndarray, magic: int) -> bytes:
    """An MNIST IDX file: big-endian magic, dimensions, then the uint8 data."""
    head = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return gzip.compress(head + array.astype(np.uint8).tobytes())


def write_mnist(folder: Path, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, ...]]:
    splits = {}
    for prefix, n, split in (("train", TRAIN, "train"), ("t10k", TEST, "test")):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n) % 10
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(x, 2051))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(y, 2049))
        splits[split] = (x[..., None], y)
    return splits


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def _cifar_records(x: np.ndarray, labels: list[np.ndarray]) -> bytes:
    """CIFAR's binary format: per image its label bytes, then 3072 bytes channel-first."""
    planes = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    return b"".join(bytes(int(lab[i]) for lab in labels) + planes[i].tobytes()
                    for i in range(len(x)))


def write_cifar(folder: Path, rng: np.random.Generator, classes: int) -> dict:
    splits, members = {}, {}
    for split, n in (("train", TRAIN), ("test", TEST)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = (np.arange(n) * 7) % classes
        splits[split] = (x, y)
        splits[f"{split}_records"] = (x, [y // 5, y] if classes == 100 else [y])
    if classes == 10:
        train_x, (train_y,) = splits["train_records"]
        for b in range(5):  # five training batches, as the real archive has
            part = slice(b * TRAIN // 5, (b + 1) * TRAIN // 5)
            members[f"cifar-10-batches-bin/data_batch_{b + 1}.bin"] = _cifar_records(
                train_x[part], [train_y[part]])
        members["cifar-10-batches-bin/test_batch.bin"] = _cifar_records(*splits["test_records"])
        members["cifar-10-batches-bin/batches.meta.txt"] = "\n".join(
            f"class{i}" for i in range(10)).encode()
        _tar(folder / "cifar-10-binary.tar.gz", members)
    else:
        members["cifar-100-binary/train.bin"] = _cifar_records(*splits["train_records"])
        members["cifar-100-binary/test.bin"] = _cifar_records(*splits["test_records"])
        members["cifar-100-binary/coarse_label_names.txt"] = "\n".join(
            f"coarse{i}" for i in range(20)).encode()
        members["cifar-100-binary/fine_label_names.txt"] = "\n".join(
            f"fine{i}" for i in range(100)).encode()
        _tar(folder / "cifar-100-binary.tar.gz", members)
    return splits


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A plain HTTP server on 127.0.0.1 serving a folder; yields (folder, base URL)."""
    folder = tmp_path_factory.mktemp("served")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(folder), **k)

        def log_message(self, *a):  # keep the test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def _point_builders_at(monkeypatch, base: str) -> None:
    """The builders' own URLs and example counts, redirected to the local files (their code runs
    unchanged; MNIST's builder reads a fixed count of images from each file)."""
    from tensorflow_datasets.image_classification import cifar, mnist

    monkeypatch.setattr(mnist.MNIST, "URL", base)
    monkeypatch.setattr(mnist, "_TRAIN_EXAMPLES", TRAIN)
    monkeypatch.setattr(mnist, "_TEST_EXAMPLES", TEST)
    for cls in (cifar.Cifar10, cifar.Cifar100):
        original = cls._cifar_info.fget
        monkeypatch.setattr(cls, "_cifar_info", property(
            lambda self, original=original: original(self)._replace(
                url=base + original(self).url.rsplit("/", 1)[1])))


@pytest.mark.parametrize("name,classes", [("mnist", 10), ("cifar10", 10), ("cifar100", 100)])
def test_real_builder_prepares_served_files_and_lbtf_trains_offline(name, classes, server,
                                                                    tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from lbtf import data

    folder, base = server
    rng = np.random.default_rng(classes)
    expected = write_mnist(folder, rng) if name == "mnist" else write_cifar(folder, rng, classes)
    _point_builders_at(monkeypatch, base)
    data_dir = tmp_path / "tfds"
    tfds.builder(name, data_dir=str(data_dir)).download_and_prepare(
        download_dir=str(tmp_path / "downloads"))

    ds = data.load_dataset(name, data_dir=str(data_dir), download=False)
    assert ds.num_classes == classes and ds.num_train == TRAIN and len(ds.y_test) == TEST
    # The same images and labels as written, whatever order the builder stored them in.
    for split, (x, y) in (("train", (ds.x_train, ds.y_train)), ("test", (ds.x_test, ds.y_test))):
        want_x, want_y = expected[split]
        order, want = np.lexsort(x.reshape(len(x), -1).T), np.lexsort(
            want_x.reshape(len(want_x), -1).T)
        np.testing.assert_allclose(x[order], want_x[want] / 255.0, atol=1e-6)
        np.testing.assert_array_equal(y[order], want_y[want])

    network = "F1" if name == "mnist" else "C1"
    run_dir, log = run_experiment(
        "--experiment=train", f"--dataset={name}", f"--data_dir={data_dir}",
        "--notfds_download", f"--network={network}", "--batch_size=8", "--trials=1",
        "--max_epochs=2", "--nosharpness", f"--output_dir={tmp_path / 'out'}", "--nojit_compile")
    assert (run_dir / "results.json").is_file(), log


def test_a_missing_module_is_named_as_such(tmp_path):
    """tensorflow-datasets 4.9.10 imports importlib_resources when a builder is made; an install
    lacking it (as etils 1.15 no longer brings it) is told so, not that the network failed. The
    module is hidden in a fresh process (sys.modules[name] = None makes every import of it fail)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['importlib_resources'] = None\n"
            "from lbtf import data\n"
            "from lbtf.errors import UsageError\n"
            "try:\n"
            f"    data.load_dataset('mnist', data_dir={str(tmp_path)!r}, download=True)\n"
            "except UsageError as e:\n"
            "    print('USAGE:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[1])
    said = [line for line in out.stdout.splitlines() if line.startswith("USAGE:")]
    assert len(said) == 1, out
    msg = said[0]
    assert "importlib_resources" in msg and "pip install importlib_resources" in msg, msg
    assert "fetched" not in msg
