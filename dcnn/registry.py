"""The registry: task families and their tasks by name, model names to specs and families, and the resolution
of a config against them.  The one place that dispatches on the kind of task.

Layering (tests/test_import_graph.py keeps it so): the family types (dcnn/families.py) and TrainConfig
(dcnn/config.py) import nothing above them; each family is defined next to its task (dcnn/atomistic/family.py,
dcnn/pinn/family.py); the models (dcnn/models/) know nothing of tasks; this module sits on all of them, and
the trainer, the CLI, the calculator and the plug-in check build on it.
"""
from __future__ import annotations

import dataclasses
import typing

import torch

from dcnn.atomistic.family import ATOMISTIC
from dcnn.atomistic.task import AtomisticTask
from dcnn.config import TrainConfig
from dcnn.families import TaskFamily
from dcnn.models import BUILTIN_SPECS, ModelSpec, UnknownModelError
from dcnn.models import get_spec as _model_spec
from dcnn.models import model_names
from dcnn.models.plugins import ModelPluginError
from dcnn.pinn.family import PINN
from dcnn.pinn.task import PINNTask
from dcnn.tasks import Task

__all__ = ["FAMILIES", "TASKS", "family_of", "family_of_config", "models_of", "get_spec", "model_names",
           "make_task", "resolve_config", "resolve_dataset"]

FAMILIES = {f.name: f for f in (ATOMISTIC, PINN)}  # by `ModelSpec.family`
TASKS = {ATOMISTIC.name: AtomisticTask, PINN.name: PINNTask}  # the Task class each family trains


def get_spec(name: str) -> ModelSpec:
    """The ModelSpec of a model name (dcnn.models.get_spec: built-in, optional built-in, plug-in or entry point),
    refused when its family is none of FAMILIES."""
    spec = _model_spec(name)
    if spec.family not in FAMILIES:
        raise ModelPluginError(f"model {name!r}: bad ModelSpec: family {spec.family!r} is not one of "
                               f"{', '.join(FAMILIES)}")
    return spec


def family_of(model: str) -> TaskFamily:
    """The family a model belongs to: its ModelSpec says (`family`; built-ins, plug-ins alike); a name that
    does not resolve (an empty study, a typo reported elsewhere) is atomistic, the default."""
    try:
        return FAMILIES[get_spec(model).family]
    except ModelPluginError:
        return ATOMISTIC


def family_of_config(config: typing.Mapping) -> TaskFamily:
    return family_of(str(config.get("model", "")))


def models_of(family: TaskFamily) -> list[str]:
    """The built-in models of a family."""
    return [name for name, spec in BUILTIN_SPECS.items() if FAMILIES[spec.family] is family]


def make_task(config: TrainConfig, device: torch.device) -> Task:
    """The Task of a config: the one its model's family trains."""
    return TASKS[family_of(config.model).name](config, device)


def resolve_dataset(family: TaskFamily, name, base=None, model: str = "") -> str:
    """`family.resolve_dataset`, refusing another family's data by name: a molecule file given to a PINN model,
    or a PDE problem to an interatomic potential, is the wrong kind of data, not a misspelt name."""
    try:
        return family.resolve_dataset(name, base)
    except ValueError:
        for other in FAMILIES.values():
            if other is family:
                continue
            try:
                other.resolve_dataset(name, base)
            except ValueError:
                continue
            raise ValueError(
                f"data set {str(name)!r} is {other.data_words()}, but model {model!r} is {family.model_words}, "
                f"which trains on {family.data_words()}; give it such data, or a model of the other kind "
                f"({', '.join(models_of(other))})") from None
        raise


def resolve_config(config: TrainConfig | typing.Mapping, base: str | None = None) -> TrainConfig:
    """The one place where names and files of a config are resolved (the CLI, the trainables, the study and
    the calculator call it where a run starts; the Trainer only when handed a config nobody resolved): the
    model's spec (built-in, optional built-in, plug-in `module:attr` or entry point, imported here), its preset,
    its sizes (names among the spec's `size_names()`, values converted and checked by the spec), its task
    family's default data set when none is given, and the data set made absolute (relative paths against
    `base`, default the working directory; trials run in folders of their own) or, for a PINN, the problem's
    canonical name.  Idempotent; the result is marked `resolved`."""
    if isinstance(config, TrainConfig) and config.resolved:
        return config
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    try:
        spec = get_spec(cfg.model)
    except UnknownModelError:
        raise ValueError(f"model={cfg.model!r} is not allowed; choose one of: {', '.join(model_names())} "
                         f"(or a plug-in package.module:attribute)") from None
    if cfg.preset not in spec.presets:
        raise ValueError(f"preset={cfg.preset!r} is not allowed; choose one of: {', '.join(spec.presets)}")
    names = spec.size_names()
    foreign = [n for n in cfg.sizes if n not in names]
    if foreign:
        raise ValueError(f"size field(s) {foreign} do not apply to model {cfg.model!r}; its sizes are: "
                         f"{', '.join(names)}")
    checked = spec.sizes(cfg.preset, cfg.sizes)
    family = FAMILIES[spec.family]
    dataset = resolve_dataset(family, cfg.dataset or family.default_dataset(), base, model=cfg.model)
    test_dataset = cfg.test_dataset
    if test_dataset:
        if spec.family != "atomistic":
            raise ValueError(f"test_dataset={test_dataset!r}: a test file applies to atomistic data only (model "
                             f"{cfg.model!r} is of the {spec.family} family)")
        test_dataset = resolve_dataset(family, test_dataset, base, model=cfg.model)
    sizes = {n: checked[n] for n in cfg.sizes}
    same = dataset == cfg.dataset and test_dataset == cfg.test_dataset and [(n, type(v), v) for n, v in sizes.items()] == \
        [(n, type(v), v) for n, v in cfg.sizes.items()]
    out = cfg if same else dataclasses.replace(cfg, dataset=dataset, test_dataset=test_dataset, sizes=sizes)
    out.__dict__["_resolved"] = True  # TrainConfig.resolved
    return out
