"""Detections from any detector: each format round-trips to the same boxes and masks, bad input is
one clear error, and the detailer pastes back the mask, not the box."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from luna_core.ask.boxes import Box
from luna_core.metadata.record import Lora
from luna_core.refine.detections import DetectionsError, read_detections, rle_counts

SIZE = (120, 90)  # width, height


def _disc(cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[: SIZE[1], : SIZE[0]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _runs(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, background first."""
    flat = mask.T.reshape(-1)
    runs, current, length = [], False, 0
    for value in flat:
        if value != current:
            runs.append(length)
            current, length = value, 0
        length += 1
    return runs + [length]


def _compressed(counts: list[int]) -> str:
    """COCO's compressed RLE string, written from its definition (the reader is tested against
    it)."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def _bounds(mask: np.ndarray) -> Box:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return Box(int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def test_compressed_rle_reads_back_its_counts():
    counts = [5, 3, 200, 17, 1, 4000, 2, 0, 9]
    assert rle_counts(_compressed(counts)) == counts


def test_coco_bbox_polygon_and_both_rle_forms_round_trip(tmp_path: Path):
    disc, square = _disc(40, 40, 15), np.zeros((SIZE[1], SIZE[0]), bool)
    square[10:30, 80:110] = True
    polygon = [[70.0, 50.0, 110.0, 50.0, 110.0, 85.0, 70.0, 85.0]]
    drawn = Image.new("1", SIZE, 0)
    ImageDraw.Draw(drawn).polygon([(70, 50), (110, 50), (110, 85), (70, 85)], fill=1, outline=1)
    coco = {
        "images": [{"id": 1, "file_name": "render.png", "width": SIZE[0], "height": SIZE[1]}],
        "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "hand"}],
        "annotations": [
            {
                "image_id": 1,
                "category_id": 1,
                "bbox": [80, 10, 30, 20],
                "prompt": "a smiling face",
                "loras": [
                    "detail_tweaker_xl:0.8",
                    {"name": "film_grain_style.safetensors", "weight": 0.5},
                ],
            },
            {"image_id": 1, "category_id": 2, "segmentation": polygon, "bbox": [70, 50, 40, 35]},
            {
                "image_id": 1,
                "category_id": 1,
                "segmentation": {"size": [SIZE[1], SIZE[0]], "counts": _runs(disc)},
            },
            {
                "image_id": 1,
                "category_id": 2,
                "segmentation": {"size": [SIZE[1], SIZE[0]], "counts": _compressed(_runs(disc))},
            },
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    found = read_detections(tmp_path / "coco.json", SIZE, "render.png")
    assert [d.label for d in found] == ["face", "hand", "face", "hand"]
    assert found[0].box == Box(80, 10, 30, 20) and np.array_equal(found[0].mask, square)
    assert found[0].prompt == "a smiling face" and found[1].prompt is None
    assert (
        found[0].loras == (Lora("detail_tweaker_xl", 0.8), Lora("film_grain_style", 0.5))
        and found[1].loras == ()
    )
    assert np.array_equal(found[1].mask, np.asarray(drawn, bool)) and found[1].box == _bounds(
        np.asarray(drawn, bool)
    )
    for d in found[2:]:
        assert np.array_equal(d.mask, disc) and d.box == _bounds(disc)


def test_a_coco_file_of_many_images_is_read_for_the_named_one(tmp_path: Path):
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "dir/b.png"}],
        "annotations": [
            {"image_id": 1, "bbox": [0, 0, 10, 10]},
            {"image_id": 2, "bbox": [5, 5, 20, 20]},
        ],
    }
    (tmp_path / "many.json").write_text(json.dumps(coco))
    assert [d.box for d in read_detections(tmp_path / "many.json", SIZE, "/x/b.png")] == [
        Box(5, 5, 20, 20)
    ]
    with pytest.raises(DetectionsError, match="none is named 'c.png'"):
        read_detections(tmp_path / "many.json", SIZE, "c.png")


def test_yolo_boxes_and_polygons_with_class_names(tmp_path: Path):
    (tmp_path / "classes.txt").write_text("face\nhand\n")
    (tmp_path / "render.txt").write_text(
        "0 0.5 0.5 0.25 0.2\n# a comment\n1 0.1 0.1 0.4 0.1 0.4 0.5 0.1 0.5\n"
    )
    box, polygon = read_detections(tmp_path / "render.txt", SIZE)
    assert (box.label, box.box) == ("face", Box(45, 36, 30, 18)) and box.mask.sum() == 30 * 18
    drawn = Image.new("1", SIZE, 0)
    ImageDraw.Draw(drawn).polygon([(12, 9), (48, 9), (48, 45), (12, 45)], fill=1, outline=1)
    assert polygon.label == "hand" and np.array_equal(polygon.mask, np.asarray(drawn, bool))


def test_a_label_mask_gives_one_detection_per_connected_component(tmp_path: Path):
    labels = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    labels[5:15, 5:25] = 3
    labels[60:80, 90:100] = 3  # the same label, apart: two detections
    labels[30:50, 40:70] = 7
    Image.fromarray(labels).save(tmp_path / "labels.png")
    found = read_detections(tmp_path / "labels.png", SIZE)
    assert [(d.label, d.box) for d in found] == [
        ("3", Box(5, 5, 20, 10)),
        ("3", Box(90, 60, 10, 20)),
        ("7", Box(40, 30, 30, 20)),
    ]
    assert all(d.mask.sum() == d.box.width * d.box.height for d in found)


def test_a_mask_folder_gives_one_detection_per_file(tmp_path: Path):
    folder = tmp_path / "masks"
    folder.mkdir()
    disc = _disc(60, 45, 20)
    Image.fromarray(disc.astype(np.uint8) * 255).save(folder / "face.png")
    (folder / "notes.txt").write_text("not a mask")
    (found,) = read_detections(folder, SIZE)
    assert found.label == "face" and np.array_equal(found.mask, disc) and found.box == _bounds(disc)


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "outside.json",
            {"annotations": [{"bbox": [100, 80, 50, 50]}]},
            "lies outside the 120x90 image",
        ),
        ("broken.json", "{not json", "not COCO detections JSON"),
        (
            "rle.json",
            {"annotations": [{"segmentation": {"size": [90, 120], "counts": [5, 5]}}]},
            "do not cover",
        ),
        ("yolo.txt", "0 0.5 0.5 1.5 0.2\n", "not normalized"),
        ("short.txt", "0 0.5 0.5\n", "line 1 cannot be read"),
        ("empty.png", None, "empty mask"),
        ("small.png", "small", "the mask is 10x10"),
        ("boxes.csv", "1,2,3,4", "not a detections file"),
        (
            "lora.json",
            {"annotations": [{"bbox": [1, 1, 5, 5], "loras": [{"weight": 1}]}]},
            "detection 0: a LoRA needs a name",
        ),
    ],
)
def test_bad_detections_are_one_clear_error_naming_the_file(tmp_path: Path, name, content, message):
    path = tmp_path / name
    if name == "empty.png":
        folder = tmp_path / "masks"
        folder.mkdir()
        Image.new("L", SIZE, 0).save(folder / "blank.png")
        path = folder
    elif content == "small":
        Image.new("L", (10, 10), 255).save(path)
    elif isinstance(content, dict):
        path.write_text(json.dumps(content))
    else:
        path.write_text(content)
    with pytest.raises(DetectionsError, match=message) as caught:
        read_detections(path, SIZE)
    assert str(path.parent if name == "empty.png" else path) in str(caught.value)


def test_the_detailer_pastes_back_the_mask_not_the_box(
    indexed_home, sample_library, tmp_path, capsys
):
    from luna_cli.main import main

    image = Image.open(sample_library.images[0].path).convert("RGB")
    width, height = image.size
    picture = tmp_path / "picture.png"
    image.save(picture)
    disc = np.zeros((height, width), bool)
    yy, xx = np.mgrid[:height, :width]
    disc[(xx - width // 2) ** 2 + (yy - height // 2) ** 2 <= (width // 5) ** 2] = True
    Image.fromarray(disc.astype(np.uint8) * 255).save(tmp_path / "masks.png")
    out = tmp_path / "out.png"
    assert (
        main(
            [
                "refine",
                str(picture),
                "--detections",
                str(tmp_path / "masks.png"),
                "--steps",
                "4",
                "--strength",
                "0.8",
                "--out",
                str(out),
                "--home",
                str(indexed_home.root),
            ]
        )
        == 0
    )
    assert "1 detections from" in capsys.readouterr().out
    before, after = np.asarray(image, int), np.asarray(Image.open(out).convert("RGB"), int)
    box = _bounds(disc)
    corner = np.zeros_like(disc)  # inside the box, outside the disc (and its few pixels of feather)
    corner[box.y : box.y + 3, box.x : box.x + 3] = True
    assert np.abs(after - before)[corner].max() == 0, (
        "the box's corner, outside the mask, is untouched"
    )
    assert np.abs(after - before)[disc].mean() > 1, "the mask's pixels were refined"

    assert (
        main(
            [
                "refine",
                str(picture),
                "--detections",
                str(tmp_path / "masks.png"),
                "--box",
                "0,0,9,9",
                "--out",
                str(tmp_path / "both.png"),
                "--home",
                str(indexed_home.root),
            ]
        )
        == 2
    )
    assert "not both" in capsys.readouterr().err and not (tmp_path / "both.png").exists()
