"""Ray Tune trainables wrapping the dcnn trainer: a function trainable and a class trainable.

Both take the flat config of design §3 (TrainConfig keys plus the label keys below), report every
epoch with `ray.tune.report`, checkpoint every epoch, and resume from Tune's checkpoint, so they run
unchanged under `tune.run(...)` and `Tuner(...).fit()`, with FailureConfig retries, Tuner.restore,
reuse_actors and PBT.

The trainables (and Ray) load on first use of these names: `trainables.trial_record`, which the
orchestrator's report and `dcnn-ablate train` reach, needs neither.
"""
import importlib

__all__ = ["dcnn_trainable", "DCNNTrainable", "train_config_from_tune", "LABEL_KEYS"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("trainables.dcnn_trainables"), name)
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")
