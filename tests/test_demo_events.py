"""The demo's event file (``casa_spawner.demo.events``): NanoAOD as coffea's ``NanoAODSchema`` reads it.

A TTree (uproot >= 5.7 writes RNTuple unless told, which ``NanoAODSchema`` refuses) with NanoAOD's
event ids and types, a ``Muon`` collection NanoEvents turns into four-vectors, the same contents for
the same seed (the tests compare histograms of it), other contents for another.
"""

from __future__ import annotations

import warnings

import awkward as ak
import numpy as np
import pytest
import uproot

from casa_spawner.demo.events import MUON_MASS, TREE, make_events, write_events


@pytest.fixture(scope="module")
def events_file(tmp_path_factory):
    return write_events(tmp_path_factory.mktemp("events") / "events.root", n_events=3000, seed=5)


def test_the_file_is_a_nanoaod_like_ttree(events_file):
    with uproot.open(events_file) as f:
        assert f.classnames() == {f"{TREE};1": "TTree"}
        types = {name: branch.typename for name, branch in f[TREE].items()}
        assert f[TREE].num_entries == 3000
    assert types == {"run": "uint32_t", "luminosityBlock": "uint32_t", "event": "uint64_t", "nMuon": "int32_t",
                     "Muon_pt": "float[]", "Muon_eta": "float[]", "Muon_phi": "float[]", "Muon_mass": "float[]",
                     "Muon_charge": "int32_t[]"}


def test_nanoaod_schema_reads_it_into_four_vectors(events_file):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no missing event ids ...
        warnings.filterwarnings("ignore", "Missing cross-reference", RuntimeWarning)  # ... only collections it has not
        events = NanoEventsFactory.from_root({str(events_file): TREE}, schemaclass=NanoAODSchema, mode="eager").events()
    assert ak.to_list(events.event[:3]) == [1, 2, 3] and set(ak.to_list(events.run)) == {1}
    assert ak.to_list(events.luminosityBlock[[0, 999, 1000]]) == [1, 1, 2]
    pairs = events[ak.num(events.Muon) == 2]
    mass = (pairs.Muon[:, 0] + pairs.Muon[:, 1]).mass
    assert len(pairs) > 2000 and 85 < float(np.median(ak.to_numpy(mass))) < 97  # mostly Z -> mu mu
    assert np.allclose(ak.to_numpy(ak.flatten(events.Muon.mass)), MUON_MASS)


def test_the_same_seed_gives_the_same_events_and_another_seed_others():
    same = [make_events(500, seed=7) for _ in range(2)]
    other = make_events(500, seed=8)
    assert ak.to_list(same[0]) == ak.to_list(same[1])
    assert ak.to_list(same[0].pt) != ak.to_list(other.pt)
