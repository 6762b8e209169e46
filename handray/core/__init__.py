"""The shared bottom layer: errors, atomic writes, image files, the padded-square geometry,
the hand's keypoints, pictures and plots; it imports nothing of handray but config."""
