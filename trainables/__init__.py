"""Ray Tune trainables wrapping the dcnn trainer: a function trainable and a class trainable.

Both take a flat config (TrainConfig.to_dict keys, dcnn/config.py, plus the label keys below), report every
epoch with `ray.tune.report`, checkpoint every epoch, and resume from Tune's checkpoint, so they run
unchanged under `tune.run(...)` and `Tuner(...).fit()`, with FailureConfig retries, Tuner.restore,
reuse_actors and PBT.

A study runs `study_trainable()`: `DCNNTrainable`, or a subclass of it named by $DCNN_TRAINABLE
("module:Class"), so a study can run a trainable that does more per epoch (extra metrics, a fault to
test against) without a change here; the module must be importable in the driver and in every Ray
worker (PYTHONPATH, or installed on the cluster's nodes).

The trainables (and Ray) load on first use of these names: `trainables.trial_record`, which the
orchestrator's report and `dcnn-ablate train` reach, needs neither.
"""
import importlib
import os

__all__ = ["dcnn_trainable", "DCNNTrainable", "train_config_from_tune", "LABEL_KEYS", "study_trainable",
           "TRAINABLE_ENV"]

TRAINABLE_ENV = "DCNN_TRAINABLE"


def study_trainable():
    """The class trainable a study runs: $DCNN_TRAINABLE's class ("module:Class", a subclass of
    DCNNTrainable: the study's checkpoints, records and resume rely on it), else DCNNTrainable.  A name
    that does not import, or a class that is not such a subclass, raises ValueError naming the variable."""
    base = importlib.import_module("trainables.dcnn_trainables").DCNNTrainable
    spec = os.environ.get(TRAINABLE_ENV, "").strip()
    if not spec:
        return base
    module, _, name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name) if module and name else None
    except (ImportError, AttributeError) as e:
        raise ValueError(f"${TRAINABLE_ENV}={spec!r} does not import: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"${TRAINABLE_ENV}={spec!r} must name a subclass of trainables.DCNNTrainable as "
                         f"'module:Class'")
    return cls


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("trainables.dcnn_trainables"), name)
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")
