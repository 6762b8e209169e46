"""The one threshold policy, and the one place that reads thresholds from a config.

- `min_score`: the detections a person is shown. `handray predict`, `handray.load`'s
  predictor, overlays, the export's default and so the server's (`serve.min_score`).
- `evaluation_min_score`: what evaluation keeps (`model.detection_min_confidence`). AP is
  computed over the low-score tail too, which a picture or a reply would drown in.
- `mask`: the probability at which a pixel belongs to a hand's mask, everywhere
  (`serve.mask_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass

from handray.config import Config


@dataclass(frozen=True)
class Thresholds:
    min_score: float
    evaluation_min_score: float
    mask: float

    @classmethod
    def from_config(cls, config: Config) -> Thresholds:
        return cls(
            min_score=config.serve.min_score,
            evaluation_min_score=config.model.detection_min_confidence,
            mask=config.serve.mask_threshold,
        )
