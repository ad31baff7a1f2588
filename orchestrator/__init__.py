"""Runs ablation studies of DC-NNs on Ray Tune with MLflow tracking, and builds their reports."""
