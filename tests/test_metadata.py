"""MetaData.csv as people save it: encodings, trailing commas, ragged rows and broken files."""

import pytest

from lungseg.core.errors import DataError
from lungseg.data.metadata import read_metadata, read_raw_metadata, read_raw_metadata_with_notes

HEADER = "id,gender,age,county,ptb,remarks"
ROWS = ["1,Male,35,Shenzhen,1,", "2,Female,40,Montgomery,0,pleural effusion"]


def _write(tmp_path, content: str | bytes, name: str = "MetaData.csv"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _refused(path, columns=("county", "ptb")) -> str:
    """The DataError message reading `path` gives; it always names the file."""
    with pytest.raises(DataError) as caught:
        read_raw_metadata(path, list(columns))
    message = str(caught.value)
    assert str(path) in message
    return message


def test_utf8_with_bom_reads_as_is(tmp_path):
    path = _write(tmp_path, b"\xef\xbb\xbf" + "\r\n".join([HEADER, "1,Male,35,Qu\u00e9bec,1,"]).encode("utf-8"))
    raw = read_raw_metadata_with_notes(path, ["county"])
    assert list(raw.table.columns) == ["id", "county"]  # the BOM does not stick to 'id'
    assert raw.table["county"].tolist() == ["Qu\u00e9bec"]
    assert raw.encoding == "utf-8-sig" and raw.notes == ()


def test_plain_utf8_has_no_note(tmp_path):
    raw = read_raw_metadata_with_notes(_write(tmp_path, "\n".join([HEADER, *ROWS]) + "\n"), ["county"])
    assert raw.encoding == "utf-8" and raw.notes == ()


def test_cp1252_from_excel_is_read_with_a_note(tmp_path):
    rows = ["1,Male,35,Shenzhen,1,", "2,Female,40,Montgomery,0,", "3,Male,50,Qu\u00e9bec,0,caf\u00e9 \u2013 ok"]
    text = "\r\n".join([HEADER, *rows])  # Excel writes CRLF
    path = _write(tmp_path, text.encode("cp1252"))
    raw = read_raw_metadata_with_notes(path, ["county", "remarks"])
    assert raw.table["county"].tolist() == ["Shenzhen", "Montgomery", "Qu\u00e9bec"]
    assert raw.table["remarks"].tolist() == ["", "", "caf\u00e9 \u2013 ok"]  # 0x96 is cp1252's en dash
    assert raw.encoding == "cp1252"
    (note,) = raw.notes
    assert str(path) in note and "cp1252" in note and "line 4" in note and "0xE9" in note


def test_bytes_cp1252_leaves_undefined_are_read_as_latin1(tmp_path):
    path = _write(tmp_path, b"id,county\n1,Qu\xe9bec\x81\n")
    raw = read_raw_metadata_with_notes(path, ["county"])
    assert raw.table["county"].tolist() == ["Qu\u00e9bec\x81"]
    assert "Latin-1" in raw.notes[0]


def test_read_raw_metadata_keeps_returning_only_the_table(tmp_path):
    path = _write(tmp_path, "\n".join([HEADER, *ROWS]) + "\n")
    table = read_raw_metadata(path, ["county", "ptb"])
    assert list(table.columns) == ["id", "county", "ptb"]  # gender, age, remarks are not carried
    assert table.to_dict("list") == {"id": ["1", "2"], "county": ["Shenzhen", "Montgomery"], "ptb": ["1", "0"]}


@pytest.mark.parametrize("lines", [
    [HEADER, ROWS[0] + ",", ROWS[1]],                          # trailing comma on some rows
    [HEADER + ",", ROWS[0] + ",", ROWS[1] + ","],              # on every row, header included
    [HEADER, ROWS[0] + ",", ROWS[1] + ",,"],                   # on the data rows only
    [HEADER + ",", ROWS[0], ROWS[1]],                          # on the header only
], ids=["some-rows", "every-row", "data-rows", "header-only"])
def test_trailing_commas_are_dropped(tmp_path, lines):
    path = _write(tmp_path, "\n".join(lines) + "\n")
    table = read_metadata(path, ["1", "2"], ["county", "ptb", "remarks"])
    assert table["county"].tolist() == ["Shenzhen", "Montgomery"]
    assert table["ptb"].tolist() == ["1", "0"]
    assert table["remarks"].tolist() == ["", "pleural effusion"]


def test_quoted_commas_blank_rows_and_comma_only_rows_are_fine(tmp_path):
    text = f'{HEADER},\n\n1,"Male,",35,"Shenzhen, Guangdong",1,"a, b",\n,,,,,,\n2,Female,40,Montgomery,0,"two\nlines"\n'
    table = read_raw_metadata(_write(tmp_path, text), ["county", "remarks"])
    assert table["county"].tolist() == ["Shenzhen, Guangdong", "Montgomery"]
    assert table["remarks"].tolist() == ["a, b", "two\nlines"]


def test_extra_value_is_refused_naming_the_line(tmp_path):
    path = _write(tmp_path, "\n".join([HEADER, *ROWS, "3,Male,50,Shenzhen, Guangdong,0,old scar"]) + "\n")
    message = _refused(path)
    assert f"{path}, line 4: 7 fields, but the header has 6 (a comma inside a value must be quoted)" in message


def test_too_few_fields_are_refused_naming_the_line(tmp_path):
    path = _write(tmp_path, "\n".join([HEADER, "", *ROWS, "3,Male,50"]) + "\n")  # a blank line still counts
    assert f"{path}, line 5: 3 fields, but the header has 6" in _refused(path)


def test_an_open_quote_is_pointed_at(tmp_path):
    path = _write(tmp_path, "\n".join([HEADER, '1,"Male,35,Shenzhen,1,', ROWS[1]]) + "\n")
    message = _refused(path)
    assert "line 2:" in message and "quote left open" in message


def test_empty_file_is_refused(tmp_path):
    path = _write(tmp_path, "")
    assert "the file is empty; expected a header line such as 'id,county,ptb'" in _refused(path)
    assert "the file is empty" in _refused(_write(tmp_path, "\n \n,,,\n", "blank.csv"))


def test_header_only_is_refused(tmp_path):
    assert "only a header, no data rows" in _refused(_write(tmp_path, HEADER + "\n"))


def test_header_without_id_column_is_refused(tmp_path):
    path = _write(tmp_path, "patient,county,ptb\n1,Shenzhen,0\n")
    assert "missing column(s) ['id']; it has ['patient', 'county', 'ptb']" in _refused(path)


def test_duplicate_ids_are_refused(tmp_path):
    path = _write(tmp_path, "id,county,ptb\n1,Shenzhen,0\n2,Montgomery,1\n1 ,Shenzhen,1\n")
    assert "id(s) listed more than once: ['1']" in _refused(path)


def test_every_row_with_a_trailing_comma_no_longer_looks_like_duplicate_blank_ids(tmp_path):
    path = _write(tmp_path, "\n".join([HEADER, ROWS[0] + ",", "2,Female,40,Montgomery,0,,"]) + "\n")
    assert read_raw_metadata(path, ["county"])["id"].tolist() == ["1", "2"]


def test_blank_id_is_refused_naming_the_line(tmp_path):
    path = _write(tmp_path, "id,county,ptb\n1,Shenzhen,0\n ,Montgomery,1\n")
    assert f"{path}, line 3: the id is empty" in _refused(path)


def test_a_column_named_twice_is_refused(tmp_path):
    path = _write(tmp_path, "id,county,ptb,county\n1,Shenzhen,0,x\n")
    assert f"{path}, line 1: column(s) ['county'] appear more than once" in _refused(path)


def test_binary_bytes_are_a_data_error(tmp_path):
    path = _write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    assert "holds NUL bytes" in _refused(path)


def test_missing_file_is_a_data_error(tmp_path):
    assert "cannot be read" in _refused(tmp_path / "MetaData.csv")


def test_utf16_with_bom_is_read(tmp_path):
    path = _write(tmp_path, "\r\n".join([HEADER, "1,Male,35,Qu\u00e9bec,1,"]).encode("utf-16"))
    raw = read_raw_metadata_with_notes(path, ["county"])
    assert raw.table["county"].tolist() == ["Qu\u00e9bec"] and raw.encoding == "utf-16"
