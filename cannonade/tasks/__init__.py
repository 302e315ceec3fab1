"""One-shot tasks on a spectra store, behind the ``cannonade`` commands a user runs on their own data.

``match`` (a reference catalogue onto the store's spectra, on the sky), ``training``
(labels joined to spectra by id), ``train`` (a calibrated model file), ``crossval``
(k-fold tables), ``infer`` (one row of labels per stored spectrum, chunked and resumable,
several models with a rule choosing per spectrum), ``configs`` (the documented example
configurations). The staged survey pipeline is :mod:`cannonade.pipeline`; these are its
pieces for a user who brings their own spectra and labels (docs/tutorial.md).
"""
