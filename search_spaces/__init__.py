"""Ablation designs as plain data (YAML under studies/), turned into Ray Tune param spaces.

A study is a union of factorial `designs` over the factors (activation, denorm, rescale), crossed with
`models` and `seeds`, plus `fixed` TrainConfig keys.  Arms shared by two designs run once.  Users add a
study by writing a YAML file like those in studies/ and passing its path wherever a name is accepted.
"""
from search_spaces.study import (DEFAULTS, FACTORS, STUDY_DIR, Arm, Study, get, list_studies,
                                 load_study, tuning_space)

__all__ = ["get", "load_study", "list_studies", "tuning_space", "Study", "Arm", "FACTORS",
           "DEFAULTS", "STUDY_DIR"]
