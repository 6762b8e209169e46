import colorsys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from handray.cli import main
from handray.config import load_config
from handray.core.errors import ConfigError
from handray.data.appearance import (
    add_noise,
    blur,
    blur_radius,
    grey,
    jpeg,
    shift_hue_saturation,
)
from handray.data.coco import load_dataset
from tests.data.test_pipeline import NO_PHOTOMETRIC, examples

CHANGES = ("noise", "blur", "jpeg", "hue_saturation", "grey")
OFF = {f"data.appearance.{change}_prob": 0.0 for change in CHANGES}
# Training without flips, scale jitter, brightness/contrast or appearance: nothing changes pixels.
STILL = {**NO_PHOTOMETRIC, **OFF, "data.flip_prob": 0.0, "data.scale_jitter": [1.0, 1.0]}


def only(change: str, **strength) -> dict:
    """STILL with one change always on, at these strengths."""
    keys = {f"data.appearance.{k}": v for k, v in strength.items()}
    return {**STILL, f"data.appearance.{change}_prob": 1.0, **keys}


def window_of(example: dict) -> np.ndarray:
    _, _, height, width = example["window"]
    return example["image"][:height, :width].astype(np.float32)


def numpy_blur(image: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """2-D Gaussian convolution over edge-repeated borders, one output pixel at a time."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image.astype(np.float64), [(radius, radius), (radius, radius), (0, 0)], "edge")
    out = np.zeros(image.shape, np.float64)
    taps = 2 * radius + 1
    for y in range(image.shape[0]):
        for x0 in range(image.shape[1]):
            patch = padded[y : y + taps, x0 : x0 + taps]
            out[y, x0] = (patch * kernel[..., None]).sum(axis=(0, 1))
    return out


def test_grey_is_the_bt601_luminance_in_three_channels():
    image = np.random.default_rng(0).uniform(0, 255, (7, 9, 3)).astype(np.float32)
    got = grey(tf.constant(image)).numpy()
    luma = 0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
    assert got.shape == image.shape
    for channel in range(3):
        np.testing.assert_allclose(got[..., channel], luma, rtol=1e-5)


@pytest.mark.parametrize(("height", "width", "sigma"), [(12, 10, 1.3), (3, 2, 0.8), (9, 9, 0.5)])
def test_blur_matches_a_numpy_gaussian_convolution(height, width, sigma):
    image = np.random.default_rng(1).uniform(0, 255, (height, width, 3)).astype(np.float32)
    radius = blur_radius(1.5)  # the kernel the largest sigma needs, as the pipeline builds it
    got = blur(tf.constant(image), tf.constant(sigma), radius).numpy()
    np.testing.assert_allclose(got, numpy_blur(image, sigma, radius), atol=1e-3)


def test_hue_and_saturation_match_colorsys():
    pixels = np.array(
        [[[200, 150, 120], [30, 60, 200], [10, 10, 10]], [[255, 0, 0], [90, 200, 90], [128] * 3]],
        np.float32,
    )
    for delta, factor in [(0.1, 1.3), (-0.05, 0.5), (0.45, 2.0)]:
        got = shift_hue_saturation(tf.constant(pixels), delta, factor).numpy()
        for row, col in np.ndindex(pixels.shape[:2]):
            h, s, v = colorsys.rgb_to_hsv(*(pixels[row, col] / 255.0))
            want = colorsys.hsv_to_rgb((h + delta) % 1.0, min(s * factor, 1.0), v)
            np.testing.assert_allclose(got[row, col], np.array(want) * 255.0, atol=0.05)


def test_noise_has_zero_mean_and_the_asked_sigma():
    image = tf.fill([256, 256, 3], 128.0)
    seed = tf.constant([4, 2], tf.int64)
    for sigma in (2.0, 6.0):
        residual = add_noise(image, sigma, seed).numpy() - 128.0
        assert abs(residual.mean()) < 0.05
        assert residual.std() == pytest.approx(sigma, rel=0.02)
    np.testing.assert_array_equal(add_noise(image, 6.0, seed), add_noise(image, 6.0, seed))
    assert add_noise(image * 0, 50.0, seed).numpy().min() == 0.0  # clipped into 0..255


def test_jpeg_changes_pixels_within_bounds_and_keeps_shape_and_type():
    yy, xx = np.mgrid[:48, :40]
    rng = np.random.default_rng(2)
    image = np.stack([yy * 5, xx * 6, 128 + 40 * np.sin(xx / 3.0)], axis=-1)
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).round().astype(np.float32)
    errors = {}
    for quality in (10, 95):
        got = jpeg(tf.constant(image), tf.constant(quality)).numpy()
        assert got.shape == image.shape and got.dtype == np.float32
        assert got.min() >= 0 and got.max() <= 255 and not np.array_equal(got, image)
        errors[quality] = np.abs(got - image).mean()
    assert errors[95] < errors[10] < 20.0


def test_probability_zero_leaves_the_image_as_without_augmentation(small_dataset):
    dataset = load_dataset(small_dataset)
    plain = examples(dataset, load_config("tiny", STILL), training=False)
    trained = examples(dataset, load_config("tiny", STILL), training=True, repeat=False)
    for image_id, reference in plain.items():
        np.testing.assert_array_equal(trained[image_id]["image"], reference["image"])


def test_probability_one_applies_each_change(small_dataset):
    dataset = load_dataset(small_dataset)
    plain = examples(dataset, load_config("tiny", STILL), training=True, repeat=False)
    cases = {
        "grey": only("grey"),
        "blur": only("blur", blur_sigma=[1.0, 1.0]),
        "hue_saturation": only("hue_saturation", hue_max_delta=0.0, saturation_range=[0.5, 0.5]),
        "jpeg": only("jpeg", jpeg_quality=[40, 40]),
        "noise": only("noise", noise_max_sigma=20.0),
    }
    changed = {
        name: examples(dataset, load_config("tiny", overrides), training=True, repeat=False)
        for name, overrides in cases.items()
    }
    radius = blur_radius(1.0)
    # The pipeline changes unrounded pixels and `before` is rounded: half a level in, half out.
    for image_id, reference in plain.items():
        before = window_of(reference)
        got = {name: window_of(out[image_id]) for name, out in changed.items()}
        for name, image in got.items():
            assert not np.array_equal(image, before), name
        np.testing.assert_allclose(got["grey"], grey(before).numpy(), atol=1.001)
        assert (got["grey"] == got["grey"][..., :1]).all()
        np.testing.assert_allclose(got["blur"], blur(before, 1.0, radius).numpy(), atol=1.001)
        np.testing.assert_allclose(
            got["hue_saturation"], shift_hue_saturation(before, 0.0, 0.5).numpy(), atol=1.001
        )
        assert np.abs(got["jpeg"] - jpeg(before, 40).numpy()).mean() < 0.5
        residual = got["noise"] - before
        assert residual.std() <= 20.0 * 1.1


def test_same_seed_same_bytes_and_geometry_as_without_appearance(small_dataset):
    dataset = load_dataset(small_dataset)
    everything = {f"data.appearance.{change}_prob": 1.0 for change in CHANGES}
    keep = {"data.use_mini_mask": False, "data.scale_jitter": [0.6, 1.5]}
    on = load_config("tiny", {**keep, **everything})
    first = examples(dataset, on, training=True, repeat=False)
    again = examples(dataset, on, training=True, repeat=False)
    off = examples(dataset, load_config("tiny", {**keep, **OFF}), training=True, repeat=False)
    for image_id, example in first.items():
        for key, value in example.items():
            np.testing.assert_array_equal(again[image_id][key], value, err_msg=key)
            if key != "image":
                np.testing.assert_array_equal(off[image_id][key], value, err_msg=key)
        assert not np.array_equal(off[image_id]["image"], example["image"])
    other = load_config("tiny", {**keep, **everything, "data.seed": 7})
    moved = examples(dataset, other, training=True, repeat=False)
    assert any(not np.array_equal(moved[i]["image"], e["image"]) for i, e in first.items())


def test_padding_stays_zero(small_dataset):
    dataset = load_dataset(small_dataset)
    everything = {f"data.appearance.{change}_prob": 1.0 for change in CHANGES}
    config = load_config("tiny", {**everything, "data.scale_jitter": [0.5, 0.7]})
    for example in examples(dataset, config, training=True, repeat=False).values():
        _, _, height, width = example["window"]
        assert height < 128 and width < 128
        assert not example["image"][height:].any() and not example["image"][:, width:].any()
        assert example["image"][:height, :width].any()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.appearance.noise_prob": 1.5}, "data.appearance.noise_prob: must be within [0, 1]"),
        ({"data.appearance.grey_prob": -0.1}, "data.appearance.grey_prob: must be within [0, 1]"),
        ({"data.appearance.noise_max_sigma": -1.0}, "data.appearance.noise_max_sigma: must be"),
        ({"data.appearance.blur_sigma": [2.0, 1.0]}, "data.appearance.blur_sigma: must be"),
        ({"data.appearance.blur_sigma": [1.0, 9.0]}, "data.appearance.blur_sigma: high must"),
        ({"data.appearance.jpeg_quality": [50, 101]}, "data.appearance.jpeg_quality: must be"),
        ({"data.appearance.jpeg_quality": [60, 50]}, "data.appearance.jpeg_quality: must be"),
        ({"data.appearance.hue_max_delta": 0.7}, "data.appearance.hue_max_delta: must be"),
        ({"data.appearance.saturation_range": [0, 1]}, "data.appearance.saturation_range: must"),
        ({"data.appearance.nois_prob": 0.1}, "unknown key 'data.appearance.nois_prob'; did you"),
    ],
)
def test_bad_appearance_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config("tiny", overrides)


def test_presets_with_augmentation_get_appearance_and_matterport_does_not():
    tiny, old = load_config("tiny").data, load_config("matterport").data
    assert tiny.augment and tiny.appearance.noise_prob > 0 and tiny.appearance.grey_prob > 0
    probabilities = [getattr(old.appearance, f"{change}_prob") for change in CHANGES]
    assert probabilities == [0.0] * len(CHANGES)


def test_preview_augmented_writes_a_png_of_training_examples(small_dataset, tmp_path, capsys):
    out = tmp_path / "augmented.png"
    args = f"preview {small_dataset} --augmented --preset tiny --count 5 --out {out}".split()
    code = main([*args, "--set", "data.appearance.grey_prob=1.0"])
    assert code == 0 and "training examples" in capsys.readouterr().out
    with Image.open(out) as sheet:
        pixels = np.asarray(sheet.convert("RGB"))
    assert pixels.shape == (2 * 128, 4 * 128, 3)  # 5 squares of the tiny preset, 4 a row
    # The images are grey: colour comes from the drawn masks and boxes.
    assert (pixels[..., 0] != pixels[..., 1]).any()
