"""The data-quality baseline on real MNIST: image features, a Great Expectations suite built from the
60k training images, clean batches that pass, deliberately broken batches that fail with the right
expectation named, save/load and Data Docs."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from mnistops.data.idx import read_idx
from mnistops.errors import MnistopsError
from mnistops.quality.features import FEATURE_COLUMNS, image_features

SUITE_NAME = "mnist-baseline"


@pytest.fixture(scope="module")
def mnist(data_cache):
    d = data_cache / "mnist"
    return {
        "train_x": read_idx(d / "train-images-idx3-ubyte"), "train_y": read_idx(d / "train-labels-idx1-ubyte"),
        "test_x": read_idx(d / "t10k-images-idx3-ubyte"), "test_y": read_idx(d / "t10k-labels-idx1-ubyte"),
        "digest": json.loads((d / "manifest.json").read_text())["digest"],
    }


@pytest.fixture(scope="module")
def baseline(mnist):
    from mnistops.quality import build_suite

    t0 = time.perf_counter()
    suite, stats = build_suite(mnist["train_x"], mnist["train_y"], name=SUITE_NAME, dataset_digest=mnist["digest"])
    print(f"\nbuild_suite on {len(mnist['train_x'])} images: {time.perf_counter() - t0:.2f}s, "
          f"{len(suite.expectations)} expectations")
    return suite, stats


@pytest.fixture(scope="module")
def clean(mnist):
    """A random 1,000-image slice of the official test set."""
    idx = np.random.default_rng(20240611).choice(len(mnist["test_x"]), 1000, replace=False)
    return mnist["test_x"][idx], mnist["test_y"][idx]


def failed(report):
    """{'expectation(column)': check} of a report's failures."""
    return {f"{f['expectation']}({f['column'] or 'table'})": f["check"] for f in report.failures}


# --------------------------------------------------------------------------------------------------
# features


def test_features_of_a_known_image():
    img = np.zeros((1, 28, 28), np.uint8)
    img[0, 10:14, 5:8] = 255  # a 4x3 block of full ink
    img[0, 20, 20] = 100  # grey, below the ink threshold
    f = image_features(img).iloc[0]
    assert f["ink_coverage"] == pytest.approx(12 / 784)
    assert f["mean_intensity"] == pytest.approx((12 * 255 + 100) / (784 * 255))
    assert (f["bbox_top"], f["bbox_left"], f["bbox_height"], f["bbox_width"]) == (10, 5, 4, 3)
    assert f["stroke_width"] == pytest.approx(3.0)  # four horizontal runs of three ink pixels
    mass = 12 * 255 + 100
    assert f["centroid_row"] == pytest.approx((255 * 3 * (10 + 11 + 12 + 13) + 100 * 20) / mass)
    assert f["centroid_col"] == pytest.approx((255 * 4 * (5 + 6 + 7) + 100 * 20) / mass)
    assert (f["max_intensity"], f["min_intensity"], f["height"], f["width"]) == (255, 0, 28, 28)
    assert not f["has_nan"] and f["dtype"] == "uint8" and f["image_ndim"] == 2


def test_features_of_real_data_are_fast_and_plausible(mnist):
    t0 = time.perf_counter()
    f = image_features(mnist["train_x"])
    print(f"\nimage_features on 60k images: {time.perf_counter() - t0:.2f}s")
    assert len(f) == 60000 and set(FEATURE_COLUMNS) <= set(f.columns)
    assert f[list(FEATURE_COLUMNS)].notna().all().all()
    assert 0.10 < f["mean_intensity"].mean() < 0.16  # MNIST's mean pixel is ~0.13
    assert f["bbox_height"].max() == 20  # digits were normalised into a 20x20 box ...
    assert f["centroid_row"].between(13, 15).all()  # ... and centred by centre of mass in 28x28
    assert (f["height"] == 28).all() and (f["dtype"] == "uint8").all()


def test_features_of_broken_inputs_still_give_rows():
    nan = np.full((3, 28, 28), 10.0, np.float32)
    nan[1, 4, 4] = np.nan
    f = image_features(nan)
    assert list(f["has_nan"]) == [False, True, False] and (f["dtype"] == "float32").all()
    assert f["mean_intensity"].notna().all() and f.loc[1, "max_intensity"] == 10.0
    assert list(image_features(np.zeros((2, 32, 32), np.uint8))[["height", "width"]].iloc[0]) == [32, 32]
    flat = image_features(np.zeros((2, 784), np.uint8))
    assert list(flat[["image_ndim", "height", "width"]].iloc[0]) == [1, 1, 784]
    out = image_features(np.array([[[-5.0, 300.0]]]))
    assert (out.loc[0, "min_intensity"], out.loc[0, "max_intensity"]) == (-5.0, 300.0)
    ragged = image_features([np.zeros((28, 28), np.uint8), np.zeros((27, 28), np.uint8)])
    assert list(ragged["height"]) == [28, 27]
    assert len(image_features(np.zeros((0, 28, 28), np.uint8))) == 0


