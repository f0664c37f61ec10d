"""Real datasets: Fashion-MNIST (Debian package, hash-pinned) and scikit-learn digits."""

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from edgetrain.data import (
    NORMALIZATION,
    LabeledData,
    dataset_names,
    load_dataset,
    resize_for,
    stream,
)
from edgetrain.errors import DatasetCorruptError, DatasetMissingError, InvalidArgumentError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def fashion_train() -> LabeledData:
    return load_dataset("fashion-mnist", split="train")


@pytest.fixture(scope="module")
def fashion_test() -> LabeledData:
    return load_dataset("fashion-mnist", split="test")


@pytest.fixture
def test_copy(tmp_path, monkeypatch) -> Path:
    """A private copy of the Fashion-MNIST test split, to damage."""
    monkeypatch.delenv("EDGETRAIN_FASHION_MNIST_DIR", raising=False)
    for name in TEST_FILES:
        shutil.copyfile(FASHION_DIR / name, tmp_path / name)
    return tmp_path


def rewrite_gz(path: Path, edit) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    edit(raw)
    path.write_bytes(gzip.compress(bytes(raw), compresslevel=1, mtime=0))


# --- Fashion-MNIST -------------------------------------------------------------------------------


def test_fashion_train_shapes_counts_and_histogram(fashion_train):
    d = fashion_train

    assert d.x.shape == (60000, 1, 28, 28) and d.x.dtype == torch.float32
    assert d.y.shape == (60000,) and d.y.dtype == torch.int64
    assert d.class_counts() == {c: 6000 for c in range(10)}
    assert torch.bincount(d.y).tolist() == [6000] * 10
    assert (d.name, d.split, d.classes, d.spec) == (
        "fashion-mnist",
        "train",
        tuple(range(10)),
        "fashion-mnist",
    )
    # Standardised with the documented training-set constants: mean 0, std 1.
    assert abs(float(d.x.mean())) < 1e-3 and abs(float(d.x.std()) - 1) < 1e-3
    mean, std = NORMALIZATION["fashion-mnist"]
    assert float(d.x.min()) == pytest.approx(-mean / std, abs=1e-5)
    assert float(d.x.max()) == pytest.approx((1 - mean) / std, abs=1e-5)


def test_fashion_test_split_counts(fashion_test):
    d = fashion_test

    assert d.x.shape == (10000, 1, 28, 28) and len(d) == 10000
    assert d.class_counts() == {c: 1000 for c in range(10)}


def test_class_split_keeps_only_those_classes_with_original_labels(fashion_test):
    full = fashion_test

    part = load_dataset("fashion-mnist:3,7,9", split="test")
    low = load_dataset("fashion-mnist:0-4", split="test")
    high = load_dataset("fashion-mnist:5-9", split="test")

    mask = (full.y == 3) | (full.y == 7) | (full.y == 9)
    assert part.classes == (3, 7, 9) and part.spec == "fashion-mnist:3,7,9"
    assert set(part.y.tolist()) == {3, 7, 9} and len(part) == 3000
    assert torch.equal(part.y, full.y[mask]) and torch.equal(part.x, full.x[mask])
    assert set(low.y.tolist()) == {0, 1, 2, 3, 4} and set(high.y.tolist()) == {5, 6, 7, 8, 9}
    assert len(low) + len(high) == len(full)


def test_limit_is_class_balanced_deterministic_and_nested():
    a = load_dataset("fashion-mnist:0-4", split="test", limit=100)
    b = load_dataset("fashion-mnist:0-4", split="test", limit=100)
    small = load_dataset("fashion-mnist:0-4", split="test", limit=50)
    other = load_dataset("fashion-mnist:0-4", split="test", limit=100, seed=1)
    full = load_dataset("fashion-mnist:0-4", split="test")

    assert len(a) == 100 and a.class_counts() == {c: 20 for c in range(5)}
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    rows = {tuple(r) for r in a.x.flatten(1)[:, 300:340].tolist()}
    assert all(tuple(r) in rows for r in small.x.flatten(1)[:, 300:340].tolist())
    assert not torch.equal(a.x, other.x)
    assert torch.equal(a.x, full.subset(limit=100).x)  # same rule through subset()
    with pytest.raises(InvalidArgumentError, match="exceeds the 5000 samples"):
        load_dataset("fashion-mnist:0-4", split="test", limit=5001)


