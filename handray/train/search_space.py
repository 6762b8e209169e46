"""What a sweep's trials sample, and the config each trial trains.

Hands are small objects of a narrow size range, so the anchors and the learning rate that work
depend on the dataset and the image size. Each trial samples a learning rate (log-uniform over
`tune.learning_rate`), one named anchor set (`tune.anchor_sets`, see `config.ANCHOR_SETS`) and a
choice for each `tune.extra` key, and trains the base config with those values.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from handray.config import ANCHOR_SETS, Config, TuneConfig, with_overrides
from handray.core.errors import ConfigError

LEARNING_RATE, ANCHORS = "learning_rate", "anchors"  # sampled values besides tune.extra keys


def search_space(settings: TuneConfig) -> dict[str, Any]:
    """Tune's param space: the sampled values `trial_config` applies."""
    low, high = settings.learning_rate
    space = {
        LEARNING_RATE: tune.loguniform(low, high) if low < high else low,
        ANCHORS: tune.choice(list(settings.anchor_sets)),
    }
    space.update({key: tune.choice(list(choices)) for key, choices in settings.extra.items()})
    return space


def sampled_keys(settings: TuneConfig) -> list[str]:
    """The names of a trial's sampled values, in the search space's order."""
    return [LEARNING_RATE, ANCHORS, *settings.extra]


def trial_config(config: Config, params: dict[str, Any]) -> Config:
    """The base config with one trial's sampled values applied. A sweep that optimises AP
    measures it every epoch, as ASHA compares trials epoch by epoch."""
    overrides = {k: v for k, v in params.items() if k not in (LEARNING_RATE, ANCHORS)}
    overrides["train.learning_rate"] = params[LEARNING_RATE]
    overrides["model.rpn_anchor_scales"] = list(ANCHOR_SETS[params[ANCHORS]])
    if config.tune.metric == "val_mask_ap":
        overrides["train.eval_every"] = 1
    return with_overrides(config, overrides)


def check_search_space(config: Config) -> None:
    """Every value a trial may sample must build a valid config: fail before any trial runs."""
    settings = config.tune
    if settings.grace_period > config.train.epochs:
        raise ConfigError(
            f"tune.grace_period: {settings.grace_period} epochs before ASHA may stop a trial "
            f"is more than the {config.train.epochs} epochs a trial trains (train.epochs)"
        )
    low, high = settings.learning_rate
    first = {
        LEARNING_RATE: low,
        ANCHORS: settings.anchor_sets[0],
        **{key: choices[0] for key, choices in settings.extra.items()},
    }
    variants = [first, {**first, LEARNING_RATE: high}]
    variants += [{**first, ANCHORS: anchors} for anchors in settings.anchor_sets]
    variants += [
        {**first, key: choice} for key, choices in settings.extra.items() for choice in choices
    ]
    for params in variants:
        try:
            trial_config(config, params)
        except ConfigError as err:
            raise ConfigError(f"a trial of the sweep would have {params}: {err}") from None
