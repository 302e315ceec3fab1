"""The Cannon core (Wheeler+2020 §3, Nandakumar+2022 §3.1): no I/O beyond model files.

Modules: ``vectorizer`` (terms η(ℓ), derivatives, label scaling), ``checks`` (input
validation), ``training`` (θ and s² per pixel), ``levenberg`` (the batched multi-start
minimiser), ``inference`` (labels, covariances, per-pixel χ²), ``persistence`` (model
files), ``model`` (``CannonModel``, ``InferenceResult``), ``crossval`` (``cross_validate``);
the per-star error calibration and flags (docs/calibration.md): ``calibration``
(``Calibration``, ``fit_calibration``, ``assess``), ``errormodel``, ``extrapolation``,
``quality`` (S/N, missing pixels).
"""
