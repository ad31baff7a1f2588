"""`seeds: auto` on Ray Tune: a Searcher that hands Tune one trial at a time, seeds spent only where a
comparison with the reference is still open (orchestrator/sequential.py decides; search_spaces/seed_design.py
holds the settings).

Why a Searcher: the trials join the one running Tune experiment with the same configs, trial folders,
checkpoints and MLflow runs as a fixed study's, Tune's concurrency limit and cluster scheduling apply
unchanged, and the searcher's state is saved with Tune's experiment state, so `--resume` after a kill
continues the design (a trial that finished after the last snapshot is replayed from its final checkpoint and
reported again, as in any study).  There are no synchronous rounds: an arm gets its next seed as soon as its
own comparisons have been looked at and are still open, so a slot never waits for other arms' decisions;
the reference arm runs a seed as soon as any arm needs it (the comparisons are paired by seed).
"""
from __future__ import annotations

import json

import pandas as pd
from ray.tune.search import Searcher

from orchestrator.report_load import mark_divergence, metric_specs
from orchestrator.sequential import design_decisions
from search_spaces import Study

__all__ = ["SequentialSeeds"]

PENDING, DONE = "pending", "done"


class SequentialSeeds(Searcher):
    """Suggests the study's trials in the order the sequential seed design wants them; FINISHED when every
    comparison is decided or at its maximum and no trial is out."""

    def __init__(self, study: Study, extra: dict | None = None, tuned: dict | None = None):
        """`extra`: keys every trial gets (a plug-in's import path); `tuned`: {"model/arm": {key: value}},
        the hyperparameters `--tune-hparams` chose for each cell."""
        super().__init__()
        if study.seed_design is None:
            raise ValueError(f"study {study.name}: SequentialSeeds needs seeds: auto")
        self.design = study.seed_design
        self.reference = study.reference.key
        labels = study.dataset_labels()
        self.configs: dict[str, dict] = {}
        self.cells: list[tuple[str, str, str]] = []  # (data, model, arm), in the study's order
        for cfg in study.trial_configs():
            data = labels[cfg["dataset"]]
            own = (tuned or {}).get(f"{cfg['model']}/{cfg['arm']}", {})
            self.configs[_key(data, cfg["model"], cfg["arm"], cfg["seed"])] = {**cfg, **(extra or {}), **own}
            if (data, cfg["model"], cfg["arm"]) not in self.cells:
                self.cells.append((data, cfg["model"], cfg["arm"]))
        self.status: dict[str, str] = {}  # trial key → pending | done
        self.rows: dict[str, dict] = {}  # trial key → its final result, as the report's trials table reads it
        self.trial_keys: dict[str, str] = {}  # Tune trial id → trial key

    # -- Tune's Searcher interface ------------------------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the design is the search space

    def suggest(self, trial_id: str):
        wanted = self.wanted()
        if not wanted:
            return Searcher.FINISHED if PENDING not in self.status.values() else None
        key = wanted[0]
        self.status[key] = PENDING
        self.trial_keys[trial_id] = key
        return dict(self.configs[key])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        key = self.trial_keys.get(trial_id)
        if key is None:
            return
        data, model, arm, seed = _split(key)
        row = {"data": data, "model": model, "arm": arm, "seed": seed, "identical_to": "",
               "finished": not error and result is not None,
               "diverged": int((result or {}).get("diverged", 0) or 0),
               "stalled": int((result or {}).get("stalled", 0) or 0)}
        row.update({k: v for k, v in (result or {}).items() if isinstance(v, (int, float)) and k not in row})
        self.rows[key] = row
        self.status[key] = DONE

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            # a result's values are numbers (NaN allowed, as JSON's NaN); anything else is kept as its text
            json.dump({"status": self.status, "rows": self.rows, "trial_keys": self.trial_keys}, f, default=str)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.status, self.rows, self.trial_keys = state["status"], state["rows"], state["trial_keys"]

    # -- the design -------------------------------------------------------------------------------------
    def decisions(self) -> dict:
        """{(data, model, arm, metric short): Decision} on the trials finished so far."""
        if not self.rows:
            return {}
        trials = mark_divergence(pd.DataFrame(list(self.rows.values())))
        # every finished trial, errored included, ends the seed's wait; only `ok` ones are compared
        trials["ok"] = trials["ok"] & trials["finished"]
        trials["finished"] = True
        metrics = [(m.short, m.test_key) for m in metric_specs(trials) if m.main]
        return design_decisions(trials, self.reference, metrics, self.design)

    def wanted(self) -> list[str]:
        """Trial keys to run next, the reference's first: the minimum seeds of every cell, then the next seed
        of each arm whose comparisons are all looked at (no seed of it or of the reference out) and one of
        which is still open, up to the maximum."""
        decisions = self.decisions()
        seeds = self.design.seeds
        want: list[str] = []
        for data, model, arm in self.cells:
            want += [_key(data, model, arm, s) for s in seeds[:self.design.min]]
        for data, model, arm in self.cells:
            if arm == self.reference:
                continue
            mine = [s for s in seeds if _key(data, model, arm, s) in self.status]
            if len(mine) < self.design.min or len(mine) >= self.design.max:
                continue
            out = [s for s in mine if self.status[_key(data, model, arm, s)] == PENDING
                   or self.status.get(_key(data, model, self.reference, s)) != DONE]
            if out:
                continue  # a look of this arm is still coming
            kinds = [d.kind for (dd, mm, aa, _), d in decisions.items() if (dd, mm, aa) == (data, model, arm)]
            if kinds and all(k != "open" for k in kinds):
                continue
            nxt = seeds[len(mine)]
            want += [_key(data, model, self.reference, nxt), _key(data, model, arm, nxt)]
        want = [k for k in dict.fromkeys(want) if k not in self.status and k in self.configs]
        return sorted(want, key=lambda k: _split(k)[2] != self.reference)


def _key(data: str, model: str, arm: str, seed: int) -> str:
    return json.dumps([data, model, arm, int(seed)])


def _split(key: str) -> tuple:
    data, model, arm, seed = json.loads(key)
    return data, model, arm, seed

