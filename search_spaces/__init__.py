"""Ablation designs as plain data (YAML under studies/), turned into Ray Tune param spaces.

A study is a union of factorial `designs` over the factors (the built-ins activation, denorm, rescale, shift,
init, and any TrainConfig key or model size: search_spaces/factors.py), crossed
with `models`, `datasets` and `seeds`, plus `fixed` TrainConfig keys.  Arms shared by two designs run once.  Users add a
study by writing a YAML file like those in studies/ and passing its path wherever a name is accepted.
"""
from search_spaces.study import (FACTORS, LABEL_KEYS, STUDY_DIR, Arm, Study, get, list_studies,
                                 load_study, trial_name, tuning_space)

__all__ = ["get", "load_study", "list_studies", "tuning_space", "Study", "Arm", "FACTORS",
           "LABEL_KEYS", "STUDY_DIR", "trial_name"]
