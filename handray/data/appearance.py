"""Photo-like appearance changes of a training image: blur, sensor noise, hue and saturation,
grey, JPEG artefacts.

Why: the images a model trains on (synthetic hands, rendered datasets) are clean, sharp and
evenly coloured, while the photos it meets come from cameras: soft where out of focus or moving,
noisy in low light, with white balance and saturation that vary, sometimes black and white, and
nearly always JPEG-compressed. Each change happens to an image with its own probability
(`data.appearance`), so the model sees clean and degraded pixels alike and learns a hand's shape
rather than one renderer's texture and colour.

The changes act on pixels only, never on geometry: masks, boxes and keypoints stay as they are.
The pipeline applies them to the image's region before padding it into the square, so the
padding stays zero. Like the rest of the pipeline they are TensorFlow ops with stateless
randomness, so the same seed and element give the same bytes.

Images are float32 [H, W, 3] in 0..255. The order follows a camera's: the lens blurs, the sensor
adds noise, processing sets the colour (hue, saturation, or grey), and the file is compressed
last.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from handray.config import AppearanceConfig

# ITU-R BT.601 luma weights of R, G, B (what JPEG and tf.image.rgb_to_grayscale use).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# A blur kernel reaches this many sigmas each way from its centre.
KERNEL_SIGMAS = 3.0
# Seeds `random_appearance` takes: one per change.
NUM_SEEDS = 5


def blur_radius(max_sigma: float) -> int:
    """Half-width in pixels of the fixed-size kernel that serves every sigma up to `max_sigma`."""
    return max(1, math.ceil(KERNEL_SIGMAS * max_sigma))


def random_appearance(image: tf.Tensor, settings: AppearanceConfig, seeds: tf.Tensor) -> tf.Tensor:
    """Each change with its probability and a strength drawn from its range; `seeds` [5, 2]
    (one per change). A change of probability 0 adds no op to the graph."""
    image = tf.ensure_shape(image, [None, None, 3])
    radius = blur_radius(settings.blur_sigma[1])

    def blurred(image: tf.Tensor, draws: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return blur(image, _between(draws[0], *settings.blur_sigma), radius)

    def noisy(image: tf.Tensor, draws: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        field = tf.random.experimental.stateless_fold_in(seed, 1)
        return add_noise(image, draws[0] * settings.noise_max_sigma, field)

    def coloured(image: tf.Tensor, draws: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        delta = _between(draws[0], -settings.hue_max_delta, settings.hue_max_delta)
        return shift_hue_saturation(image, delta, _between(draws[1], *settings.saturation_range))

    def compressed(image: tf.Tensor, draws: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        low, high = settings.jpeg_quality
        quality = tf.minimum(low + tf.cast(draws[0] * (high - low + 1), tf.int32), high)
        return jpeg(image, quality)

    steps = (
        (settings.blur_prob, blurred),
        (settings.noise_prob, noisy),
        (settings.hue_saturation_prob, coloured),
        (settings.grey_prob, lambda image, draws, seed: grey(image)),
        (settings.jpeg_prob, compressed),
    )
    for seed, (probability, change) in zip(tf.unstack(seeds, NUM_SEEDS), steps, strict=True):
        image = _sometimes(image, probability, seed, change)
    return image


def blur(image: tf.Tensor, sigma: tf.Tensor | float, radius: int) -> tf.Tensor:
    """Gaussian blur: a (2 * radius + 1)-tap kernel of this sigma, run down the columns then
    along the rows of each channel (depthwise), the border pixels repeated outwards."""
    kernel = gaussian_kernel(sigma, radius)
    taps = 2 * radius + 1
    shape = tf.shape(image)

    def edge_indices(length: tf.Tensor) -> tf.Tensor:
        return tf.clip_by_value(tf.range(-radius, length + radius), 0, length - 1)

    padded = tf.gather(image, edge_indices(shape[0]), axis=0)
    padded = tf.gather(padded, edge_indices(shape[1]), axis=1)
    column = tf.tile(tf.reshape(kernel, [taps, 1, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(padded[None], column, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, tf.reshape(column, [1, taps, 3, 1]), [1, 1, 1, 1], "VALID")
    return out[0]


def gaussian_kernel(sigma: tf.Tensor | float, radius: int) -> tf.Tensor:
    """exp(-x² / 2 sigma²) at x = -radius..radius, summing to 1."""
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    sigma = tf.cast(sigma, tf.float32)
    weights = tf.exp(-(x**2) / (2.0 * sigma**2))
    return weights / tf.reduce_sum(weights)


def add_noise(image: tf.Tensor, sigma: tf.Tensor | float, seed: tf.Tensor) -> tf.Tensor:
    """Independent Gaussian noise of `sigma` grey levels on every pixel and channel, clipped."""
    noise = tf.random.stateless_normal(tf.shape(image), seed) * tf.cast(sigma, tf.float32)
    return tf.clip_by_value(image + noise, 0.0, 255.0)


def shift_hue_saturation(
    image: tf.Tensor, hue_delta: tf.Tensor | float, saturation: tf.Tensor | float
) -> tf.Tensor:
    """Turn the hue by `hue_delta` of the circle and multiply the saturation (clipped to 1), in
    HSV; the value (brightest channel) stays."""
    hsv = tf.image.rgb_to_hsv(image / 255.0)
    hue = tf.math.floormod(hsv[..., 0] + hue_delta, 1.0)
    sat = tf.clip_by_value(hsv[..., 1] * saturation, 0.0, 1.0)
    rgb = tf.image.hsv_to_rgb(tf.stack([hue, sat, hsv[..., 2]], axis=-1))
    return tf.clip_by_value(rgb * 255.0, 0.0, 255.0)


def grey(image: tf.Tensor) -> tf.Tensor:
    """The luminance (BT.601 weights) in all three channels."""
    luma = tf.reduce_sum(image * tf.constant(LUMA_WEIGHTS, tf.float32), axis=-1, keepdims=True)
    return tf.tile(luma, [1, 1, 3])


def jpeg(image: tf.Tensor, quality: tf.Tensor | int) -> tf.Tensor:
    """The image after a JPEG encode and decode at `quality` (0..100), as 8-bit pixels would be."""
    pixels = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.cast(tf.image.adjust_jpeg_quality(pixels, quality), tf.float32)


def _sometimes(
    image: tf.Tensor,
    probability: float,
    seed: tf.Tensor,
    change: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor],
) -> tf.Tensor:
    """`change(image, draws, seed)` with this probability, else the image; `draws` are two
    uniforms in [0, 1) for its strength. Probability 0 leaves the graph without the change."""
    if probability <= 0:
        return image
    draws = tf.random.stateless_uniform([3], seed)
    return tf.cond(draws[0] < probability, lambda: change(image, draws[1:], seed), lambda: image)


def _between(unit: tf.Tensor, low: float, high: float) -> tf.Tensor:
    """A uniform draw in [0, 1) moved to [low, high)."""
    return low + unit * (high - low)
