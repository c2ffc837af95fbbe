"""Label tables that are refused: every malformed input named by file, line and problem, empty
tables, files that are no table, and tables that cannot be built or written.
"""

from __future__ import annotations

import re

import pytest

from gvsl_app.io.label_tables import LabelTable, LabelTableError, read_label_table, write_label_table


def write(tmp_path, name: str, text: str, encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


# ------------------------------------------------------------------------------ malformed input

ITK_OK = '0 0 0 0 0 0 0 "Clear Label"\n'

BAD = [
    # (file name, content, line, what the message says)
    ("t.txt", ITK_OK + '1.5 255 0 0 1 1 1 "LV"\n', 2, "label value '1.5' is not an integer"),
    ("t.txt", "# c\n" + ITK_OK + 'one 255 0 0 1 1 1 "LV"\n', 3, "label value 'one' is not an integer"),
    ("t.txt", ITK_OK + '-2 255 0 0 1 1 1 "LV"\n', 2, "label value -2 is negative"),
    ("t.txt", ITK_OK + '1 256 0 0 1 1 1 "LV"\n', 2, "red colour component 256 is outside 0-255"),
    (
        "t.txt",
        ITK_OK + '1 255 0 0 1 1 1 "LV"\n\n1 0 0 255 1 1 1 "RV"\n',
        4,
        "given twice with different names: 'LV' (line 2) and 'RV'",
    ),
    ("t.txt", ITK_OK + '1 255 0 0 1 1 1 "LV"\n1 0 0 255 1 1 1 "LV"\n', 3, "given twice with different colours"),
    ("t.txt", ITK_OK + "1 255 0 0 1 1 1 Left ventricle\n", 2, "no quoted name"),
    ("t.txt", ITK_OK + '1 255 0 0 1 1 1 "Left ventricle\n', 2, "no closing double quote"),
    ("t.txt", ITK_OK + '1 255 0 0 1 1 "LV"\n', 2, "expected seven numbers"),
    ("t.txt", ITK_OK + '1 255 0 0 255 1 1 "LV"\n', 2, "opacity '255' is not a number 0-1"),
    ("t.txt", ITK_OK + '1 255 0 0 1 1 1 "LV" extra\n', 2, "unexpected text after the quoted name"),
    ("t.txt", "# notes\nleft ventricle is red\n", 2, "unknown label table format"),
    ("t.txt", "0 background 0 0 0 0\n1 left ventricle 255 0 0 255\n", 2, "write 'left_ventricle'"),
    ("t.ctbl", "0 background 0 0 0 0\n1 LV 255 0 -1 255\n", 2, "blue colour component -1 is outside 0-255"),
    ("t.ctbl", "0 background 0 0 0 0\n1 LV 255 0\n", 2, "expected 'value name R G B A', got 4 fields"),
    ("t.ctbl", "# Color table file x\n2.5 LV 255 0 0 255\n", 2, "label value '2.5' is not an integer"),
    ("t.csv", "value,name,r,g,b\n1,LV,255,0,0\nx,RV,0,0,255\n", 3, "label value 'x' is not an integer"),
    ("t.csv", "value,name,color\n1,LV,#ff00zz\n", 2, "colour '#ff00zz' is not #rrggbb"),
    ("t.csv", "value,name,color\n1,LV,255 0\n", 2, "neither #rrggbb nor three numbers"),
    ("t.csv", "value,name,r,g,b\n1,LV,255,0,300\n", 2, "blue colour component 300 is outside 0-255"),
    ("t.csv", "value,name,r,g,b\n1,LV,255,,0\n", 2, "green colour component '' is not an integer"),
    ("t.csv", "value,name\n1,LV\n1,RV\n", 3, "given twice with different names"),
    ("t.csv", "value,name\n1,\n", 2, "label 1 has an empty name"),
    ("t.csv", "value,name\n-1,LV\n", 2, "label value -1 is negative"),
    ("t.csv", "# c\nvalue,colour\n1,#ff0000\n", 2, "no name column"),
    ("t.csv", "name,r,g,b\nLV,255,0,0\n", 1, "no value column"),
    ("t.csv", "value,name,r,g\n1,LV,255,0\n", 1, "not all three colour columns"),
    ("t.csv", "1,LV,255,0,0\n", 1, "is data, not a header"),
    ("t.csv", "name,label\ncase_001,0\ncase_002,1\ncase_003,0\n", 4, "given twice with different names"),
    ("t.json", '{\n  "1": "LV",\n  "-3": "RV"\n}\n', 3, "label value -3 is negative"),
    ("t.json", '{\n  "1": "LV",\n  "1.5": "RV"\n}\n', 3, "label value '1.5' is not an integer"),
    ("t.json", '{\n  "1": "LV",\n  "1": "RV"\n}\n', 3, "given twice with different names"),
    (
        "t.json",
        '[\n {"value": 1, "name": "LV"},\n {"value": 2, "name": "RV", "color": [0, 0, 999]}\n]',
        3,
        "outside 0-255",
    ),
    ("t.json", '[\n {"value": 1, "name": "LV"},\n {"name": "RV"}\n]', 3, "no 'value'"),
    # An entry spread over lines is named by the line of its key.
    ("t.json", '{\n "1": "LV",\n "2":\n   {"name": "RV", "color": [0, 0, 300]}\n}', 3, "outside 0-255"),
    ("t.json", '{\n "1": "LV",\n "2": 7\n}', 3, "expected a name"),
    ("t.json", '{\n "1": "LV",\n "2": "RV",\n}', 4, "not valid JSON"),
    ("t.json", '{"labels": {"background": 0,\n "whole tumour": [1, 2, 3]}}', 2, "nnU-Net region"),
    ("t.json", '\n\n"LV"', 3, "a JSON str"),
]


@pytest.mark.parametrize(("filename", "content", "line", "fragment"), BAD, ids=[f"{b[0]}-{b[3][:30]}" for b in BAD])
def test_malformed_input_names_file_line_and_problem(tmp_path, filename, content, line, fragment):
    path = write(tmp_path, filename, content)
    with pytest.raises(LabelTableError) as info:
        read_label_table(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(f"{path}, line {line}: "), message
    assert fragment in message, message


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("t.txt", "# ITK-SnAP Label Description File\n# nothing yet\n\n"),
        ("t.ctbl", "# Color table file x\n# 0 values\n"),
        ("t.csv", "value,name,r,g,b\n\n"),
        ("t.csv", "# only a comment\n"),
        ("t.json", "{}"),
        ("t.json", '{"labels": []}'),
        ("t.txt", ""),
    ],
)
def test_empty_tables(tmp_path, filename, content):
    path = write(tmp_path, filename, content)
    with pytest.raises(LabelTableError, match=re.escape(f"{path}: no labels found")):
        read_label_table(path)


