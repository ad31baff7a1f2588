"""The study YAML schema, checked field by field before a study is built (issue 8).

Every refusal names the file, the field and the value, and says what would be accepted: a scalar where
a list belongs (`models: schnet`, `seeds: 5`), floats as seeds, a reference that is not a mapping, an
empty list that would silently mean "the defaults", a file that is not UTF-8 or is a folder.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from search_spaces.seed_design import AUTO

STUDY_KEYS = ("description", "reference", "designs", "models", "seeds", "fixed", "datasets", "split_seeds",
              "model_sizes", "peers", "extends")


def read_study_file(path: Path):
    """The parsed YAML of a study file; ValueError naming the file when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--study {path}: is a folder, expected a study YAML file (or a built-in name)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); a study file is UTF-8 YAML") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the study file ({e.strerror or e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_study_data(data, where: str) -> None:
    """Types and shapes of every top-level field (values are checked again when the study is built)."""
    if data is None:
        raise ValueError(f"{where}: empty study file; a study is a mapping with keys {list(STUDY_KEYS)}")
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a study is a mapping with keys {list(STUDY_KEYS)}, got "
                         f"{type(data).__name__}")
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ValueError(f"{where}: keys must be names, got {bad_keys}")
    if "description" in data and data["description"] is not None and not isinstance(data["description"], str):
        raise ValueError(f"{where}: description must be text, got {data['description']!r}")
    if "reference" in data and not isinstance(data["reference"], dict):
        raise ValueError(f"{where}: reference must be a mapping like {{activation: irelu, denorm: true, "
                         f"rescale: true}}, got {data['reference']!r}")
    auto_seeds = "seeds" in data and (data["seeds"] == AUTO or (isinstance(data["seeds"], dict)
                                                               and set(data["seeds"]) == {AUTO}))
    for key, example in (("models", "[schnet, cgcnn]"), ("seeds", "[0, 1, 2] (or auto)"),
                         ("datasets", "[ethanol, aspirin]")):
        if key not in data or (key == "seeds" and auto_seeds):
            continue
        value = data[key]
        if not isinstance(value, list):
            raise ValueError(f"{where}: {key} must be a list, e.g. {key}: {example}; got {value!r}")
        if not value:
            raise ValueError(f"{where}: {key} is an empty list; list at least one, or leave {key} out for "
                             f"the default {example}")
    if "models" in data:
        bad = [m for m in data["models"] if not isinstance(m, str)]
        if bad:
            raise ValueError(f"{where}: models must be names, got {bad}")
        dup = sorted({m for m in data["models"] if data["models"].count(m) > 1})
        if dup:
            raise ValueError(f"{where}: models lists {dup} more than once")
    if "datasets" in data:
        bad = [d for d in data["datasets"] if not isinstance(d, str)]
        if bad:
            raise ValueError(f"{where}: datasets must be bundled names or file paths, got {bad}")
    if "split_seeds" in data and data["split_seeds"] not in ("fixed", "vary"):
        raise ValueError(f"{where}: split_seeds must be fixed or vary, got {data['split_seeds']!r}")
    if "seeds" in data and not auto_seeds:
        bad = [s for s in data["seeds"] if not _is_int(s) or s < 0]
        if bad:
            raise ValueError(f"{where}: seeds must be non-negative integers, got {bad} (no rounding: write "
                             f"e.g. seeds: [0, 1, 2])")
        dup = sorted({s for s in data["seeds"] if data["seeds"].count(s) > 1})
        if dup:
            raise ValueError(f"{where}: seeds lists {dup} more than once")
    if "fixed" in data and data["fixed"] is not None and not isinstance(data["fixed"], dict):
        raise ValueError(f"{where}: fixed must be a mapping of TrainConfig keys (e.g. {{epochs: 30}}), "
                         f"got {data['fixed']!r}")
    designs = data.get("designs")
    if isinstance(designs, list):
        for k, design in enumerate(designs):
            if not isinstance(design, dict):
                continue  # load_study names it
            for factor, levels in design.items():
                if isinstance(levels, list) and not levels:
                    raise ValueError(f"{where}: designs[{k}].{factor} is an empty list of levels")
                if isinstance(levels, (dict, type(None))):
                    raise ValueError(f"{where}: designs[{k}].{factor} must be a level or a list of levels, "
                                     f"got {levels!r}")
