"""The user's own data: `load_data` / `inspect_data` on npz, npy, csv, image folders, Python
datasets and the built-in sets; every bad input gets a typed error naming the file and numbers."""

import json
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgetrain.data import DataReport, LabeledData, inspect_data, load_data
from edgetrain.data._csv import parse_csv
from edgetrain.errors import DatasetCorruptError, DatasetMissingError, InvalidArgumentError

Image = pytest.importorskip("PIL.Image")


def make_classes(n: int = 40, shape=(3, 8), k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = np.arange(n) % k
    return x, y


def write_pngs(root, per_class: dict[str, list[np.ndarray]]) -> None:
    for name, images in per_class.items():
        (root / name).mkdir(parents=True)
        for i, a in enumerate(images):
            Image.fromarray(a).save(root / name / f"{i:03d}.png")


# --- round trips ---------------------------------------------------------------------------------


def test_npz_round_trips_and_the_split_is_a_seeded_stratified_partition(tmp_path):
    # Prepare
    x, y = make_classes(n=40, k=4)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    src = str(tmp_path / "d.npz")

    # Execute
    whole = load_data(src, input_shape=(3, 8), val_split=0)
    train = load_data(src, input_shape=(3, 8))
    val = load_data(src, input_shape=(3, 8), split="val")
    test = load_data(src, input_shape=(3, 8), split="test")
    again = load_data(src, input_shape=(3, 8), split="val")
    other = load_data(src, input_shape=(3, 8), split="val", seed=1)

    # Assert
    assert torch.equal(whole.x, torch.from_numpy(x)) and whole.y.tolist() == y.tolist()
    assert isinstance(whole, LabeledData) and whole.y.dtype == torch.int64
    assert (whole.classes, whole.num_classes, whole.task, whole.spec) == (
        (0, 1, 2, 3),
        4,
        "classification",
        src,
    )
    assert (len(train), len(val)) == (36, 4)  # 10 per class: 1 held out of each
    assert val.class_counts() == {0: 1, 1: 1, 2: 1, 3: 1}
    joined = torch.cat([train.x, val.x])
    assert sorted(map(tuple, joined.reshape(40, -1).tolist())) == sorted(
        map(tuple, torch.from_numpy(x).reshape(40, -1).tolist())
    )
    assert torch.equal(val.x, test.x) and torch.equal(val.x, again.x)
    assert not torch.equal(val.x, other.x)


def test_npz_limit_keeps_a_class_balanced_subset_and_custom_keys(tmp_path):
    # Prepare
    x, y = make_classes(n=40, k=4)
    np.savez(tmp_path / "d.npz", inputs=x, labels=y)

    # Execute
    d = load_data(
        tmp_path / "d.npz", input_shape=(24,), x_key="inputs", y_key="labels", limit=8, val_split=0
    )

    # Assert
    assert d.x.shape == (8, 24) and d.class_counts() == {0: 2, 1: 2, 2: 2, 3: 2}


def test_npy_pair_is_memory_mapped_and_round_trips_flattened(tmp_path):
    # Prepare
    x, y = make_classes(n=30, shape=(1, 49, 10), k=3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    src = f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}"

    # Execute
    d = load_data(src, input_shape=(490,), val_split=0)
    r = inspect_data(src, input_shape=(1, 49, 10))

    # Assert
    assert torch.equal(d.x, torch.from_numpy(x.reshape(30, 490))) and d.y.tolist() == y.tolist()
    assert (r.kind, r.n_samples, r.sample_shape, r.fits, r.classes) == (
        "npy",
        30,
        (1, 49, 10),
        True,
        (0, 1, 2),
    )


def test_reconstruction_without_targets_uses_the_input(tmp_path):
    # Prepare
    x = np.random.default_rng(1).normal(size=(20, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)

    # Execute
    d = load_data(tmp_path / "x.npy", input_shape=(32,), task="reconstruction", val_split=0)

    # Assert
    assert d.y is d.x and torch.equal(d.x, torch.from_numpy(x))
    assert (d.task, d.classes, d.class_counts()) == ("reconstruction", (), {})


def test_regression_targets_are_float(tmp_path):
    # Prepare
    x = np.arange(60, dtype=np.float64).reshape(20, 3)
    t = (x.sum(1, keepdims=True) / 7).astype(np.float64)
    np.savez(tmp_path / "r.npz", x=x, y=t)

    # Execute
    d = load_data(tmp_path / "r.npz", input_shape=(3,), task="regression", val_split=0)

    # Assert
    assert d.y.dtype == torch.float32 and d.y.shape == (20, 1)
    assert torch.allclose(d.y, torch.from_numpy(t).float())


def test_integer_token_ids_keep_their_values(tmp_path):
    # Prepare
    ids = np.random.default_rng(2).integers(0, 1000, size=(12, 16))
    np.savez(tmp_path / "tok.npz", x=ids, y=np.arange(12) % 2)

    # Execute
    d = load_data(tmp_path / "tok.npz", input_shape=(16,), input_dtype="int64", val_split=0)

    # Assert
    assert d.x.dtype == torch.int64 and d.x.tolist() == ids.tolist()


def test_csv_with_header_and_named_label_round_trips(tmp_path):
    # Prepare
    (tmp_path / "t.csv").write_text("f0,label,f1,f2,f3\n0.5,2,1,2,3\n-1.25,0,4,5,6\n\n7,1,8,9,10\n")

    # Execute
    d = load_data(tmp_path / "t.csv", input_shape=(2, 2), val_split=0)
    by_index = load_data(tmp_path / "t.csv", input_shape=(4,), label=1, val_split=0)

    # Assert
    assert d.x.tolist() == [[[0.5, 1], [2, 3]], [[-1.25, 4], [5, 6]], [[7, 8], [9, 10]]]
    assert d.y.tolist() == [2, 0, 1] and by_index.y.tolist() == [2, 0, 1]


def test_csv_without_header_takes_the_last_column_as_label(tmp_path):
    # Prepare
    (tmp_path / "n.csv").write_text("1,2,3,0\n4,5,6,1\n")

    # Execute
    d = load_data(tmp_path / "n.csv", input_shape=(3,), val_split=0)

    # Assert
    assert d.x.tolist() == [[1, 2, 3], [4, 5, 6]] and d.y.tolist() == [0, 1]


def test_png_folder_round_trips_in_the_models_channels(tmp_path):
    # Prepare
    rng = np.random.default_rng(3)
    grey = {c: [rng.integers(0, 256, (6, 5), dtype=np.uint8) for _ in range(3)] for c in ("b", "a")}
    write_pngs(tmp_path / "imgs", grey)

    # Execute
    d = load_data(tmp_path / "imgs", input_shape=(1, 6, 5), val_split=0)
    rgb = load_data(tmp_path / "imgs", input_shape=(3, 6, 5), val_split=0)
    small = load_data(tmp_path / "imgs", input_shape=(1, 3, 3), resize=(3, 3), val_split=0)

    # Assert
    expected = np.stack([a for c in ("a", "b") for a in grey[c]])[:, None] / 255.0
    assert torch.allclose(d.x, torch.from_numpy(expected).float())
    assert d.y.tolist() == [0, 0, 0, 1, 1, 1] and d.class_names == ("a", "b")
    assert rgb.x.shape == (6, 3, 6, 5) and torch.equal(rgb.x[:, 0], rgb.x[:, 2])
    assert small.x.shape == (6, 1, 3, 3)


def test_python_spec_dataset_and_batches(tmp_path):
    # Prepare
    (tmp_path / "ds.py").write_text(
        "import torch\n"
        "class Pairs(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 10\n"
        "    def __getitem__(self, i): return torch.full((4,), float(i)), i % 2\n"
        "def make_dataset(): return Pairs()\n"
        "def batches():\n"
        "    for b in range(3):\n"
        "        yield torch.ones(5, 2, 2) * b, torch.tensor([0, 1, 2, 0, 1])\n"
    )

    # Execute
    d = load_data(f"{tmp_path / 'ds.py'}:make_dataset", input_shape=(4,), val_split=0)
    b = load_data(f"{tmp_path / 'ds.py'}:batches", input_shape=(1, 2, 2), val_split=0)

    # Assert
    assert d.x[:, 0].tolist() == list(range(10)) and d.y.tolist() == [0, 1] * 5
    assert b.x.shape == (15, 1, 2, 2) and b.x[5:10].unique().tolist() == [1.0]


def test_inspect_reports_counts_and_serialises(tmp_path):
    # Prepare
    x, y = make_classes(n=12, shape=(6,), k=3)
    np.savez(tmp_path / "d.npz", x=x, y=y)

    # Execute
    ok = inspect_data(tmp_path / "d.npz", input_shape=(6,), input_dtype="float32")
    bad = inspect_data(tmp_path / "d.npz", input_shape=(7,), num_classes=2)
    payload = json.loads(json.dumps(bad.to_dict()))

    # Assert
    assert isinstance(ok, DataReport) and ok.fits and ok.problems == ()
    assert ok.class_counts == ((0, 4), (1, 4), (2, 4)) and ok.target_shape == ()
    assert not bad.fits and len(bad.problems) == 2
    assert "(6,)" in bad.problems[0] and "(7,)" in bad.problems[0]
    assert payload["class_counts"] == {"0": 4, "1": 4, "2": 4} and payload["fits"] is False


# --- built-in sets -------------------------------------------------------------------------------


def test_builtin_images_are_refused_at_another_size_without_resize():
    # Execute / Assert
    with pytest.raises(InvalidArgumentError, match=r"\(1, 28, 28\).*\(1, 49, 10\).*--resize 49,10"):
        load_data("digits:0-4", input_shape=(1, 49, 10), limit=5)


def test_builtin_images_resize_when_asked_and_flatten_exactly():
    # Execute
    resized = load_data("digits:0-4", input_shape=(1, 49, 10), resize=(49, 10), limit=5)
    flat = load_data("digits:0-4", input_shape=(784,), limit=5, split="val")

    # Assert
    assert resized.x.shape == (5, 1, 49, 10) and resized.spec == "digits:0-4"
    assert flat.x.shape == (5, 784) and flat.split == "val"


# --- bad inputs ----------------------------------------------------------------------------------


def test_wrong_sample_shape_names_both_shapes_and_the_file(tmp_path):
    # Prepare
    x, y = make_classes(n=10, shape=(10, 49))
    np.savez(tmp_path / "kws.npz", x=x, y=y)

    # Execute / Assert
    with pytest.raises(InvalidArgumentError, match=r"kws\.npz.*\(10, 49\).*\(1, 49, 10\).*reorder"):
        load_data(tmp_path / "kws.npz", input_shape=(1, 49, 10))
    with pytest.raises(InvalidArgumentError, match=r"\(490 values each\).*\(32,\) \(32 values\)"):
        load_data(tmp_path / "kws.npz", input_shape=(32,))


def test_float_inputs_for_a_token_id_model_are_refused(tmp_path):
    # Prepare
    x, y = make_classes(n=10, shape=(8,))
    np.savez(tmp_path / "f.npz", x=x, y=y)

    # Execute / Assert
    with pytest.raises(InvalidArgumentError, match=r"f\.npz' are float32 .* takes int64"):
        load_data(tmp_path / "f.npz", input_shape=(8,), input_dtype="int64")


@pytest.mark.parametrize(
    ("labels", "kwargs", "error", "pattern"),
    [
        ([0, 1, -1, 2], {}, DatasetCorruptError, r"sample 2 .* is -1: .*>= 0"),
        (
            [0, 1, 7, 2],
            {"num_classes": 5},
            InvalidArgumentError,
            r"sample 2 .* is 7, .*5 classes \(0-4\)",
        ),
        ([0, 1.5, 1, 2], {}, InvalidArgumentError, r"sample 1 .* is 1\.5.*task='regression'"),
    ],
)
def test_bad_labels_name_the_sample_and_value(tmp_path, labels, kwargs, error, pattern):
    # Prepare
    np.savez(tmp_path / "l.npz", x=np.zeros((4, 3), np.float32), y=np.array(labels))

    # Execute / Assert
    with pytest.raises(error, match=pattern):
        load_data(tmp_path / "l.npz", input_shape=(3,), **kwargs)


def test_bad_csv_label_row_is_named(tmp_path):
    # Prepare
    (tmp_path / "t.csv").write_text("a,b,label\n1,2,0\n3,4,-2\n")

    # Execute / Assert
    with pytest.raises(
        DatasetCorruptError, match=r"sample 1 \(row 3\) of data file .*t\.csv' is -2"
    ):
        load_data(tmp_path / "t.csv", input_shape=(2,))


@pytest.mark.parametrize(
    ("name", "content"),
    [("e.csv", b""), ("e.npz", b""), ("e.npy", b""), ("h.csv", b"a,b,label\n")],
)
def test_empty_files_are_refused(tmp_path, name, content):
    # Prepare
    (tmp_path / name).write_bytes(content)

    # Execute / Assert
    with pytest.raises(
        DatasetCorruptError, match=rf"{re.escape(name)}.*(empty \(0 bytes\)|no samples)"
    ):
        load_data(tmp_path / name, input_shape=(2,), task="reconstruction")


def test_ragged_csv_row_names_the_row_and_counts(tmp_path):
    # Prepare
    rows = ["a,b,c,label"] + ["1,2,3,0"] * 15 + ["1,2,0", "1,2,3,1"]
    (tmp_path / "x.csv").write_text("\n".join(rows) + "\n")

    # Execute / Assert
    with pytest.raises(
        DatasetCorruptError, match=r"'.*x\.csv' row 17 has 3 values, the header has 4: every row"
    ):
        load_data(tmp_path / "x.csv", input_shape=(3,))


def test_non_numeric_csv_cell_names_row_and_column(tmp_path):
    # Prepare
    (tmp_path / "x.csv").write_text("a,b,label\n1,2,0\n3,oops,1\n")

    # Execute / Assert
    with pytest.raises(
        DatasetCorruptError, match=r"row 3 column 2 \('b'\) holds 'oops', not a number"
    ):
        load_data(tmp_path / "x.csv", input_shape=(2,))


def test_image_that_will_not_decode_is_named(tmp_path):
    # Prepare
    write_pngs(
        tmp_path / "imgs", {"a": [np.zeros((4, 4), np.uint8)], "b": [np.ones((4, 4), np.uint8)]}
    )
    (tmp_path / "imgs" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")

    # Execute / Assert
    with pytest.raises(DatasetCorruptError, match=r"image '.*broken\.png' will not decode"):
        load_data(tmp_path / "imgs", input_shape=(1, 4, 4))


def test_images_of_another_size_need_an_explicit_resize(tmp_path):
    # Prepare
    write_pngs(
        tmp_path / "imgs", {"a": [np.zeros((8, 8), np.uint8)], "b": [np.ones((8, 8), np.uint8)]}
    )

    # Execute / Assert
    with pytest.raises(InvalidArgumentError, match=r"\(1, 8, 8\).*\(1, 4, 4\).*--resize 4,4"):
        load_data(tmp_path / "imgs", input_shape=(1, 4, 4))


def test_missing_npz_key_lists_the_arrays(tmp_path):
    # Prepare
    np.savez(tmp_path / "d.npz", inputs=np.zeros((3, 2)), y=np.zeros(3))

    # Execute / Assert
    with pytest.raises(DatasetCorruptError, match=r"no array 'x' \(it holds: inputs, y\).*--x-key"):
        load_data(tmp_path / "d.npz", input_shape=(2,))


def test_nan_input_names_the_sample(tmp_path):
    # Prepare
    x = np.zeros((5, 3), np.float32)
    x[3, 1] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(5, int))

    # Execute / Assert
    with pytest.raises(
        DatasetCorruptError, match=r"sample 3 of .* holds nan at input value 1 of 3"
    ):
        load_data(tmp_path / "d.npz", input_shape=(3,), val_split=0)


def test_missing_files_and_broken_python_specs_are_typed(tmp_path):
    # Prepare
    (tmp_path / "bad.py").write_text("import no_such_module_here\n")
    (tmp_path / "ok.py").write_text("def other():\n    return []\n")

    # Execute / Assert
    with pytest.raises(DatasetMissingError, match=r"nope\.npz' does not exist"):
        load_data(tmp_path / "nope.npz", input_shape=(2,))
    with pytest.raises(
        DatasetCorruptError, match=r"importing .*bad\.py failed: ModuleNotFoundError"
    ):
        load_data(f"{tmp_path / 'bad.py'}:make_dataset", input_shape=(2,))
    with pytest.raises(DatasetCorruptError, match=r"no function 'make_dataset'; .*: other"):
        load_data(f"{tmp_path / 'ok.py'}:make_dataset", input_shape=(2,))
    with pytest.raises(InvalidArgumentError, match=r"no function; write it as"):
        load_data(str(tmp_path / "ok.py"), input_shape=(2,))


# --- the CSV parser, by property -----------------------------------------------------------------

_values = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 6).flatmap(
        lambda w: st.lists(
            st.tuples(st.lists(_values, min_size=w, max_size=w), st.integers(0, 9)),
            min_size=1,
            max_size=8,
        )
    ),
    header=st.booleans(),
)
def test_well_formed_tables_round_trip_exactly(rows, header):
    # Prepare
    width = len(rows[0][0])
    lines = [",".join(f"c{j}" for j in range(width)) + ",label"] if header else []
    lines += [",".join(repr(float(v)) for v in xs) + f",{y}" for xs, y in rows]

    # Execute
    table = parse_csv("\n".join(lines), where="data file 't.csv'")

    # Assert
    assert table.x.astype(np.float32).tolist() == [list(np.float32(xs)) for xs, _ in rows]
    assert table.y.tolist() == [y for _, y in rows]
    assert (table.columns is not None) == header


