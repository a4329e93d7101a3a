"""Bad input as a user meets it, one test per case. What each case does (README, "Bad input"):
an error naming the file and the fix, skipped and recorded in bad_images.csv, or accepted (with a
warning where something is left out). Nothing is lost silently."""

from __future__ import annotations

import csv
import errno
import logging
import os
import random
from pathlib import Path

import pytest
from helpers import make_image_tree
from PIL import Image

from hf_classifier.cli.commands import main
from hf_classifier.data.checks import drop_bad_images
from hf_classifier.data.images import decode_image, open_image
from hf_classifier.data.scan import check_image
from hf_classifier.data.schema import DataSourceError
from hf_classifier.data.sources import from_image_folder, from_metadata_csv

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys, command: str) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith(f"hf-classifier {command}: error: ") and "Traceback" not in error
    return error


def photos(folder: Path, names: list[str], size=(24, 20)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (i * 40 % 255, 90, 200)).save(folder / name)
    return folder


def write_csv(path: Path, rows: list[tuple[str, str]], encoding: str = "utf-8") -> Path:
    text = "file_path,family\n" + "".join(f"{p},{label}\n" for p, label in rows)
    path.write_bytes(text.encode(encoding))
    return path


def check_bad(folder_or_files) -> dict[str, str]:
    """{file name: reason} of the check that runs before training."""
    from hf_classifier.data.scan import find_bad_images

    files = [str(p) for p in folder_or_files]
    return {Path(files[i]).name: reason for i, reason in find_bad_images(files, progress=False)}


# ---- CSVs ------------------------------------------------------------------------------------


def test_csv_listing_a_file_twice_with_one_label_keeps_it_once_and_says_so(tmp_path, caplog):
    photos(tmp_path, ["a.jpg", "b.jpg"])
    csv_path = write_csv(tmp_path / "m.csv", [("a.jpg", "ant"), ("b.jpg", "bee"), ("./a.jpg", "ant")])
    with caplog.at_level(logging.WARNING):
        data = from_metadata_csv(csv_path, label_column="family")
    assert sorted(data.splits["train"]["file_path"]) == ["a.jpg", "b.jpg"]
    assert "1 repeated row(s)" in caplog.text and "line(s) 4" in caplog.text


def test_csv_listing_a_file_twice_with_different_labels_is_an_error(tmp_path):
    photos(tmp_path, ["a.jpg", "b.jpg"])
    csv_path = write_csv(tmp_path / "m.csv", [("a.jpg", "ant"), ("b.jpg", "bee"), ("a.jpg", "bee")])
    with pytest.raises(DataSourceError, match=r"'a.jpg' is listed on lines 2, 4 with different 'family'"):
        from_metadata_csv(csv_path, label_column="family")


def inspect_error(csv_path: Path, tmp_path: Path, capsys) -> str:
    """`inspect` on a CSV labelled by `family`: it must fail with one line; that line."""
    argv = ["inspect", "--metadata_csv", str(csv_path), "--label_column", "family"]
    assert main([*argv, "--output_dir", str(tmp_path / "i")]) == 1
    return one_line_error(capsys, "inspect")


def test_csv_path_escaping_the_image_root_is_refused(tmp_path, capsys):
    photos(tmp_path / "data", ["a.jpg"])
    csv_path = write_csv(tmp_path / "data" / "m.csv", [("a.jpg", "ant"), ("../../etc/passwd", "bee")])
    error = inspect_error(csv_path, tmp_path, capsys)
    assert "line(s) 3 points outside the image folder" in error and "'../../etc/passwd'" in error
    assert "--image_root" in error


def test_csv_with_an_empty_label_names_the_line(tmp_path):
    photos(tmp_path, ["a.jpg", "b.jpg"])
    csv_path = write_csv(tmp_path / "m.csv", [("a.jpg", "ant"), ("b.jpg", "")])
    with pytest.raises(DataSourceError, match=r"empty 'family' on line\(s\) 3; label or remove"):
        from_metadata_csv(csv_path, label_column="family")


