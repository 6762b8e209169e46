"""Names the config and the model must agree on, defined once: training stages, losses and
precisions."""

# The old tool's stage selections, as regular expressions over layer names. `train.layers` and
# the keys of `train.stages` name one of these or give a regular expression of their own.
LAYER_SELECTIONS: dict[str, str] = {
    "heads": r"(mrcnn_.*)|(rpn_.*)|(fpn_.*)",
    "3+": r"(res[345].*)|(bn[345].*)|(mrcnn_.*)|(rpn_.*)|(fpn_.*)",
    "4+": r"(res[45].*)|(bn[45].*)|(mrcnn_.*)|(rpn_.*)|(fpn_.*)",
    "5+": r"(res5.*)|(bn5.*)|(mrcnn_.*)|(rpn_.*)|(fpn_.*)",
    "all": r".*",
}
LAYER_STAGES = tuple(LAYER_SELECTIONS)
LOSS_NAMES = (
    "rpn_class_loss",
    "rpn_bbox_loss",
    "mrcnn_class_loss",
    "mrcnn_bbox_loss",
    "mrcnn_mask_loss",
    "mrcnn_keypoint_loss",
    "mrcnn_side_loss",
)
# A pasted mask pixel belongs to the hand at this probability: `serve.mask_threshold`'s default,
# which `handray.inference.thresholds` reads for every path.
MASK_THRESHOLD = 0.5
# What a model may compute in (handray/model/precision.py): `train.precision`, `serve.precision`.
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
