"""Ray Tune trainables wrapping the dcnn trainer: a function trainable and a class trainable.

Both take the flat config of design §3 (TrainConfig keys plus the label keys below), report every
epoch with `ray.tune.report`, checkpoint every epoch, and resume from Tune's checkpoint, so they run
unchanged under `tune.run(...)` and `Tuner(...).fit()`, with FailureConfig retries, Tuner.restore,
reuse_actors and PBT.
"""
from trainables.dcnn_trainables import (LABEL_KEYS, DCNNTrainable, dcnn_trainable,
                                        train_config_from_tune)

__all__ = ["dcnn_trainable", "DCNNTrainable", "train_config_from_tune", "LABEL_KEYS"]
