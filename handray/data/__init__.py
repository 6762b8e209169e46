"""Datasets: COCO reading and writing, RHD conversion, synthetic hands, the tf.data pipeline."""
