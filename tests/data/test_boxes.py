import pytest

from cprfa.data.boxes import boxes_for, read_boxes, read_boxes_and_rolls
from cprfa.errors import InvalidInputError


def test_csv_and_json_layouts(tmp_path):
    csv_file = tmp_path / "boxes.csv"
    csv_file.write_text("image,x0,y0,x1,y1\na.jpg,1,2,30,40\na.jpg,50,60,70,80\nsub/b.png,0,0,10,10\n")
    boxes = read_boxes(csv_file)
    assert boxes_for(boxes, "/some/where/a.jpg") == [(1, 2, 30, 40), (50, 60, 70, 80)]
    assert boxes_for(boxes, "sub/b.png") == [(0, 0, 10, 10)] and boxes_for(boxes, "c.jpg") == []
    mapping = tmp_path / "boxes.json"
    mapping.write_text('{"a.jpg": [[1, 2, 30, 40]]}')
    records = tmp_path / "records.json"
    records.write_text('[{"image": "a.jpg", "box": [1, 2, 30, 40]}]')
    assert read_boxes(mapping) == read_boxes(records) == {"a.jpg": [(1, 2, 30, 40)]}


def test_boxes_may_carry_their_faces_roll(tmp_path):
    csv_file = tmp_path / "boxes.csv"
    csv_file.write_text("image,x0,y0,x1,y1,roll\na.jpg,1,2,30,40,35\na.jpg,50,60,70,80,\n")
    expected = {"a.jpg": [((1, 2, 30, 40), 35.0), ((50, 60, 70, 80), None)]}
    assert read_boxes_and_rolls(csv_file) == expected
    assert read_boxes(csv_file) == {"a.jpg": [(1, 2, 30, 40), (50, 60, 70, 80)]}
    mapping = tmp_path / "boxes.json"
    mapping.write_text('{"a.jpg": [{"box": [1, 2, 30, 40], "roll": 35}, [50, 60, 70, 80]]}')
    records = tmp_path / "records.json"
    records.write_text('[{"image": "a.jpg", "box": [1, 2, 30, 40], "roll": 35}, '
                       '{"image": "a.jpg", "box": [50, 60, 70, 80]}]')
    assert read_boxes_and_rolls(mapping) == read_boxes_and_rolls(records) == expected


@pytest.mark.parametrize("name, content, message", [
    ("b.csv", "name,left\nx,1\n", "header"),
    ("b.csv", "image,x0,y0,x1,y1\na.jpg,1,2,zz,40\n", "four numbers"),
    ("b.csv", "image,x0,y0,x1,y1\na.jpg,10,2,5,40\n", "x1 > x0"),
    ("b.csv", "image,x0,y0,x1,y1\n", "header"),
    ("b.json", "{not json", "not valid JSON"),
    ("b.json", '{"a.jpg": [[1, 2, "nan", 4]]}', "finite"),
    ("b.json", '[1, 2]', "expected"),
    ("b.csv", "image,x0,y0,x1,y1,roll\na.jpg,1,2,30,40,left\n", "roll must be a finite number"),
    ("b.json", '{"a.jpg": [{"box": [1, 2, 30, 40], "roll": "inf"}]}', "entry 1: a roll"),
    ("b.json", '{"a.jpg": [{"roll": 10}]}', "a box must be"),
])
def test_malformed_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        read_boxes(path)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        read_boxes(tmp_path / "nothing.csv")