# --------------------------------------------------------------------------------------------------
# the suite


def test_suite_meta_and_reference_stats(baseline, mnist):
    from mnistops.quality import suite_info

    suite, stats = baseline
    info = suite_info(suite)
    assert info["dataset_digest"] == mnist["digest"] and info["suite_version"] == f"{mnist['digest']}-v1"
    assert info["created"].endswith("+00:00")
    json.dumps(info)  # JSON-serialisable as it is
    assert stats["n_images"] == 60000 and stats["classes"]["counts"][1] == 6742
    assert 0.75 < stats["templates"]["agreement"] < 0.87
    types = {e.expectation_type for e in suite.expectations}
    assert {"expect_column_values_to_be_in_set", "expect_column_distinct_values_to_equal_set",
            "expect_column_values_to_be_between", "expect_column_mean_to_be_between"} <= types


def test_official_test_set_passes(baseline, mnist):
    from mnistops.quality import validate_batch

    t0 = time.perf_counter()
    report = validate_batch(baseline[0], mnist["test_x"], mnist["test_y"])
    print(f"\nvalidate_batch on 10k images: {time.perf_counter() - t0:.2f}s")
    assert report.success, report.summary()
    assert report.statistics["unsuccessful_expectations"] == 0
    assert report.statistics["evaluated_expectations"] == len(baseline[0].expectations)
    assert report.summary().startswith("PASSED: 10000 images")


def test_clean_random_slice_passes_with_and_without_labels(baseline, clean):
    from mnistops.quality import validate_batch

    images, labels = clean
    assert validate_batch(baseline[0], images, labels).success
    unlabelled = validate_batch(baseline[0], images)
    assert unlabelled.success, unlabelled.summary()
    columns = {r["expectation_config"]["kwargs"].get("column") for r in unlabelled.raw["results"]}
    assert not any(c and c.startswith("label") for c in columns)
    assert "label expectations (no labels given)" in unlabelled.summary()


def test_contiguous_test_batches_pass(baseline, mnist):
    """Real batches come from few writers: contiguous slices must pass too, not only random ones."""
    from mnistops.quality import validate_batch

    for start in (0, 5000, 9000):
        r = validate_batch(baseline[0], mnist["test_x"][start:start + 1000], mnist["test_y"][start:start + 1000])
        assert r.success, r.summary()


def _shuffled(x, y):
    return x, np.random.default_rng(1).permutation(y)


def _no_sevens(x, y):
    keep = y != 7
    return x[keep], y[keep]


def _nan_pixels(x, y):
    f = x.astype(np.float32)
    f[::10, 14, 14] = np.nan
    return f, y


def _out_of_range(x, y):
    f = x.astype(np.float32)
    f[::4, 14, 14] = 300.0
    f[1::4, 14, 15] = -5.0
    return f, y


