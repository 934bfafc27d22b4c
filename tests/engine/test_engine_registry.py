"""Registry: the subjects file, dense indices, CSR arrays, and errors that name the subject."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from engine.registry import RegistryError, load_registry, parse_time_ms

ZONE_IDS = ["330723", "330702", "victim-17", "school-3"]


def zones():
    # load_registry needs only zone_ids and index from a CompiledZones.
    return SimpleNamespace(zone_ids=ZONE_IDS, index={z: i for i, z in enumerate(ZONE_IDS)})


def subject(sid="S-0001", **over):
    s = {"subject_id": sid, "region": "330723", "level": "strict",
         "devices": [{"device_id": f"B-{sid}", "kind": "bracelet"},
                     {"device_id": f"P-{sid}", "kind": "phone"}],
         "inclusion": ["330723"], "exclusion": ["victim-17", "school-3"],
         "leaves": [{"start": 1763600000000, "end": 1763800000000, "zones": ["330702"]}]}
    s.update(over)
    return s


def test_dense_indices_and_csr_arrays():
    doc = {"subjects": [subject("S-1"), subject("S-2", level="lenient", exclusion=[], leaves=[],
                                                  inclusion=["330723", "330702"])]}
    reg = load_registry(doc, zones())
    assert reg.device_ids == ["B-S-1", "P-S-1", "B-S-2", "P-S-2"]
    assert [reg.device_index(d) for d in reg.device_ids] == [0, 1, 2, 3]
    assert reg.device_index("nope") == -1
    assert reg.subject_of(3) == "S-2" and reg.device_region(0) == "330723"
    assert reg.regions == {"330723"}
    a = reg.arrays
    assert a.device_subject.tolist() == [0, 0, 1, 1]
    assert a.device_level.tolist() == [0, 0, 2, 2]
    assert a.incl_off.tolist() == [0, 1, 3] and a.incl_zone.tolist() == [0, 0, 1]
    assert a.excl_off.tolist() == [0, 2, 2] and a.excl_zone.tolist() == [2, 3]
    # Each device of S-1 has its own two exclusion slots; S-2's devices none.
    assert a.device_slot_off.tolist() == [0, 2, 4, 4, 4]
    assert reg.slot_keys() == [("B-S-1", "victim-17"), ("B-S-1", "school-3"),
                               ("P-S-1", "victim-17"), ("P-S-1", "school-3")]
    assert a.leave_off.tolist() == [0, 1, 1]
    assert (a.leave_start_ms.tolist() == [1763600000000]
            and a.leave_end_ms.tolist() == [1763800000000])
    assert a.leave_zone_off.tolist() == [0, 1] and a.leave_zone.tolist() == [1]
    for arr in a:
        assert isinstance(arr, np.ndarray) and arr.flags.c_contiguous


def test_reads_a_file_and_iso_times(tmp_path):
    doc = {"subjects": [subject(leaves=[{"start": "2025-11-20T08:00:00+08:00",
                                         "end": "2025-11-20T00:30:00Z", "zones": ["330702"]}])]}
    path = tmp_path / "subjects.json"
    path.write_text(json.dumps(doc))
    reg = load_registry(path, zones())
    assert reg.arrays.leave_start_ms.tolist() == [1763596800000]
    assert reg.arrays.leave_end_ms.tolist() == [1763598600000]


def test_parse_time_ms():
    assert parse_time_ms(1763600000123, "t") == 1763600000123
    assert parse_time_ms("2025-11-20T01:33:20.123+00:00", "t") == 1763602400123
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_time_ms("2025-11-20T01:33:20", "t")
    with pytest.raises(ValueError, match="not an ISO 8601"):
        parse_time_ms("yesterday", "t")
    with pytest.raises(TypeError, match="epoch ms"):
        parse_time_ms(True, "t")


@pytest.mark.parametrize("doc, match", [
    ({"subjects": [subject("S-1"), subject("S-1")]}, "subject 'S-1': duplicate subject id"),
    ({"subjects": [subject("S-1", inclusion=["nowhere"])]},
     "subject 'S-1': unknown zone id 'nowhere' in inclusion"),
    ({"subjects": [subject("S-1", exclusion=["gone"])]},
     "subject 'S-1': unknown zone id 'gone' in exclusion"),
    ({"subjects": [subject("S-1", leaves=[{"start": 5, "end": 4, "zones": ["330702"]}])]},
     "subject 'S-1': leaves\\[0\\] ends \\(4\\) before it starts \\(5\\)"),
    ({"subjects": [subject("S-1", leaves=[{"start": 1, "end": 4, "zones": ["x"]}])]},
     "subject 'S-1': unknown zone id 'x' in leaves\\[0\\].zones"),
    ({"subjects": [subject("S-1", level="medium")]},
     "subject 'S-1': level 'medium' is not one of strict"),
    ({"subjects": [subject("S-1", devices=[{"device_id": "bad id!"}])]},
     "subject 'S-1': devices\\[0\\].device_id 'bad id!'"),
    ({"subjects": [subject("S-1", devices=[{"device_id": "x" * 65}])]},
     "subject 'S-1': devices\\[0\\]"),
    ({"subjects": [subject("S-1", devices=[{"device_id": "D1", "kind": "watch"}])]},
     "kind 'watch'"),
    ({"subjects": [subject("S-1", devices=[{"device_id": "D1"}]),
                   subject("S-2", devices=[{"device_id": "D1"}])]},
     "subject 'S-2': device 'D1' is listed also on subject 'S-1'"),
    ({"subjects": [subject("S-1", devices=[{"device_id": "D1"}, {"device_id": "D1"}])]},
     "subject 'S-1': device 'D1' is listed twice"),
    ({"subjects": [subject("S-1", devices=[])]},
     "subject 'S-1': 'devices' must be a non-empty list"),
    ({"subjects": [subject("S 1")]}, "subjects\\[0\\].subject_id 'S 1'"),
    ({"people": []}, "expected an object"),
])
def test_errors_name_the_subject(doc, match):
    with pytest.raises(RegistryError, match=match) as info:
        load_registry(doc, zones())
    assert isinstance(info.value, ValueError)


def test_error_carries_subject_and_source(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"subjects": [subject("S-9", level="x")]}))
    with pytest.raises(RegistryError) as info:
        load_registry(path, zones())
    assert info.value.subject_id == "S-9" and info.value.source == str(path)
    assert str(path) in str(info.value)
    path.write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON"):
        load_registry(path, zones())
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "missing.json", zones())