def test_labels_differing_only_by_case_or_spaces_are_refused(tmp_path):
    photos(tmp_path, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    rows = [("a.jpg", "Apidae"), ("b.jpg", "apidae"), ("c.jpg", "army ants"), ("d.jpg", "army  ants")]
    with pytest.raises(DataSourceError) as error:
        from_metadata_csv(write_csv(tmp_path / "m.csv", rows), label_column="family")
    assert "'Apidae' / 'apidae'" in str(error.value) and "'army  ants' / 'army ants'" in str(error.value)


def test_non_utf8_csv_is_refused_with_the_line_and_the_fix(tmp_path, capsys):
    photos(tmp_path, ["a.jpg", "b.jpg"])
    csv_path = write_csv(tmp_path / "m.csv", [("a.jpg", "ant"), ("b.jpg", "guêpe")], encoding="latin-1")
    error = inspect_error(csv_path, tmp_path, capsys)
    assert "is not UTF-8 text (byte 0xea on line 3)" in error and "CSV UTF-8" in error


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_csv_with_a_byte_order_mark_is_read(tmp_path, encoding):
    photos(tmp_path, ["a.jpg", "b.jpg"])
    csv_path = write_csv(tmp_path / "m.csv", [("a.jpg", "ant"), ("b.jpg", "guêpe")], encoding=encoding)
    assert csv_path.read_bytes()[:2] in (b"\xef\xbb", b"\xff\xfe")
    data = from_metadata_csv(csv_path, label_column="family")  # the BOM is not part of 'file_path'
    assert data.labels == ["ant", "guêpe"] and data.source["image_column"] == "file_path"


def test_unreadable_csv_is_one_line(tmp_path, monkeypatch, capsys):
    csv_path = write_csv(tmp_path / "m.csv", [("a.jpg", "ant")])
    real = Path.read_bytes

    def denied(self):
        if self == csv_path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert main(["inspect", "--metadata_csv", str(csv_path), "--output_dir", str(tmp_path / "i")]) == 1
    assert "cannot be read (permission denied)" in one_line_error(capsys, "inspect")


# ---- files and folders -----------------------------------------------------------------------


def test_directory_named_like_an_image(tmp_path):
    data = photos(
        tmp_path / "data", ["ant/a.jpg", "ant/b.jpg", "bee/c.jpg", "bee/d.jpg", "bee/x.jpg/inside.jpg"]
    )
    (tmp_path / "data" / "bee" / "empty.png").mkdir()
    folder = from_image_folder(data)
    # A folder is never taken for an image; images inside it are images of the class.
    assert sorted(folder.splits["train"]["file_path"]) == [
        "ant/a.jpg",
        "ant/b.jpg",
        "bee/c.jpg",
        "bee/d.jpg",
        "bee/x.jpg/inside.jpg",
    ]
    # Listed in a CSV, it is reported by the image check, with the reason.
    assert check_bad([data / "bee" / "x.jpg"]) == {"x.jpg": "is a directory, not an image file"}


def test_symlink_loops_end_and_are_reported(tmp_path, caplog):
    data = photos(tmp_path / "data", ["ant/a.jpg", "ant/b.jpg", "bee/c.jpg", "bee/d.jpg"])
    (data / "ant" / "again").symlink_to(data / "ant", target_is_directory=True)  # folder loop
    (data / "bee" / "self.jpg").symlink_to(data / "bee" / "self.jpg")  # file loop
    with caplog.at_level(logging.WARNING):
        folder = from_image_folder(data)
    files = folder.splits["train"]["file_path"]
    assert sorted(files) == ["ant/a.jpg", "ant/b.jpg", "bee/c.jpg", "bee/d.jpg", "bee/self.jpg"]
    assert "links to a folder already read" in caplog.text
    assert check_bad([data / "bee" / "self.jpg"]) == {
        "self.jpg": "symbolic link loop (the link points back to itself)"
    }


def test_unreadable_image_is_reported_as_permission_denied(tmp_path, monkeypatch):
    data = photos(tmp_path, ["ok.jpg", "locked.jpg"])
    locked = data / "locked.jpg"
    if os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads everything: simulate the refusal where the file is opened
        real_open = Image.open

        def open_(fp, *args, **kwargs):
            if Path(fp) == locked:
                raise PermissionError(errno.EACCES, "Permission denied", str(fp))
            return real_open(fp, *args, **kwargs)

        monkeypatch.setattr(Image, "open", open_)
    try:
        assert check_bad([data / "ok.jpg", locked]) == {
            "locked.jpg": "permission denied (make it readable, e.g. chmod a+r)"
        }
    finally:
        locked.chmod(0o644)


def test_unlistable_class_folder_is_an_error_not_an_empty_class(tmp_path, monkeypatch):
    data = photos(tmp_path / "data", ["ant/a.jpg", "ant/b.jpg", "bee/c.jpg", "bee/d.jpg"])
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == data / "bee":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataSourceError, match=r"Cannot list .*bee: Permission denied"):
        from_image_folder(data)


def test_one_pixel_image_is_accepted(tmp_path, vit_checkpoint):
    from hf_classifier.models.build import load_image_processor
    from hf_classifier.transforms.pipeline import create_transform

    Image.new("RGB", (1, 1), (200, 30, 30)).save(tmp_path / "dot.png")
    assert check_image(tmp_path / "dot.png") is None  # a valid image; `inspect` lists it as tiny
    processor = load_image_processor(str(vit_checkpoint))
    for training in (False, True):
        transform = create_transform(processor, training=training, augmentation="light", rng=random.Random(0))
        pixels = transform(decode_image(str(tmp_path / "dot.png")))
        assert tuple(pixels.shape) == (3, 32, 32)