def test_loaded_tensors_are_fresh_copies():
    a = load_dataset("fashion-mnist:0", split="test")
    a.x.zero_()

    b = load_dataset("fashion-mnist:0", split="test")

    assert float(b.x.abs().sum()) > 0


# --- streaming view -----------------------------------------------------------------------------


def test_stream_yields_single_samples_in_a_seeded_order():
    data = load_dataset("fashion-mnist:5-9", split="test", limit=40)

    s1 = list(stream("fashion-mnist:5-9", split="test", limit=40, seed=7))
    s2 = list(stream("fashion-mnist:5-9", split="test", limit=40, seed=7))
    s3 = list(stream("fashion-mnist:5-9", split="test", limit=40, seed=8))

    assert len(s1) == 40
    assert all(
        x.shape == (1, 1, 28, 28) and y.shape == (1,) and y.dtype == torch.int64 for x, y in s1
    )
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(s1, s2))
    assert [int(y) for _, y in s1] != [int(y) for _, y in s3]
    # One pass visits every sample exactly once.
    seen = torch.cat([x for x, _ in s1]).flatten(1)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, data.x.flatten(1).tolist()))


def test_stream_resumes_from_a_cursor():
    whole = list(stream("digits:0-4", split="test", seed=3))
    first = stream("digits:0-4", split="test", seed=3)
    head = [next(first) for _ in range(17)]

    state = first.state_dict()
    resumed = stream(**state)
    tail = list(resumed)
    by_start = list(stream("digits:0-4", split="test", seed=3, start=17))

    assert state["start"] == 17 and first.cursor == 17 and first.remaining == len(whole) - 17
    assert len(head) + len(tail) == len(whole) == first.total
    for (xa, ya), (xb, yb), (xc, yc) in zip(whole[17:], tail, by_start, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa, xc) and torch.equal(ya, yc)
    assert list(stream("digits:0-4", split="test", seed=3, start=len(whole))) == []
    with pytest.raises(InvalidArgumentError, match="past the end"):
        stream("digits:0-4", split="test", seed=3, start=len(whole) + 1)


# --- digits -------------------------------------------------------------------------------------


def test_digits_shapes_and_split():
    from sklearn.datasets import load_digits

    expected = torch.bincount(torch.from_numpy(load_digits().target))

    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    part = load_dataset("digits:0-4", split="train")

    assert train.x.shape == (1442, 1, 28, 28) and test.x.shape == (355, 1, 28, 28)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert torch.equal(torch.bincount(train.y) + torch.bincount(test.y), expected)
    assert all(34 <= n <= 37 for n in test.class_counts().values())
    assert abs(float(train.x.mean())) < 1e-3 and abs(float(train.x.std()) - 1) < 1e-3
    assert set(part.y.tolist()) == {0, 1, 2, 3, 4} and part.classes == (0, 1, 2, 3, 4)


# --- integrity ----------------------------------------------------------------------------------


def test_flipped_byte_is_a_corrupt_error_naming_the_file(test_copy):
    path = test_copy / "t10k-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(DatasetCorruptError) as err:
        load_dataset("fashion-mnist", split="test", root=test_copy)

    msg = str(err.value)
    assert str(path) in msg
    assert "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa" in msg  # expected
    assert "apt-get install --reinstall dataset-fashion-mnist" in msg


def test_truncated_file_is_a_corrupt_error_naming_the_file(test_copy):
    path = test_copy / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])

    with pytest.raises(DatasetCorruptError, match="t10k-labels-idx1-ubyte.gz.*not a valid gzip"):
        load_dataset("fashion-mnist", split="test", root=test_copy)


def test_bad_magic_and_bad_label_are_diagnosed(test_copy):
    labels = test_copy / "t10k-labels-idx1-ubyte.gz"
    rewrite_gz(labels, lambda raw: raw.__setitem__(8 + 5, 11))  # label #5 := 11

    with pytest.raises(DatasetCorruptError, match=r"label 11 at index 5 is outside 0\.\.9"):
        load_dataset("fashion-mnist", split="test", root=test_copy)

    shutil.copyfile(FASHION_DIR / labels.name, labels)
    images = test_copy / "t10k-images-idx3-ubyte.gz"
    rewrite_gz(images, lambda raw: raw.__setitem__(3, 0x01))  # magic 2051 -> 2049
    with pytest.raises(DatasetCorruptError, match="t10k-images-idx3-ubyte.gz.*magic number 2049"):
        load_dataset("fashion-mnist", split="test", root=test_copy)


