"""Label tables read from real files: ITK-SNAP, Slicer, CSV/TSV and JSON, the table type,
the ITK-SNAP round trip, and finding a table next to a label map (malformed input is in
test_label_tables_errors.py).
"""

from __future__ import annotations

import pytest

from gvsl_app.io.label_tables import (
    TABLE_CANDIDATES,
    LabelTable,
    find_label_table,
    read_label_table,
    write_label_table,
)

# As ITK-SNAP exports it (Segmentation > Export Label Descriptions): its header, the Clear
# Label, then structures with multi-word quoted names, fractional opacity, hidden labels.
ITKSNAP = """\
################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    IDX:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
################################################
    0     0    0    0        0  0  0    "Clear Label"
    1   255    0    0        1  1  1    "Left ventricle"
    2     0  255    0        1  1  1    "Right ventricle"
    5   220  200   70      0.5  1  0    "Myocardium of the LV"
   12    60  110  220        1  0  0    "Pulmonary artery (trunk)"
"""

# The start of Slicer's GenericAnatomyColors, as Slicer writes a colour table.
SLICER = """\
# Color table file /opt/Slicer/share/Slicer-5.6/ColorFiles/GenericAnatomyColors.txt
# 6 values
0 background 0 0 0 0
1 tissue 128 174 128 255
2 bone 241 214 145 255
3 skin 177 122 101 255
4 connective_tissue 111 184 210 255
5 blood 216 101 79 255
"""


