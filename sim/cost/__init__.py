"""Cost models: how long one decoder layer and the per-iteration fixed work take for a batch shape.

`base.CostModel` is the interface; `roofline` the spec-sheet model; `physics` the per-kernel formulas and
GPU constants; `params` and `calibrated` the model fitted by ``calibration/``."""
