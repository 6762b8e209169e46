import numpy as np
import pytest
from pycocotools import mask as mask_utils

from handray.core.masks import counts_from_string, decode_counts, encode_mask, segmentation_counts
from tests.conftest import segmentation_of


def random_masks(count: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        height, width = rng.integers(1, 60, size=2)
        density = rng.uniform(0.0, 1.0)
        yield (rng.random((height, width)) < density).astype(np.uint8)


def test_counts_from_string_matches_pycocotools_decoding():
    for mask in random_masks():
        rle = mask_utils.encode(np.asfortranarray(mask))
        runs = counts_from_string(rle["counts"])
        height, width = mask.shape
        assert runs.sum() == height * width
        np.testing.assert_array_equal(decode_counts(runs, height, width), mask_utils.decode(rle))


def test_counts_from_string_handles_large_runs_and_empty_masks():
    big = np.zeros((1000, 1200), np.uint8)
    big[3:997, 5:1100] = 1
    for mask in (big, np.zeros((7, 9), np.uint8), np.ones((7, 9), np.uint8)):
        rle = mask_utils.encode(np.asfortranarray(mask))
        np.testing.assert_array_equal(
            decode_counts(counts_from_string(rle["counts"]), *mask.shape), mask
        )


def test_truncated_rle_string_is_rejected():
    rle = mask_utils.encode(np.asfortranarray(np.eye(40, dtype=np.uint8)))
    # A character with the continuation bit set (0x20) may not end the string.
    with pytest.raises(ValueError, match="middle of a value"):
        counts_from_string(rle["counts"] + b"P")


def test_encode_mask_area_and_bbox_are_the_pixel_extent():
    mask = np.zeros((30, 40), np.uint8)
    mask[4:9, 10:25] = 1
    mask[20, 3] = 1
    fields = encode_mask(mask)
    assert fields["area"] == int(mask.sum())
    assert fields["bbox"] == [3, 4, 22, 17]
    decoded = mask_utils.decode({"size": [30, 40], "counts": fields["segmentation"]["counts"]})
    np.testing.assert_array_equal(decoded, mask)


@pytest.mark.parametrize("flavour", ["rle", "uncompressed", "polygon"])
def test_every_segmentation_flavour_decodes_to_the_source_mask(flavour):
    mask = np.zeros((50, 70), np.uint8)
    mask[10:31, 5:44] = 1
    runs = segmentation_counts(segmentation_of(mask, flavour), 50, 70)
    np.testing.assert_array_equal(decode_counts(runs, 50, 70), mask)


def test_segmentation_of_wrong_size_is_rejected():
    mask = np.ones((10, 10), np.uint8)
    with pytest.raises(ValueError, match="differs from the image size"):
        segmentation_counts(segmentation_of(mask, "rle"), 10, 12)
    with pytest.raises(ValueError, match="cover 100 pixels"):
        segmentation_counts({"size": [10, 12], "counts": [50, 50]}, 10, 12)
