"""Bring your own model: the `ModelSpec` contract, how model names resolve, and the checks run before Ray.

A model joins a study by name. A name is one of

* a built-in (`schnet`, `cgcnn`, ... and the optional `mace`), registered here through the same spec;
* a dotted path `package.module:attr` to a `ModelSpec` (or to a function with no arguments that returns
  one), e.g. `--models schnet,mypkg.potentials:spec` or `models: [mypkg.potentials:spec]` in a study YAML;
* an entry point in the group `dcnn_ablate.models` of an installed distribution, e.g. in its
  pyproject.toml: `[project.entry-points."dcnn_ablate.models"] mynet = "mypkg.potentials:spec"`.

The spec says what the trainer must know about a model it did not write:

* `build(**sizes) -> nn.Module`: a module whose `forward(graph)` takes one `dcnn.atomistic.AtomicGraph`
  (B structures as one disjoint graph: positions [A, 3], numbers, batch, edges with cell shifts; edge
  vectors by `graph.edge_vectors()`) and returns the energy [B], differentiable w.r.t. positions (forces
  are −∂E/∂positions and the stress ∂E/∂strain by autograd, done by us).  A module written for the older
  dense layout, `forward(positions [B, N, 3], numbers [N])`, still works on one molecule's frames
  (`DenseInput`), and is refused clearly on variable-size or periodic data;
* `presets`: size sets by name, at least `small`.  A model's sizes are its presets' keys and the keyword
  parameters of `build` (less `data_args`, `task_args` and `activation`); a study or the CLI sets one as
  `size.NAME` (TrainConfig.sizes), which overrides the preset's value, and any other name is refused.  A
  value is converted to the type of the preset's (or the parameter default's) value; `size_choices` and
  `positive_sizes` say which values a size takes (checked before any training starts);
* `original_activation`: the name of the activation the model uses (what `activation: original` means:
  the model is left as it is), one of `dcnn.activations.BASE_ACTIVATIONS` or the class name of a torch
  activation or of one of `activation_types` (e.g. "mish", "shiftedsoftplus");
* `paper_placement`: where `scope: paper` swaps activations, as submodule paths with `*` wildcards
  (`("",)` = the whole model, `("interactions.*.mlp",)`); a path may name the activation modules
  themselves (`"interactions.*.mlp.1"`: whatever module sits there is swapped, as the paper's own code
  did); `scope: all` swaps every activation module.  Swappable activations are
  `dcnn.activations.Activation` modules (`get_activation(name)`), every elementwise torch activation
  (`nn.SiLU`, `nn.Mish`, `nn.CELU`, `nn.Hardtanh`, ...) and the model's own classes listed in
  `activation_types` (PyG's `ShiftedSoftplus`, fairchem's `ScaledSiLU`); a functional call (`F.silu(x)`)
  cannot be swapped.
* `data_args`: names among `DATA_ARGS` that `build` also receives from the data set (e.g. `elements`,
  the sorted atomic numbers, for a model with per-element weights); without data they are not passed.

`dcnn.plugin_check.check_plugin` (run by `dcnn-ablate ablate` before Ray starts, for every model that is not
built in) imports the plug-in, builds it, runs one forward and backward on two frames of the data set and
checks the placement, so a broken plug-in fails in seconds with its name and the cause, not in every worker.
This module imports nothing of the project above dcnn.activations and dcnn.config: the model classes and
the registry build on it.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
import hashlib
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from dcnn.activations import BASE_ACTIVATIONS, TORCH_ACTIVATION_TYPES
from dcnn.config import coerce_value

ENTRY_POINT_GROUP = "dcnn_ablate.models"
DATA_ARGS = ("elements", "n_atoms")
# optional built-ins: resolved like plug-ins, so `import dcnn` never imports their (extra) dependencies
OPTIONAL_MODELS = {"mace": ("dcnn.models.mace:spec", "mace")}

__all__ = ["ModelSpec", "ENTRY_POINT_GROUP", "DATA_ARGS", "OPTIONAL_MODELS", "resolve", "is_plugin",
           "plugin_search_path", "safe_name", "ModelPluginError", "UnknownModelError", "known_names",
           "as_written", "NOT_SIZES"]
# build's keyword parameters that are never sizes: the activation is the study's factor (swapped after the build)
NOT_SIZES = ("activation",)


class ModelPluginError(ValueError):
    """A model name that cannot be resolved, or a plug-in that breaks the contract (names both)."""


class UnknownModelError(ModelPluginError):
    """A plain name that is neither built in nor an installed entry point."""


@dataclass(frozen=True)
class ModelSpec:
    """What the trainer needs to know about an energy model E(positions, numbers) -> [B]."""

    build: Callable[..., nn.Module]
    presets: Mapping[str, Mapping[str, Any]]
    original_activation: str
    paper_placement: tuple = ("",)
    data_args: tuple = ()
    description: str = ""
    name: str = field(default="", compare=False)  # filled in by `resolve`
    # the model's own activation classes (PyG's/SchNetPack's ShiftedSoftplus, fairchem's ScaledSiLU), swapped
    # like torch's wherever the placement reaches them
    activation_types: tuple = ()
    # the task family it trains in (dcnn.registry.FAMILIES): "atomistic" (forward(graph) -> energies) or
    # "pinn" (forward(points) -> fields)
    family: str = "atomistic"
    # build's keyword parameters the task sets (never sizes a study varies): an embedding table's size, a
    # PINN's input and output dimensions
    task_args: tuple = ()
    # the values a size may take, by name (CGCNN's readout: mean | sum)
    size_choices: Mapping[str, tuple] = field(default_factory=dict)
    # sizes that must be positive numbers (widths, counts, cutoffs)
    positive_sizes: tuple = ()

    def problems(self) -> list[str]:
        """What is wrong with the spec itself (empty when nothing; its family is the registry's to judge)."""
        out = []
        if not callable(self.build):
            out.append(f"build {self.build!r} is not callable")
        if not isinstance(self.presets, Mapping) or "small" not in self.presets:
            out.append(f"presets must map names to size dicts and include 'small', got {self.presets!r}")
        else:
            for k, v in self.presets.items():
                if not isinstance(v, Mapping):
                    out.append(f"preset {k!r} must be a mapping of sizes, got {v!r}")
        for name in ("task_args", "positive_sizes"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(a, str) for a in value):
                out.append(f"{name} must be a tuple of parameter names, got {value!r}")
        if not isinstance(self.size_choices, Mapping) or any(isinstance(v, str) or not isinstance(v, (tuple, list))
                                                             for v in self.size_choices.values()):
            out.append(f"size_choices must map size names to tuples of values, got {self.size_choices!r}")
        bad_types = [t for t in self.activation_types if not (isinstance(t, type) and issubclass(t, nn.Module))]
        if isinstance(self.activation_types, (str, type)) or bad_types:
            out.append(f"activation_types must be a tuple of torch.nn.Module classes, got {self.activation_types!r}")
        own = {t.__name__.lower() for t in (*TORCH_ACTIVATION_TYPES, *(t for t in self.activation_types
                                                                       if isinstance(t, type)))}
        if self.original_activation not in BASE_ACTIVATIONS and str(self.original_activation).lower() not in own:
            out.append(f"original_activation {self.original_activation!r} is not one of "
                       f"{', '.join(BASE_ACTIVATIONS)}, nor a torch activation class or one of activation_types "
                       f"(by class name, e.g. 'mish', 'shiftedsoftplus')")
        if isinstance(self.paper_placement, str) or not all(isinstance(p, str) for p in self.paper_placement):
            out.append(f"paper_placement must be a tuple of submodule paths, got {self.paper_placement!r}")
        bad = [a for a in self.data_args if a not in DATA_ARGS]
        if bad:
            out.append(f"data_args {bad} unknown; known: {', '.join(DATA_ARGS)}")
        try:  # a model is also built without a data set (e.g. to see whether it has BatchNorm)
            params = inspect.signature(self.build).parameters
        except (TypeError, ValueError):
            params = {}
        no_default = [a for a in self.data_args if a in params and params[a].default is inspect.Parameter.empty]
        if no_default:
            out.append(f"build needs defaults for its data_args {no_default} (it is also built without data)")
        return out

    def size_names(self) -> tuple[str, ...]:
        """The sizes a study or the CLI may set (`size.NAME`): the presets' keys, then build's other keyword
        parameters (a plug-in's own knobs need no preset entry), less data_args, task_args and NOT_SIZES."""
        names = dict.fromkeys(k for p in self.presets.values() if isinstance(p, Mapping) for k in p)
        try:
            params = inspect.signature(self.build).parameters.values()
        except (TypeError, ValueError):  # a builtin or C callable: its presets say it all
            params = ()
        names.update(dict.fromkeys(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)))
        skip = {*self.data_args, *self.task_args, *NOT_SIZES}
        return tuple(n for n in names if n not in skip)

    def sizes(self, preset: str, overrides: Mapping[str, Any]) -> dict:
        """The preset's sizes with `overrides` (None values ignored), each converted to the type of the value
        it replaces and checked (`size_choices`, `positive_sizes`); unknown preset, size or value → ValueError."""
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r} for model {self.name!r}; known: {', '.join(self.presets)}")
        sizes = dict(self.presets[preset])
        names = self.size_names()
        unknown = set(overrides) - set(names)
        if unknown:
            raise ValueError(f"unknown size(s) {sorted(unknown)} for model {self.name!r}; known: {', '.join(names)}")
        defaults = self._defaults()
        for name, value in overrides.items():
            if value is not None:
                sizes[name] = self._checked_size(name, value, sizes.get(name, defaults.get(name)))
        return sizes

    def _defaults(self) -> dict:
        try:
            params = inspect.signature(self.build).parameters.values()
        except (TypeError, ValueError):
            return {}
        return {p.name: p.default for p in params if p.default is not p.empty}

    def _checked_size(self, name: str, value, like):
        """`value` as the type of `like` (the preset's value or build's default: 32.0 → 32 for a width,
        "true" → True for a switch), then in `size_choices` and positive where `positive_sizes` says so."""
        if type(like) in (bool, int, float, str):
            value = coerce_value(f"size {name}", value, type(like))
        choices = self.size_choices.get(name)
        if choices is not None and value not in choices:
            raise ValueError(f"size {name}={value!r} is not allowed for model {self.name!r}; choose one of: "
                             f"{', '.join(map(str, choices))}")
        if name in self.positive_sizes and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                                and math.isfinite(value) and value > 0):
            raise ValueError(f"size {name}={value!r} must be positive (model {self.name!r})")
        return value

    def instantiate(self, preset: str = "small", data: Optional[Mapping[str, Any]] = None, **overrides) -> nn.Module:
        """Build the model and resolve its paper placement onto it (`paper_activation_scope`)."""
        kwargs = self.sizes(preset, overrides)
        if data:
            kwargs.update({k: data[k] for k in self.data_args if k in data})
        model = self.build(**kwargs)
        if not isinstance(model, nn.Module):
            raise ModelPluginError(f"model {self.name!r}: build() returned {type(model).__name__}, expected a "
                                   f"torch.nn.Module")
        paths = placement_paths(model, self.paper_placement, self.name)  # in the user's own module paths
        if self.family == "atomistic" and takes_dense_layout(model):
            model = DenseInput(model)  # written for one molecule's [B, N, 3] frames: fed from the graph
            paths = tuple("model" if not p else f"model.{p}" for p in paths)
        model.paper_activation_scope = paths
        model.activation_types = tuple(self.activation_types)
        return model