def test_not_a_table_at_all(tmp_path):
    procedural = write(tmp_path, "p.txt", "# Color procedural file /x.txt\n# 2 points\n0 0 0 0\n255 1 1 1\n")
    with pytest.raises(LabelTableError, match="procedural colour file"):
        read_label_table(procedural)
    image = tmp_path / "seg.nii.gz"
    image.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00")
    with pytest.raises(LabelTableError, match="binary data"):
        read_label_table(image)
    with pytest.raises(LabelTableError, match="no such file"):
        read_label_table(tmp_path / "missing.txt")
    with pytest.raises(LabelTableError, match="is a folder"):
        read_label_table(tmp_path)


# ------------------------------------------------------------------------------ tables that cannot be built


@pytest.mark.parametrize(
    ("names", "colors", "fragment"),
    [
        ({-1: "x"}, {}, "not a non-negative integer"),
        ({1: "x"}, {1: (256, 0, 0)}, "not three integers 0-255"),
        ({1: "x"}, {2: (1, 2, 3)}, "has a colour but no name"),
    ],
)
def test_table_refuses_bad_contents(names, colors, fragment):
    with pytest.raises(LabelTableError, match=fragment):
        LabelTable(names, colors)


# ------------------------------------------------------------------------------ tables that cannot be written


@pytest.mark.parametrize(
    ("names", "filename", "fragment"),
    [
        ({1: 'the "left" one'}, "t.txt", "double quote"),
        ({1: "two\nlines"}, "t.txt", "line break"),
        ({1: "LV"}, "t.csv", "name it .txt"),
        ({}, "t.txt", "no labels"),
    ],
)
def test_write_refusals(tmp_path, names, filename, fragment):
    with pytest.raises(LabelTableError, match=fragment):
        write_label_table(LabelTable(names), tmp_path / filename)
    assert not (tmp_path / filename).exists()
