import pytest

from bmc.labels import BY_CODE, CELL_CLASSES, LINEAGES, display_name, label_maps, lineage, sort_codes, to_code


def test_all_21_matek_codes_with_names_and_lineages(shared_data):
    # The data set's own abbreviation list is the reference for codes and names.
    rows = (shared_data / "bone-marrow-cells" / "abbreviations.csv").read_text().strip().splitlines()[1:]
    reference = dict(r.split(";") for r in rows)
    assert set(reference) == set(BY_CODE)
    assert len(CELL_CLASSES) == 21
    for code, name in reference.items():
        assert to_code(name) == code  # includes the data set's spelling "Faggott cell"
        assert lineage(code) in LINEAGES


def test_order_follows_lineage_then_maturation():
    lineages = [c.lineage for c in CELL_CLASSES]
    assert [LINEAGES.index(x) for x in lineages] == sorted(LINEAGES.index(x) for x in lineages)
    codes = [c.code for c in CELL_CLASSES]
    assert codes.index("BLA") < codes.index("PMO") < codes.index("MYB") < codes.index("MMZ") < codes.index("NGB") < codes.index("NGS")
    assert codes.index("PEB") < codes.index("EBO")


def test_to_code_accepts_codes_and_names_any_case():
    assert to_code("ngs") == "NGS"
    assert to_code(" Segmented neutrophil ") == "NGS"
    with pytest.raises(KeyError, match="not one of the 21"):
        to_code("neutrophil-ish")


def test_label_maps_for_a_subset_keep_canonical_order():
    id2label, label2id = label_maps(["NGS", "BLA", "EBO"])
    assert id2label == {0: "BLA", 1: "NGS", 2: "EBO"}
    assert label2id == {"BLA": 0, "NGS": 1, "EBO": 2}


def test_custom_labels_follow_matek_ones():
    assert sort_codes(["zeta", "LYT", "alpha", "BLA"]) == ["BLA", "LYT", "alpha", "zeta"]
    assert display_name("BLA") == "Blast (BLA)"
    assert display_name("alpha") == "alpha"


def test_count_wording_names_only_the_models_classes():
    from bmc.labels import count_group, me_convention, not_counted_text

    bundled = ["BLA", "PMO", "MYB", "MMZ", "NGB", "NGS", "EOS", "BAS", "EBO", "LYT", "MON", "NIF", "ART"]
    assert count_group("LYT", bundled) == "lymphocytes" and count_group("LYT") == "lymphocytes and plasma cells"
    assert count_group("EOS", ["EOS", "LYT"]) == "eosinophils" and count_group("NGS", bundled) == "granulocytic series"
    assert not_counted_text(bundled) == "cells not identifiable and artefacts"
    assert "smudge" in not_counted_text([*bundled, "KSC"]) and "smudge" not in not_counted_text(bundled)
    me = me_convention(bundled)
    assert "Basophil" in me.split(":")[1] and "Erythroblast" in me and "on neither side: Blast, Lymphocyte, Monocyte" in me