def as_written(model: nn.Module) -> nn.Module:
    """The plug-in's own module (inside a DenseInput), with the placement in its own paths."""
    if not getattr(model, "dense_layout", False):
        return model
    inner = model.model
    inner.paper_activation_scope = tuple(p[len("model."):] if p.startswith("model.") else "" for p in
                                         model.paper_activation_scope)
    inner.activation_types = model.activation_types
    return inner


def takes_dense_layout(model: nn.Module) -> bool:
    """Whether a model's forward takes the dense layout of one molecule, (positions [B, N, 3], numbers [N]),
    as plug-ins written before the graph layout do, instead of one AtomicGraph."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return len(positional) == 2


class DenseInput(nn.Module):
    """A plug-in written for the dense layout, `forward(positions [B, N, 3], numbers [N]) -> E [B]`, on the
    graph layout: a batch of one molecule's frames (the only data that layout can hold; the task refuses
    anything else) comes back as [B, N, 3] positions — a view, so forces still flow to the graph's atoms."""

    dense_layout = True

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.cutoff = getattr(model, "cutoff", None)

    def forward(self, graph) -> torch.Tensor:
        b = graph.n_structures
        n = graph.positions.shape[0] // b
        return self.model(graph.positions.view(b, n, 3), graph.numbers[:n])


