"""Evaluation: COCO AP with pycocotools, and hands matched whatever their side."""
