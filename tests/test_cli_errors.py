"""A new user's mistakes end in one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from luna_cli.main import main


@pytest.fixture
def cli_home(indexed_home, sample_library):
    return indexed_home, str(sample_library.images[0].path)


def run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip()


def test_query_image_mistakes(cli_home, tmp_path, capsys):
    home, image = cli_home
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 10_000)).save(bomb)  # 120 MP, a few KB on disk
    code, err = run(capsys, "search", str(bomb), "--home", str(home.root))
    assert code == 2 and "decompression-bomb" in err and str(bomb) in err
    huge = tmp_path / "huge.png"
    # past twice Pillow's own limit: Pillow refuses it first
    Image.new("1", (20_000, 10_000)).save(huge)
    code, err = run(capsys, "search", str(huge), "--home", str(home.root))
    assert (
        code == 2
        and "100 MP bound" in err
        and "Pillow" not in err
        and "DecompressionBomb" not in err
    )
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    code, err = run(capsys, "search", str(fifo), "--home", str(home.root))
    assert code == 2 and "not a regular file" in err
    code, err = run(capsys, "search", image, "--home", str(home.root), "--box", "-10,-10,50,50")
    assert code == 2 and "outside" in err


def test_home_mistakes_create_nothing(cli_home, tmp_path, capsys):
    _, image = cli_home
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for command in (["search", image], ["status"], ["ingest", str(tmp_path)]):
        code, err = run(capsys, *command, "--home", str(a_file))
        assert code == 2 and "is a file" in err, command
    typo = tmp_path / "hoem"
    for command in (
        ["search", image],
        ["status"],
        ["projector", "list"],
        [
            "condition",
            image,
            "--projector",
            "models:/luna-projector@champion",
            "--out",
            str(tmp_path / "o"),
        ],
    ):
        code, err = run(capsys, *command, "--home", str(typo))
        assert code == 3 and "no Luna home" in err, command
    assert not typo.exists(), "a mistyped --home creates nothing"


def test_condition_output_and_setting_mistakes(cli_home, tmp_path, capsys):
    home, image = cli_home
    base = ["condition", image, "--home", str(home.root)]
    code, err = run(capsys, *base, "--out", str(tmp_path))
    assert code == 2 and "is a folder" in err
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    code, err = run(capsys, *base, "--out", str(blocked / "c.safetensors"))
    assert code == 2 and "cannot write" in err
    code, err = run(capsys, *base, "--out", str(tmp_path / "c.safetensors"), "--temperature", "nan")
    assert code == 2 and "temperature" in err and not (tmp_path / "c.safetensors").exists()
    code, err = run(capsys, *base, "--out", str(tmp_path / "c.safetensors"), "--device", "cuda")
    assert code == 2 and "CUDA" in err
    code, err = run(
        capsys,
        *base,
        "--out",
        str(tmp_path / "c.safetensors"),
        "--projector",
        "models:/luna-projector@champion",
        "--mode",
        "blend",
        "--prompt",
        "a cat",
        "--alpha",
        "3",
    )
    assert code == 2 and "alpha" in err


def test_demo_checks_the_profile_before_writing_to_the_home(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "luna.toml").write_text('[models]\nprofile = "sdxl"\n')
    code, err = run(capsys, "demo", "--home", str(home), "--images", "4")
    assert code == 2 and "'sdxl' model profile" in err
    assert "library" not in (home / "luna.toml").read_text(), "no root recorded before the refusal"
    assert not (home / "sample_library").exists()


def test_mistakes_that_ended_in_a_traceback_end_in_one_line(cli_home, tmp_path, capsys):
    home, image = cli_home
    folder = tmp_path / "renders"
    folder.mkdir()
    for command in (
        ["search", str(folder)],
        ["condition", str(folder), "--out", str(tmp_path / "c.safetensors")],
    ):
        code, err = run(capsys, *command, "--home", str(home.root))
        assert code == 2 and "not a regular file" in err and str(folder) in err, command
    code, err = run(
        capsys, "condition", image, "--home", str(home.root), "--out", "/proc/luna.safetensors"
    )
    assert code == 2 and "cannot write /proc/luna.safetensors" in err
    code, err = run(
        capsys, "condition", image, "--server", "notaurl", "--out", str(tmp_path / "c.safetensors")
    )
    assert code == 2 and "is not a URL" in err
    code, err = run(capsys, "search", str(folder), "--server", "http://127.0.0.1:1")
    assert code == 2 and "is a folder" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["ingest", "/tmp", "--workers", "-1"], "--workers: -1 is out of range"),
        (["ingest", "/tmp", "--max-pixels", "0"], "--max-pixels: 0 is too small"),
        (["serve", "--port", "70000"], "--port: 70000 is out of range"),
        (["demo", "--images", "0"], "--images: 0 is too small"),
    ],
)
def test_counts_out_of_range_are_refused_by_the_parser(capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and needle in capsys.readouterr().err