def write(tmp_path, name: str, text: str, encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


# ------------------------------------------------------------------------------ reading formats


def test_itksnap_file_with_clear_label_and_quoted_multiword_names(tmp_path):
    path = write(tmp_path, "seg.txt", ITKSNAP)
    table = read_label_table(path)
    assert table.format == "itksnap"
    assert table.source == str(path)
    assert dict(table.names) == {
        0: "Clear Label",
        1: "Left ventricle",
        2: "Right ventricle",
        5: "Myocardium of the LV",
        12: "Pulmonary artery (trunk)",
    }
    assert dict(table.colors) == {
        0: (0, 0, 0),
        1: (255, 0, 0),
        2: (0, 255, 0),
        5: (220, 200, 70),
        12: (60, 110, 220),
    }
    assert table.values == (0, 1, 2, 5, 12)


def test_itksnap_recognised_by_content_without_header_and_with_crlf(tmp_path):
    # No comment header, Windows line endings, a name with a comma and a '#': still ITK-SNAP.
    text = '0 0 0 0 0 0 0 "Clear Label"\r\n3 10 20 30 1 1 1 "Aorta, ascending #1"\r\n'
    table = read_label_table(write(tmp_path, "labels.txt", text))
    assert table.format == "itksnap"
    assert table.names[3] == "Aorta, ascending #1"
    assert table.colors[3] == (10, 20, 30)


def test_slicer_ctbl_keeps_background_and_underscored_names(tmp_path):
    table = read_label_table(write(tmp_path, "GenericAnatomyColors.ctbl", SLICER))
    assert table.format == "slicer"
    assert table.names[0] == "background"
    assert table.colors[0] == (0, 0, 0)
    assert table.names[4] == "connective_tissue"
    assert table.colors[5] == (216, 101, 79)
    assert table.values == (0, 1, 2, 3, 4, 5)


def test_slicer_txt_is_told_apart_from_itksnap_by_content(tmp_path):
    table = read_label_table(write(tmp_path, "colors.txt", SLICER))
    assert table.format == "slicer"
    assert table.names[2] == "bone"
    # Without Slicer's header comment too, and with the optional opacity left out.
    bare = "0 Background 0 0 0 0\n7 left_atrium 240 150 60\n"
    table = read_label_table(write(tmp_path, "bare.txt", bare))
    assert table.format == "slicer"
    assert dict(table.names) == {0: "Background", 7: "left_atrium"}
    assert table.colors[7] == (240, 150, 60)


def test_csv_with_rgb_columns_bom_comments_and_quoted_name(tmp_path):
    text = (
        "# exported from the annotation tool\n"
        "Value,Name,R,G,B,A\n"
        "0,background,0,0,0,0\n"
        '1,"Left ventricle, blood pool",220,60,60,255\n'
        "\n"
        "2,RV,,,,\n"  # no colour given: allowed
    )
    path = tmp_path / "seg.csv"
    path.write_text(text, encoding="utf-8-sig")  # Excel's BOM
    table = read_label_table(path)
    assert table.format == "csv"
    assert dict(table.names) == {0: "background", 1: "Left ventricle, blood pool", 2: "RV"}
    assert dict(table.colors) == {0: (0, 0, 0), 1: (220, 60, 60)}


@pytest.mark.parametrize(
    ("header", "rows"),
    [
        ("label,name,color", ["1,LV,#dc3c3c", "2,RV,60 110 220"]),
        ("value;label;colour", ["1;LV;#DC3C3C", "2;RV;(60, 110, 220)"]),  # label is the name here
        ("LabelValue,Name,Color_R,Color_G,Color_B,Color_A", ["1,LV,220,60,60,255", "2,RV,60,110,220,255"]),
        ("id,structure,red,green,blue", ["1,LV,220,60,60", "2.0,RV,60,110,220"]),
    ],
)
def test_csv_header_variants(tmp_path, header, rows):
    table = read_label_table(write(tmp_path, "t.csv", "\n".join([header, *rows]) + "\n"))
    assert dict(table.names) == {1: "LV", 2: "RV"}
    assert dict(table.colors) == {1: (220, 60, 60), 2: (60, 110, 220)}


def test_bids_dseg_tsv(tmp_path):
    text = (
        "index\tname\tabbreviation\tcolor\n"
        "0\tBackground\tBG\tn/a\n"
        "1\tGray Matter\tGM\t#808080\n"
        "2\tWhite Matter\tWM\t#ffffff\n"
    )
    table = read_label_table(write(tmp_path, "sub-01_dseg.tsv", text))
    assert dict(table.names) == {0: "Background", 1: "Gray Matter", 2: "White Matter"}
    assert dict(table.colors) == {1: (128, 128, 128), 2: (255, 255, 255)}


def test_json_plain_names(tmp_path):
    table = read_label_table(write(tmp_path, "seg.json", '{"0": "background", "1": "LV", "7": "Pulmonary artery"}'))
    assert table.format == "json"
    assert dict(table.names) == {0: "background", 1: "LV", 7: "Pulmonary artery"}
    assert dict(table.colors) == {}
    # A label without a colour still gets a fixed one, different from its neighbours'.
    assert table.color_of(0) == (0, 0, 0)
    assert table.color_of(1) != table.color_of(7)
    assert table.color_of(1) == LabelTable({1: "x"}).color_of(1)


def test_json_objects_by_value(tmp_path):
    text = (
        "{\n"
        '  "1": {"name": "LV", "color": [220, 60, 60]},\n'
        '  "2": {"name": "RV", "colour": "#3c6edc"},\n'
        '  "3": {"name": "LA"}\n'
        "}\n"
    )
    table = read_label_table(write(tmp_path, "seg.json", text))
    assert dict(table.names) == {1: "LV", 2: "RV", 3: "LA"}
    assert dict(table.colors) == {1: (220, 60, 60), 2: (60, 110, 220)}


def test_json_list_of_objects(tmp_path):
    text = (
        '[{"value": 1, "name": "LV", "color": "#ff0000"}, {"value": 0, "name": "Clear Label", "color": [0, 0, 0, 0]}]'
    )
    table = read_label_table(write(tmp_path, "labels.json", text))
    assert dict(table.names) == {0: "Clear Label", 1: "LV"}
    assert dict(table.colors) == {0: (0, 0, 0), 1: (255, 0, 0)}
    assert table.values == (0, 1)  # sorted, whatever the file's order


def test_json_dataset_json_labels_of_msd_and_nnunet_v2(tmp_path):
    msd = (
        '{"name": "Heart", "modality": {"0": "MRI"},\n'
        ' "labels": {"0": "background", "1": "left atrium"},\n'
        ' "numTraining": 20}'
    )
    table = read_label_table(write(tmp_path, "dataset.json", msd))
    assert dict(table.names) == {0: "background", 1: "left atrium"}
    v2 = '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2}, "numTraining": 3}'
    table = read_label_table(write(tmp_path, "v2.json", v2))
    assert dict(table.names) == {0: "background", 1: "liver", 2: "tumour"}


def test_unknown_ending_is_recognised_by_content(tmp_path):
    assert read_label_table(write(tmp_path, "a.lut", SLICER)).format == "slicer"
    assert read_label_table(write(tmp_path, "b.label", ITKSNAP)).format == "itksnap"
    assert read_label_table(write(tmp_path, "c.dat", '{"4": "RA"}')).names == {4: "RA"}
    assert read_label_table(write(tmp_path, "d", "value,name\n6,Aorta\n")).names == {6: "Aorta"}


def test_repeated_identical_entry_is_accepted(tmp_path):
    text = '1 255 0 0 1 1 1 "LV"\n1 255 0 0 1 1 1 "LV"\n'
    assert dict(read_label_table(write(tmp_path, "t.txt", text)).names) == {1: "LV"}


def test_latin1_itksnap_names(tmp_path):
    path = write(
        tmp_path,
        "t.txt",
        '1 255 0 0 1 1 1 "Ventricule gauche (cœur)"\n2 0 0 255 1 1 1 "Oreillette droite é"\n',
        "utf-8",
    )
    assert read_label_table(path).names[2] == "Oreillette droite é"
    path.write_bytes('2 0 0 255 1 1 1 "Oreillette droite é"\n'.encode("latin-1"))
    assert read_label_table(path).names[2] == "Oreillette droite é"


# ------------------------------------------------------------------------------ the table type


def test_table_is_read_only_and_comparable():
    table = LabelTable({2: "RV", 1: "LV"}, {1: (220, 60, 60)}, "x", "json")
    with pytest.raises(TypeError):
        table.names[3] = "LA"  # type: ignore[index]
    assert list(table.names) == [1, 2]
    assert table == LabelTable({1: "LV", 2: "RV"}, {1: (220, 60, 60)}, "x", "json")
    assert hash(table) == hash(LabelTable({1: "LV", 2: "RV"}, {1: (220, 60, 60)}, "x", "json"))
    assert table.name_of(9) == "Label 9"


# ------------------------------------------------------------------------------ ITK-SNAP writing


def test_itksnap_round_trip(tmp_path):
    table = read_label_table(write(tmp_path, "in.txt", ITKSNAP))
    out = write_label_table(table, tmp_path / "out.txt")
    again = read_label_table(out)
    assert dict(again.names) == dict(table.names)
    assert dict(again.colors) == dict(table.colors)
    text = out.read_text()
    # ITK-SNAP's own layout: Clear Label transparent and hidden, the others shown.
    assert '    0     0    0    0        0  0  0    "Clear Label"' in text.splitlines()
    assert '    1   255    0    0        1  1  1    "Left ventricle"' in text.splitlines()
    assert text.startswith("################################################\n# ITK-SnAP Label Description File")


def test_write_from_other_formats_fills_colours_and_keeps_unicode(tmp_path):
    table = read_label_table(
        write(tmp_path, "seg.json", '{"1": "Ventricule gauche", "2": "Aorte (crosse)", "300": "Vaisseau"}')
    )
    again = read_label_table(write_label_table(table, tmp_path / "seg.txt"))
    assert dict(again.names) == {1: "Ventricule gauche", 2: "Aorte (crosse)", 300: "Vaisseau"}
    assert dict(again.colors) == {v: table.color_of(v) for v in (1, 2, 300)}
    assert len(set(again.colors.values())) == 3


# ------------------------------------------------------------------------------ finding


def test_find_label_table_stem_of_nii_gz_and_none(tmp_path):
    seg = tmp_path / "seg.nii.gz"
    seg.write_bytes(b"")
    assert find_label_table(seg) is None
    write(tmp_path, "seg.nii.txt", ITKSNAP)  # the stem is "seg", not "seg.nii"
    write(tmp_path, "other.txt", ITKSNAP)
    assert find_label_table(seg) is None
    write(tmp_path, "seg.json", '{"1": "LV"}')
    assert find_label_table(seg) == tmp_path / "seg.json"
    (tmp_path / "seg.txt").mkdir()  # a folder is no table
    assert find_label_table(seg) == tmp_path / "seg.json"


def test_find_label_table_precedence_is_the_documented_order(tmp_path):
    seg = tmp_path / "case_001.mha"
    seg.write_bytes(b"")
    files = [tmp_path / p.format(stem="case_001") for p in TABLE_CANDIDATES]
    assert [f.name for f in files] == [
        "case_001.txt",
        "case_001.ctbl",
        "case_001_ColorTable.ctbl",
        "case_001.csv",
        "case_001.tsv",
        "case_001.json",
        "labels.txt",
        "label_descriptions.txt",
        "colors.ctbl",
        "labels.csv",
        "labels.json",
    ]
    for f in files:
        f.write_text("x")
    # Remove the winner one at a time: each time the next one in the list is found.
    for k, f in enumerate(files):
        assert find_label_table(seg) == f, k
        f.unlink()
    assert find_label_table(seg) is None


def test_found_table_reads(tmp_path):
    seg = tmp_path / "Segmentation-label.nrrd"
    seg.write_bytes(b"")
    write(tmp_path, "Segmentation-label_ColorTable.ctbl", SLICER)
    write(tmp_path, "labels.json", '{"1": "LV"}')
    found = find_label_table(str(seg))
    assert found == tmp_path / "Segmentation-label_ColorTable.ctbl"
    assert read_label_table(found).names[1] == "tissue"
