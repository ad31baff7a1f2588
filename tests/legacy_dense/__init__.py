"""The dense all-pairs models as they were before the graph layout (issue 17), frozen as references: the
graph models must reproduce their energies and forces in float64 with the same weights (the layouts share
parameter names and shapes, so a state_dict copies over)."""