BROKEN = {
    # name: (make the batch, failures that must be named: {'expectation(column)': check})
    "shuffled labels": (_shuffled, {"expect_column_mean_to_be_between(label_matches_template)": "label-image consistency"}),
    "class 7 missing": (_no_sevens, {"expect_column_distinct_values_to_equal_set(label)": "every class present",
                                     "expect_column_mean_to_be_between(label_is_7)": "share of class 7"}),
    "32x32 images": (lambda x, y: (np.pad(x, ((0, 0), (2, 2), (2, 2))), y),
                     {"expect_column_values_to_be_in_set(height)": "image height",
                      "expect_column_values_to_be_in_set(width)": "image width"}),
    "27x28 images": (lambda x, y: (x[:, :27, :], y), {"expect_column_values_to_be_in_set(height)": "image height"}),
    "NaN pixels": (_nan_pixels, {"expect_column_values_to_be_in_set(has_nan)": "no NaN pixels"}),
    "out-of-range pixels": (_out_of_range, {"expect_column_values_to_be_between(min_intensity)": "pixel range",
                                            "expect_column_values_to_be_between(max_intensity)": "pixel range"}),
    "inverted images": (lambda x, y: (255 - x, y),
                        {"expect_column_values_to_be_between(mean_intensity)": "per-image mean_intensity",
                         "expect_column_values_to_be_between(ink_coverage)": "per-image ink_coverage"}),
    "labels not digits": (lambda x, y: (x, np.where(np.arange(len(y)) % 50 == 0, 10, y)),
                          {"expect_column_values_to_be_in_set(label)": "label set"}),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_batch_fails_naming_the_expectation(baseline, clean, case):
    from mnistops.quality import validate_batch

    make, must = BROKEN[case]
    images, labels = make(*clean)
    report = validate_batch(baseline[0], images, labels)
    text = report.summary()
    assert not report.success, text
    got = failed(report)
    for name, check in must.items():
        assert name in got, f"{case}: {name} not among the failures:\n{text}"
        assert any(f["check"] == check for f in report.failures if f"{f['expectation']}({f['column']})" == name)
        assert f"FAILED {name} [{check}]" in text
    for f in report.failures:  # readable: observed and expected in words, JSON-able
        assert f["message"] and f["expected"] is not None
        json.dumps(f)
    if case == "shuffled labels":  # label shares are intact: the consistency check alone catches it
        assert set(got) == set(must), text
    if case == "class 7 missing":
        assert "1 of 10 classes missing: [7]" in text
    if case in ("27x28 images", "32x32 images"):
        assert "skipped: label-image consistency" in text


def test_small_batches_skip_batch_level_checks(baseline, clean):
    from mnistops.quality import validate_batch

    images, labels = clean
    small = validate_batch(baseline[0], images[:100], labels[:100])
    assert small.success, small.summary()
    assert "min_batch_size 500" in small.summary()
    assert small.statistics["evaluated_expectations"] < len(baseline[0].expectations)
    # per-image checks still run on small batches
    assert not validate_batch(baseline[0], 255 - images[:100]).success
    empty = validate_batch(baseline[0], images[:0])
    assert "expect_table_row_count_to_be_between(table)" in failed(empty)


def test_labels_must_match_images(baseline, clean):
    from mnistops.quality import validate_batch

    with pytest.raises(MnistopsError, match="999 labels for 1000 images"):
        validate_batch(baseline[0], clean[0], clean[1][:-1])


def test_save_load_round_trip(baseline, clean, tmp_path):
    from mnistops.quality import load_suite, save_suite, validate_batch

    suite = baseline[0]
    path = save_suite(suite, tmp_path / "suites" / "mnist.json")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["mnist.json"]  # no temp left
    loaded = load_suite(path)
    assert loaded == suite and loaded.name == SUITE_NAME
    assert loaded.meta["mnistops"]["suite_version"] == suite.meta["mnistops"]["suite_version"]
    images, labels = clean
    assert validate_batch(loaded, images, labels).success
    assert failed(validate_batch(loaded, *_shuffled(images, labels))) == failed(
        validate_batch(suite, *_shuffled(images, labels)))
    save_suite(loaded, path)  # overwrite in place
    assert load_suite(path) == suite

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MnistopsError, match="bad.json is not valid JSON"):
        load_suite(tmp_path / "bad.json")
    with pytest.raises(MnistopsError, match="does not exist"):
        load_suite(tmp_path / "missing.json")
    foreign = json.loads(path.read_text())
    foreign["meta"] = {}
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    with pytest.raises(MnistopsError, match="not built by mnistops"):
        load_suite(tmp_path / "foreign.json")


def test_data_docs(baseline, clean, tmp_path):
    from mnistops.quality import validate_batch

    docs = tmp_path / "docs"
    t0 = time.perf_counter()
    ok = validate_batch(baseline[0], *clean, data_docs_dir=docs)
    print(f"\nvalidate_batch with Data Docs: {time.perf_counter() - t0:.2f}s")
    assert ok.success and ok.data_docs_index == docs.resolve() / "index.html"
    html = ok.data_docs_index.read_text()
    assert SUITE_NAME in html
    bad = validate_batch(baseline[0], 255 - clean[0], clean[1], data_docs_dir=docs)
    assert not bad.success and bad.data_docs_index == ok.data_docs_index
    pages = list((docs / "validations").rglob("*.html"))
    assert len(pages) == 2  # both runs, listed in one index
    assert "ink_coverage" in "".join(p.read_text() for p in pages)
    assert (docs / "expectations" / f"{SUITE_NAME}.html").is_file()