def test_30000_by_20_image_is_skipped_and_recorded(tmp_path):
    data = photos(tmp_path / "data", ["ant/a.jpg", "ant/b.jpg", "bee/c.jpg", "bee/d.jpg"])
    Image.new("RGB", (30000, 20), (10, 200, 10)).save(data / "bee" / "banner.png")
    Image.new("RGB", (400, 20), (10, 200, 10)).save(data / "bee" / "wide.png")  # 20:1 is still a picture
    loaded = drop_bad_images(from_image_folder(data), skip=True, report_dir=tmp_path / "run")
    assert "bee/banner.png" not in loaded.splits["train"]["file_path"]
    assert "bee/wide.png" in loaded.splits["train"]["file_path"]
    with open(tmp_path / "run" / "bad_images.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(row["path"]).name for row in rows] == ["banner.png"]
    assert rows[0]["reason"].startswith("aspect ratio 1500:1 (limit 20:1)")


def test_animated_webp_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 24), colour) for colour in ((250, 0, 0), (0, 0, 250), (0, 250, 0))]
    frames[0].save(
        tmp_path / "anim.webp", save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True
    )
    assert Image.open(tmp_path / "anim.webp").n_frames == 3
    assert check_image(tmp_path / "anim.webp") is None
    first = open_image(tmp_path / "anim.webp")
    assert first.size == (32, 24) and first.getpixel((16, 12)) == (250, 0, 0)


def test_heic_file_is_reported_with_the_plugin_to_install(tmp_path):
    pytest.importorskip("PIL")
    try:
        import pillow_heif  # noqa: F401

        pytest.skip("pillow-heif is installed: HEIC files open")
    except ImportError:
        pass
    data = photos(tmp_path / "data", ["ant/a.jpg", "ant/b.jpg", "bee/c.jpg"])
    # An iPhone photo's first box (ISO-BMFF 'ftyp', brand heic); the rest does not matter here.
    (data / "bee" / "IMG_0001.HEIC").write_bytes(
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    )
    folder = from_image_folder(data)
    assert "bee/IMG_0001.HEIC" in folder.splits["train"]["file_path"]  # not ignored as "not an image"
    reason = check_bad([data / "bee" / "IMG_0001.HEIC"])["IMG_0001.HEIC"]
    assert reason.startswith("HEIC/HEIF image") and "pip install pillow-heif" in reason and "[heif]" in reason


def test_class_folder_with_a_single_image_stays_in_train(tmp_path, caplog):
    from hf_classifier.data.splits import ensure_validation_split

    data = photos(
        tmp_path / "data",
        [f"ant/{i}.jpg" for i in range(6)] + [f"bee/{i}.jpg" for i in range(6)] + ["wasp/only.jpg"],
    )
    with caplog.at_level(logging.WARNING):
        split = ensure_validation_split(from_image_folder(data), 0.34, seed=0)
    assert "wasp/only.jpg" in split.splits["train"]["file_path"]
    assert "wasp/only.jpg" not in split.splits["validation"]["file_path"]
    assert len(split.splits["train"]) + len(split.splits["validation"]) == 13
    assert "single image" in caplog.text and "wasp" in caplog.text


# ---- outputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "split", "inspect", "evaluate"])
def test_output_folder_that_is_a_file_is_refused_before_reading(command, tmp_path, capsys):
    taken = tmp_path / "results"
    taken.write_text("my notes")
    extra = ["--model", "m"] if command == "evaluate" else []
    assert main([command, "--data_dir", "no_such_folder", "--output_dir", str(taken), *extra]) == 1
    error = one_line_error(capsys, command)
    assert f"--output_dir {taken} is a file, not a folder" in error
    assert taken.read_text() == "my notes"


def test_predict_output_that_is_a_folder_is_refused(tmp_path, capsys):
    assert main(["predict", "--model", "m", "--input", "x.jpg", "--output", str(tmp_path)]) == 1
    assert f"--output {tmp_path} is a folder" in one_line_error(capsys, "predict")


def test_disk_full_during_prepare_is_one_line_and_a_rerun_finishes(tmp_path, monkeypatch, capsys):
    from datasets.arrow_writer import ArrowWriter

    data = make_image_tree(tmp_path / "data", {"ant": 4, "bee": 4})
    cache = tmp_path / "cache"
    argv = [
        "prepare",
        "--data_dir",
        str(data),
        "--cache_dir",
        str(cache),
        "--num_proc",
        "1",
        "--image_size",
        "16",
    ]

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ArrowWriter, "write_batch", full)
    monkeypatch.setattr(ArrowWriter, "write", full)
    assert main(argv) == 1
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith("hf-classifier prepare: error: ") and "Traceback" not in stderr
    assert "no space left on the disk" in error and str(cache) in error and "--cache_dir" in error
    leftovers = [p.name for p in cache.rglob("*") if p.name.startswith(".shard")]
    assert leftovers == []  # no half-written shard
    monkeypatch.undo()
    assert main(argv) == 0
    assert "Prepared 8 images" in capsys.readouterr().out


def test_a_folder_that_cannot_be_written_is_one_line(monkeypatch, capsys):
    import hf_classifier.cli.commands as cli

    def write_denied(argv):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/report.json")

    monkeypatch.setitem(cli.COMMANDS, "inspect", (write_denied, "inspect"))
    assert main(["inspect"]) == 1
    assert "permission denied: /data/report.json" in one_line_error(capsys, "inspect")
