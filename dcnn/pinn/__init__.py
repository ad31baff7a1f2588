"""Physics-informed networks: PDE problems with reference solutions (problems.py) and the PINN task."""
