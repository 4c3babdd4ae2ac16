import pytest

from bmc import labels as L


def test_all_21_matek_codes_with_names_and_lineages(shared_data):
    # The data set's own abbreviation list is the reference for codes and names.
    rows = (shared_data / "bone-marrow-cells" / "abbreviations.csv").read_text().strip().splitlines()[1:]
    reference = dict(r.split(";") for r in rows)
    assert set(reference) == set(L.BY_CODE)
    assert len(L.CELL_CLASSES) == 21
    for code, name in reference.items():
        assert L.to_code(name) == code  # includes the data set's spelling "Faggott cell"
        assert L.lineage(code) in L.LINEAGES


def test_order_follows_lineage_then_maturation():
    lineages = [c.lineage for c in L.CELL_CLASSES]
    assert [L.LINEAGES.index(x) for x in lineages] == sorted(L.LINEAGES.index(x) for x in lineages)
    codes = [c.code for c in L.CELL_CLASSES]
    assert codes.index("BLA") < codes.index("PMO") < codes.index("MYB") < codes.index("MMZ") < codes.index("NGB") < codes.index("NGS")
    assert codes.index("PEB") < codes.index("EBO")


def test_to_code_accepts_codes_and_names_any_case():
    assert L.to_code("ngs") == "NGS"
    assert L.to_code(" Segmented neutrophil ") == "NGS"
    with pytest.raises(KeyError, match="not one of the 21"):
        L.to_code("neutrophil-ish")


def test_label_maps_for_a_subset_keep_canonical_order():
    id2label, label2id = L.label_maps(["NGS", "BLA", "EBO"])
    assert id2label == {0: "BLA", 1: "NGS", 2: "EBO"}
    assert label2id == {"BLA": 0, "NGS": 1, "EBO": 2}


def test_custom_labels_follow_matek_ones():
    assert L.sort_codes(["zeta", "LYT", "alpha", "BLA"]) == ["BLA", "LYT", "alpha", "zeta"]
    assert L.display_name("BLA") == "Blast (BLA)"
    assert L.display_name("alpha") == "alpha"
