import keras
import numpy as np
import tensorflow as tf

from handray.model import losses


def softmax_ce(logits, label):
    logits = np.asarray(logits, np.float64)
    return np.log(np.exp(logits).sum()) - logits[label]


def huber(d):
    d = np.abs(d)
    return np.where(d < 1, 0.5 * d**2, d - 0.5)


def test_rpn_losses_use_only_sampled_and_positive_anchors():
    labels = tf.constant([[1, -1, 0, 1]])
    logits = tf.constant([[[0.0, 2.0], [1.0, -1.0], [5.0, -5.0], [0.5, 0.5]]])
    expected = np.mean([softmax_ce([0, 2], 1), softmax_ce([1, -1], 0), softmax_ce([0.5, 0.5], 1)])
    np.testing.assert_allclose(losses.rpn_class_loss(labels, logits), expected, rtol=1e-6)
    target = tf.constant([[[0.5, 0, 0, 0], [9, 9, 9, 9], [9, 9, 9, 9], [0, 0, 2, 0]]], tf.float32)
    predicted = tf.zeros_like(target)
    expected = np.mean(huber(np.array([[0.5, 0, 0, 0], [0, 0, 2, 0]])))
    np.testing.assert_allclose(losses.rpn_bbox_loss(labels, target, predicted), expected)


def test_losses_are_zero_not_nan_when_nothing_qualifies():
    """The heads' own losses: tests/model/heads/."""
    assert float(losses.rpn_class_loss(tf.constant([[0, 0]]), tf.zeros([1, 2, 2]))) == 0.0
    zeros = tf.zeros([1, 2, 4])
    assert float(losses.rpn_bbox_loss(tf.constant([[0, -1]]), zeros, zeros)) == 0.0


def test_weight_decay_skips_batch_norm_gamma_and_beta():
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    norm = keras.layers.BatchNormalization()
    norm.build((None, 2))
    variables = dense.trainable_variables + norm.trainable_variables
    expected = 0.5 * 0.01 * sum(float(np.sum(np.square(v.numpy()))) for v in dense.weights)
    np.testing.assert_allclose(losses.weight_decay_loss(variables, 0.01), expected, rtol=1e-6)
    assert {v.name for v in norm.trainable_variables} == {"gamma", "beta"}