def placement_paths(model: nn.Module, patterns, name: str = "") -> tuple[str, ...]:
    """Submodule paths matching the placement patterns; a pattern matching nothing is an error."""
    names = [n for n, _ in model.named_modules()]
    out: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ModelPluginError(f"model {name!r}: paper_placement {pattern!r} matches no submodule; submodules "
                                   f"are e.g. {', '.join(repr(n) for n in names[:8])}")
        out += [h for h in hits if h not in out]
    # a wildcard also matches the submodules of a match: keep the outermost, so nothing is swapped twice
    return tuple(p for p in out if not any(q != p and (q == "" or p.startswith(q + ".")) for q in out))


_cache: dict[str, ModelSpec] = {}


def is_plugin(name: str) -> bool:
    """Whether `name` is a dotted path `module:attr` (not a built-in or entry-point name)."""
    return ":" in name


def _import_target(name: str, target: str, how: str):
    module_name, _, attr = target.partition(":")
    if not module_name or not attr or not re.fullmatch(r"[A-Za-z_][\w.]*", module_name) \
            or not re.fullmatch(r"[A-Za-z_][\w.]*", attr):
        raise ModelPluginError(f"model {name!r}: expected a dotted path package.module:attribute (no file paths; "
                               f"put the module's folder on PYTHONPATH or install it)")
    cwd = os.getcwd()
    if not any(p in ("", ".", cwd) for p in sys.path):  # as `python -m` (and uvicorn) do: the working
        sys.path.append(cwd)                             # directory is searched too, after everything else
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the plug-in's, report it with its cause
        hint = ""
        if isinstance(e, ModuleNotFoundError) and name in OPTIONAL_MODELS:
            hint = f"; install the optional extra: pip install 'dcnn-ablate[{OPTIONAL_MODELS[name][1]}]'"
        elif isinstance(e, ModuleNotFoundError):
            hint = "; is its folder on PYTHONPATH (or the package installed)?"
        raise ModelPluginError(f"model {name!r} ({how}): cannot import module {module_name!r}: "
                               f"{type(e).__name__}: {e}{hint}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelPluginError(f"model {name!r} ({how}): module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _as_spec(name: str, obj, how: str) -> ModelSpec:
    if not isinstance(obj, ModelSpec) and callable(obj) and not isinstance(obj, type):
        try:
            made = obj()
        except TypeError as e:
            raise ModelPluginError(f"model {name!r} ({how}): {obj!r} is not a dcnn.models.ModelSpec, and calling "
                                   f"it with no arguments failed ({e}); point at a ModelSpec (or a function "
                                   f"with no arguments returning one)") from None
        obj = made
    if not isinstance(obj, ModelSpec):
        raise ModelPluginError(f"model {name!r} ({how}): is {type(obj).__name__} ({str(obj)[:60]!s}), not a "
                               f"dcnn.models.ModelSpec "
                               f"(ModelSpec(build, presets, original_activation, paper_placement))")
    problems = obj.problems()
    if problems:
        raise ModelPluginError(f"model {name!r} ({how}): bad ModelSpec: " + "; ".join(problems))
    return dataclasses.replace(obj, name=name, paper_placement=tuple(obj.paper_placement),
                               data_args=tuple(obj.data_args), activation_types=tuple(obj.activation_types),
                               task_args=tuple(obj.task_args), positive_sizes=tuple(obj.positive_sizes))


def entry_points() -> dict:
    """{name: EntryPoint} of installed distributions in the `dcnn_ablate.models` group."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve(name: str, builtins: Mapping[str, ModelSpec]) -> ModelSpec:
    """The spec of a model name (built-in, optional built-in, dotted path, or entry point)."""
    if not isinstance(name, str) or not name:
        raise ModelPluginError(f"model {name!r}: expected a model name")
    if name in builtins:
        return builtins[name]
    if name in _cache:
        return _cache[name]
    if name in OPTIONAL_MODELS:
        spec = _as_spec(name, _import_target(name, OPTIONAL_MODELS[name][0], "optional built-in"), "optional built-in")
    elif is_plugin(name):
        spec = _as_spec(name, _import_target(name, name, "plug-in"), "plug-in")
    else:
        eps = entry_points()
        if name not in eps:
            known = known_names(builtins)
            raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(known)} (or a plug-in "
                                   f"package.module:attribute, or an entry point in {ENTRY_POINT_GROUP!r})")
        try:
            obj = eps[name].load()
        except Exception as e:  # noqa: BLE001
            raise ModelPluginError(f"model {name!r} (entry point {eps[name].value!r} in {ENTRY_POINT_GROUP!r}): "
                                   f"cannot import it: {type(e).__name__}: {e}") from e
        spec = _as_spec(name, obj, f"entry point {eps[name].value}")
    _cache[name] = spec
    return spec


def known_names(builtins: Mapping[str, ModelSpec]) -> list[str]:
    """Every plain model name: built-ins, optional built-ins, installed entry points."""
    return list(builtins) + [n for n in OPTIONAL_MODELS if n not in builtins] + \
        sorted(n for n in entry_points() if n not in builtins and n not in OPTIONAL_MODELS)


def plugin_search_path(name: str) -> Optional[str]:
    """The sys.path folder a dotted-path plug-in was imported from, when Ray workers would not find it
    by themselves (not installed, not under the driver's working directory); else None."""
    if not is_plugin(name):
        return None
    top = name.partition(":")[0].split(".")[0]
    module = sys.modules.get(top)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve().parent
    if Path(file).name == "__init__.py":
        path = path.parent
    text = str(path)
    if "site-packages" in path.parts or "dist-packages" in path.parts:
        return None
    return text


def safe_name(name: str) -> str:
    """A model name fit for a folder name: unchanged when it is one, else sanitised plus a short hash
    (so `a.b:c` and `a.b_c` stay apart)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        return name
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") + "-" + hashlib.sha1(name.encode()).hexdigest()[:6]
