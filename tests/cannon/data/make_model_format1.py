"""How ``model_format1.npz`` and ``model_format1_check.npz`` were made (kept for the record).

Run ONCE, with the code of commit fa37c9a (before the cannon/ package was split into
checks / persistence / ...), so that ``tests/cannon/test_model_format.py`` checks that a
model file written by that code still loads and predicts the same. Do not regenerate the
files with newer code: that would defeat the test.
"""

import numpy as np

from cannonade import CannonModel
from cannonade.cannon.vectorizer import design_matrix, term_exponents


def main(out="."):
    rng = np.random.default_rng(2024)
    L, P, N = 3, 48, 120
    names = ["teff", "logg", "fe_h"]
    E = term_exponents(L, 2)
    theta = np.zeros((P, len(E)))
    theta[:, 0] = 1 - rng.uniform(0, 0.3, P)
    deg = E.sum(1)
    theta[:, deg == 1] = rng.normal(0, 0.02, (P, L))
    theta[:, deg == 2] = rng.normal(0, 0.003, (P, int((deg == 2).sum())))
    mu, sd = np.array([5000.0, 3.0, -0.2]), np.array([400.0, 0.8, 0.3])

    def spectra(n):
        lab = mu + sd * rng.normal(size=(n, L))
        f = design_matrix((lab - mu) / sd, E) @ theta.T + rng.normal(size=(n, P)) * 0.004
        return lab, f + rng.normal(size=(n, P)) * 0.01, np.full((n, P), 1e4)

    lab, flux, ivar = spectra(N)
    ivar[rng.random(ivar.shape) < 0.02] = 0.0
    wl = np.linspace(5000.0, 5047.0, P)
    censor = np.zeros(P, bool)
    censor[::3] = True
    m = CannonModel(names, order=2, censors={"fe_h": censor}, show_progress=False)
    m.fit(lab, flux, ivar, wavelength=wl)
    m.save(f"{out}/model_format1.npz")
    tl, tf, ti = spectra(4)
    r = m.infer(tf, ti)
    np.savez_compressed(f"{out}/model_format1_check.npz", labels=tl, predict=m.predict(tl), flux=tf, ivar=ti,
                        infer_labels=r.labels, infer_cov=r.cov, infer_chi2=r.chi2)


if __name__ == "__main__":
    main()
