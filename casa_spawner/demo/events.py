"""The demo's event file: a small NanoAOD-like ROOT file of dimuon events, written with uproot at start.

A columnar analysis needs columns to read, and coffea's ``NanoAODSchema`` needs them as CMS
NanoAOD lays them out: a TTree ``Events`` with the event's ``run``, ``luminosityBlock`` and
``event`` numbers and, per event, a jagged collection of muons (``nMuon``, ``Muon_pt``,
``Muon_eta``, ``Muon_phi`` in GeV and radians, ``Muon_mass``, ``Muon_charge``).  Written with
``mktree``: uproot >= 5.7 writes RNTuple by default, which ``NanoAODSchema`` refuses.  Most
events are Z -> mu mu decays (a Breit-Wigner at 91.19 GeV, decayed isotropically and boosted),
the rest a falling continuum and events with one or three muons, so the notebook's dimuon-mass
histogram shows a Z peak.  Deterministic for a seed: the tests read the same file directly and
compare the histogram.  numpy, awkward and uproot (the ``[demo]`` extra) are imported when the
file is made, so ``casa demo`` can say what is missing without them.
"""

from __future__ import annotations

import os
from pathlib import Path

Z_MASS, Z_WIDTH = 91.1876, 2.4952
MUON_MASS = 0.10566
RUN, EVENTS_PER_LUMI_BLOCK = 1, 1000
EVENTS_NAME = "events.root"
TREE = "Events"


def _boosted_pair(rng, mass, n):
    """Two massless muons from a parent of ``mass`` (GeV), decayed isotropically and boosted."""
    import numpy as np

    cos_t, phi = rng.uniform(-1, 1, n), rng.uniform(-np.pi, np.pi, n)
    sin_t = np.sqrt(1 - cos_t ** 2)
    p = mass / 2
    d = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=1) * p[:, None]
    parent = np.stack([rng.normal(0, 15, n), rng.normal(0, 15, n), rng.normal(0, 60, n)], axis=1)
    energy = np.sqrt(mass ** 2 + (parent ** 2).sum(1))
    beta = parent / energy[:, None]
    b2 = (beta ** 2).sum(1)
    gamma = 1 / np.sqrt(1 - b2)
    muons = []
    for sign in (1, -1):
        q = sign * d
        bq = (beta * q).sum(1)
        coef = np.where(b2 > 0, (gamma - 1) * bq / np.where(b2 > 0, b2, 1), 0) + gamma * p
        muons.append(q + coef[:, None] * beta)  # the rest-frame energy of each muon is p
    return muons


def _kinematics(vec):
    import numpy as np

    px, py, pz = vec.T
    pt = np.hypot(px, py)
    return pt, np.arcsinh(pz / pt), np.arctan2(py, px)


def make_events(n_events: int = 20000, seed: int = 13):
    """``n_events`` events as an awkward record array of jagged muons (fields pt, eta, phi, mass, charge)."""
    import awkward as ak
    import numpy as np

    rng = np.random.default_rng(seed)
    kind = rng.choice(3, n_events, p=[0.7, 0.2, 0.1])  # Z, continuum pair, one or three muons
    masses = np.where(kind == 0, Z_MASS + Z_WIDTH / 2 * np.tan(np.pi * (rng.uniform(size=n_events) - 0.5)),
                      40 + rng.exponential(30, n_events))
    masses = np.clip(masses, 20, 500)
    (pt1, eta1, phi1), (pt2, eta2, phi2) = map(_kinematics, _boosted_pair(rng, masses, n_events))
    odd = kind == 2
    single = odd & (rng.uniform(size=n_events) < 0.5)  # the second muon was lost
    triple = odd & ~single  # a soft extra muon
    extra = {
        "pt": rng.exponential(10, n_events) + 3, "eta": rng.uniform(-2.4, 2.4, n_events),
        "phi": rng.uniform(-np.pi, np.pi, n_events), "charge": rng.choice([-1, 1], n_events),
    }
    pair = {"pt": (pt1, pt2), "eta": (eta1, eta2), "phi": (phi1, phi2), "charge": (np.ones(n_events), -np.ones(n_events))}
    first = np.ones(n_events, dtype=np.int64)
    second, third = (~single).astype(np.int64), triple.astype(np.int64)
    fields = {}
    for name, dtype in (("pt", np.float32), ("eta", np.float32), ("phi", np.float32), ("charge", np.int32)):
        a, b = pair[name]
        parts = [ak.unflatten(np.asarray(x, dtype)[m.astype(bool)], m) for x, m in ((a, first), (b, second), (extra[name], third))]
        fields[name] = ak.concatenate(parts, axis=1)
    fields["mass"] = ak.full_like(fields["pt"], MUON_MASS)
    return ak.zip({name: fields[name] for name in ("pt", "eta", "phi", "mass", "charge")})


def write_events(path: os.PathLike | str, n_events: int = 20000, seed: int = 13) -> Path:
    """Write the ``Events`` tree (``run``, ``luminosityBlock``, ``event``, ``nMuon``, ``Muon_pt``, ...) to ``path`` (blocking)."""
    import numpy as np
    import uproot

    muons = make_events(n_events, seed)
    number = np.arange(1, n_events + 1, dtype=np.uint64)
    ids = {  # NanoAOD's types: UInt_t run and luminosityBlock, ULong64_t event
        "run": np.full(n_events, RUN, dtype=np.uint32),
        "luminosityBlock": (1 + (number - 1) // EVENTS_PER_LUMI_BLOCK).astype(np.uint32),
        "event": number,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with uproot.recreate(path) as out:
        tree = out.mktree(TREE, {**{k: v.dtype for k, v in ids.items()}, "Muon": muons.type.content},
                          counter_name=lambda name: f"n{name}", field_name=lambda outer, inner: f"{outer}_{inner}")
        tree.extend({**ids, "Muon": muons})
    return path