@settings(max_examples=150, deadline=None)
@given(
    text=st.lists(
        st.lists(
            st.one_of(
                st.sampled_from(["1", "2.5", "-3", "", "x", "nan", '"', "1e400"]),
                st.text(max_size=4),
            ),
            max_size=5,
        ),
        max_size=6,
    ).map(lambda rows: "\n".join(",".join(r) for r in rows)),
    label=st.one_of(st.none(), st.integers(-6, 6), st.sampled_from(["label", "x", "0"])),
)
def test_garbage_tables_raise_only_typed_errors(text, label):
    # Execute / Assert: a table parses, or raises a typed error with the file's name
    try:
        table = parse_csv(text, where="data file 'g.csv'", label=label)
    except (DatasetCorruptError, InvalidArgumentError) as e:
        assert "'g.csv'" in str(e)
    else:
        assert table.x.ndim == 2 and len(table.rows) == len(table.x)


def test_rgb_images_for_a_model_on_other_channels_are_refused(tmp_path):
    # Prepare
    write_pngs(tmp_path / "imgs", {"a": [np.zeros((4, 4, 3), np.uint8)]})

    # Execute / Assert
    with pytest.raises(
        InvalidArgumentError, match=r"'.*imgs' have 3 channels but the model takes 2"
    ):
        load_data(tmp_path / "imgs", input_shape=(2, 4, 4))


def test_python_spec_results_that_are_not_pairs_are_typed(tmp_path):
    # Prepare
    (tmp_path / "p.py").write_text(
        "import torch\n"
        "def number(): return 3\n"
        "def bare():\n"
        "    yield torch.zeros(4, 2)\n"
        "def boom(): raise RuntimeError('no data today')\n"
    )
    spec = str(tmp_path / "p.py")

    # Execute / Assert
    with pytest.raises(DatasetCorruptError, match=r"returned an object of type int"):
        load_data(f"{spec}:number", input_shape=(2,))
    with pytest.raises(DatasetCorruptError, match=r"batch 0 .* not an \(x, y\) pair"):
        load_data(f"{spec}:bare", input_shape=(2,))
    with pytest.raises(DatasetCorruptError, match=r"raised RuntimeError: no data today"):
        load_data(f"{spec}:boom", input_shape=(2,))