def test_recompressed_identical_content_is_accepted(test_copy, fashion_test):
    labels = test_copy / "t10k-labels-idx1-ubyte.gz"
    rewrite_gz(labels, lambda raw: None)  # same IDX content, different .gz bytes

    d = load_dataset("fashion-mnist", split="test", root=test_copy)

    assert torch.equal(d.y, fashion_test.y)


def test_missing_directory_names_the_package_and_env_var(tmp_path, monkeypatch):
    gone = tmp_path / "nowhere"
    monkeypatch.setenv("EDGETRAIN_FASHION_MNIST_DIR", str(gone))

    with pytest.raises(DatasetMissingError) as err:
        load_dataset("fashion-mnist", split="train")

    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "EDGETRAIN_FASHION_MNIST_DIR" in msg
    assert str(gone / "train-images-idx3-ubyte.gz") in msg


def test_missing_file_is_named_exactly(test_copy):
    (test_copy / "t10k-labels-idx1-ubyte.gz").unlink()

    with pytest.raises(DatasetMissingError) as err:
        load_dataset("fashion-mnist", split="test", root=test_copy)

    assert str(test_copy / "t10k-labels-idx1-ubyte.gz") in str(err.value)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)


def test_env_var_selects_the_directory(test_copy, monkeypatch, fashion_test):
    monkeypatch.setenv("EDGETRAIN_FASHION_MNIST_DIR", str(test_copy))

    d = load_dataset("fashion-mnist:1", split="test")

    assert torch.equal(d.x, fashion_test.x[fashion_test.y == 1])


# --- argument checking --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "mnist",
        "fashion-mnist:",
        "fashion-mnist:4-2",
        "fashion-mnist:10",
        "digits:a",
        "fashion-mnist:1;2",
        42,
    ],
)
def test_bad_spec_lists_the_valid_forms(spec):
    with pytest.raises(InvalidArgumentError) as err:
        load_dataset(spec)

    assert "fashion-mnist:0-4" in str(err.value) and "digits" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "validation"}, "split must be one of train, test"),
        ({"limit": 0}, "limit must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"root": "/tmp"}, "root= applies only to fashion-mnist"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        load_dataset("digits", **kwargs)


def test_dataset_names():
    assert dataset_names() == ("fashion-mnist", "digits")
    assert set(NORMALIZATION) == set(dataset_names())


# --- batches and resizing -----------------------------------------------------------------------


def test_batches_cover_the_data_once_in_a_seeded_order():
    d = load_dataset("digits:0-2", split="test")

    b1 = list(d.batches(16, shuffle=True, seed=1))
    b2 = list(d.batches(16, shuffle=True, seed=1))
    plain = list(d.batches(16, shuffle=False, drop_last=True))

    assert [len(y) for _, y in b1] == [16] * (len(d) // 16) + [len(d) % 16]
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(b1, b2))
    assert sorted(torch.cat([y for _, y in b1]).tolist()) == sorted(d.y.tolist())
    assert len(plain) == len(d) // 16 and torch.equal(plain[0][1], d.y[:16])


def test_resize_for_gives_the_requested_shape():
    x = load_dataset("digits:7", split="test").x[:4]

    rgb = resize_for(x, (3, 128, 128))
    from_example = resize_for(x, torch.Size([1, 3, 96, 96]))
    single = resize_for(x[0], (1, 32, 32))

    assert rgb.shape == (4, 3, 128, 128) and rgb.dtype == torch.float32
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 0], rgb[:, 2])
    assert from_example.shape == (4, 3, 96, 96)
    assert single.shape == (1, 32, 32)
    assert resize_for(x, (1, 28, 28)) is x
    with pytest.raises(InvalidArgumentError, match="cannot adapt 3 channels to 2"):
        resize_for(rgb, (2, 64, 64))
