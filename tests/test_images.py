"""One robust open: every mode and format becomes the right RGB picture, bad files say why."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hf_classifier.data.images import BadImageError, open_image
from hf_classifier.data.scan import check_image, find_bad_images

RED = (220, 30, 40)


def rgb_at(image: Image.Image, xy=(5, 5)) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return image.getpixel(xy)


def close(a, b, tolerance=6) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def test_rgb_jpeg_is_returned_loaded(tmp_path):
    path = tmp_path / "a.jpg"
    Image.new("RGB", (40, 30), RED).save(path, quality=95)
    image = open_image(path)
    assert image.size == (40, 30) and close(rgb_at(image), RED)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_and_bilevel_become_gray_rgb(tmp_path, mode):
    path = tmp_path / f"g_{mode}.png"
    Image.new("L", (20, 20), 255).convert(mode).save(path)  # white: no dithering in mode "1"
    r, g, b = rgb_at(open_image(path))
    assert r == g == b and r > 150


def test_cmyk_jpeg_keeps_its_colour(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (30, 30), RED).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    assert close(rgb_at(open_image(path)), RED, tolerance=12)


def test_rgba_is_composited_on_white_not_black(tmp_path):
    path = tmp_path / "rgba.png"
    image = Image.new("RGBA", (20, 20), (*RED, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black pixel
    image.putpixel((1, 0), (0, 0, 255, 128))  # half-transparent blue
    image.save(path)
    rgb = open_image(path)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert close(rgb.getpixel((1, 0)), (127, 127, 255), tolerance=2)
    assert close(rgb_at(rgb), RED, tolerance=0)


@pytest.mark.parametrize("mode", ["LA", "PA"])
def test_other_alpha_modes_are_composited(mode):
    image = Image.new("RGBA", (10, 10), (50, 50, 50, 0)).convert(mode)  # PA cannot be saved as PNG
    assert image.mode == mode
    assert open_image(image).getpixel((3, 3)) == (255, 255, 255)


def test_palette_with_transparency_uses_background(tmp_path):
    path = tmp_path / "p.gif"
    palette_image = Image.new("P", (10, 10), 1)
    palette_image.putpalette([0, 0, 0, *RED] + [0] * 762)
    palette_image.info["transparency"] = 0
    palette_image.putpixel((0, 0), 0)
    palette_image.save(path, transparency=0)
    rgb = open_image(path)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((5, 5)) == RED


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGB", (10, 10), RED).quantize(colors=4).save(path)
    assert close(rgb_at(open_image(path)), RED, tolerance=3)


def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    path = tmp_path / "deep.png"
    values = np.full((10, 10), 32768, dtype=np.uint16)  # mid-gray in 16 bits
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    r, g, b = rgb_at(open_image(path))
    assert r == g == b and 120 <= r <= 135


def test_32_bit_integer_and_float_images(tmp_path):
    deep = Image.fromarray(np.full((8, 8), 65535, dtype=np.int32), mode="I")
    assert rgb_at(open_image(deep), (2, 2)) == (255, 255, 255)
    ramp = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), mode="F")
    rgb = open_image(ramp)
    assert rgb.getpixel((0, 0)) == (0, 0, 0) and rgb.getpixel((7, 7)) == (255, 255, 255)


@pytest.mark.parametrize("suffix", [".gif", ".mpo"])
def test_multi_frame_files_give_the_first_frame(tmp_path, suffix):
    path = tmp_path / f"frames{suffix}"
    first, second = Image.new("RGB", (20, 20), RED), Image.new("RGB", (20, 20), (0, 0, 255))
    first.save(path, save_all=True, append_images=[second])
    assert Image.open(path).n_frames == 2
    assert close(rgb_at(open_image(path)), RED, tolerance=8)


@pytest.mark.parametrize("fmt,suffix", [("WEBP", ".webp"), ("TIFF", ".tif"), ("BMP", ".bmp")])
def test_webp_tiff_bmp(tmp_path, fmt, suffix):
    path = tmp_path / f"img{suffix}"
    Image.new("RGB", (16, 12), RED).save(path, format=fmt)
    image = open_image(path)
    assert image.size == (16, 12) and close(rgb_at(image), RED, tolerance=10)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (40, 20), RED)
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image.save(path, exif=exif, quality=95)
    upright = open_image(path)
    assert upright.size == (20, 40)
    assert close(upright.getpixel((10, 2)), (0, 0, 255), tolerance=20)  # the stripe is now at the top


def test_content_is_sniffed_not_the_extension(tmp_path):
    no_extension = tmp_path / "photo"
    Image.new("RGB", (10, 10), RED).save(no_extension, format="PNG")
    lying = tmp_path / "photo.gif"
    Image.new("RGB", (10, 10), RED).save(lying, format="JPEG")
    assert close(rgb_at(open_image(no_extension)), RED, 0)
    assert close(rgb_at(open_image(lying)), RED, 10)


def test_bytes_and_datasets_records_are_accepted():
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), RED).save(buffer, format="PNG")
    assert rgb_at(open_image(buffer.getvalue())) == RED
    assert rgb_at(open_image({"bytes": buffer.getvalue(), "path": "x.png"})) == RED


@pytest.mark.parametrize(
    "content,reason",
    [(b"", "empty file"), (b"just some text, not a picture", "not an image")],
)
def test_unusable_files_name_the_file_and_the_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImageError) as error:
        open_image(path)
    assert str(path) in str(error.value) and reason in error.value.reason


def test_truncated_jpeg_is_detected(tmp_path):
    path = tmp_path / "truncated.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(BadImageError, match="truncated"):
        open_image(path)
    assert "truncated" in check_image(path)  # the fast up-front check sees it too


def test_missing_file(tmp_path):
    with pytest.raises(BadImageError, match="file not found"):
        open_image(tmp_path / "nope.jpg")


def test_decompression_bomb_guard_is_kept(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 10,000 px > 2 x limit -> error
    with pytest.raises(BadImageError, match="too large"):
        open_image(path)


def test_find_bad_images_reports_each_bad_file_in_order(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (10, 10)).save(good)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("hello")
    bad = find_bad_images([str(good), str(empty), str(good), str(text)], num_workers=2, progress=False)
    assert [index for index, _ in bad] == [1, 3]
    assert "empty" in bad[0][1] and "not an image" in bad[1][1]


def test_draft_decoding_leaves_a_callers_image_alone_and_reports_oversized_files(tmp_path, monkeypatch):
    from PIL import Image

    from hf_classifier.data.images import BadImageError, decode_image

    photo = Image.new("RGB", (2000, 1500), (10, 120, 200))
    photo.save(tmp_path / "big.jpg", quality=90)
    opened = Image.open(tmp_path / "big.jpg")  # not loaded yet: a draft would shrink it
    decoded = decode_image(opened, (224, 224))
    assert decoded.size == (2000, 1500) and opened.size == (2000, 1500)
    loaded = Image.open(tmp_path / "big.jpg")
    loaded.load()
    assert decode_image(loaded, (224, 224)).size == (2000, 1500)
    # Beyond Pillow's decompression-bomb limit: a BadImageError with the file, not a crash.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(BadImageError, match="big.jpg.*too large"):
        decode_image(str(tmp_path / "big.jpg"), (224, 224))


def test_a_bad_image_past_the_first_check_chunk_drops_exactly_its_own_row(tmp_path, monkeypatch):
    """The check reads images in chunks (1,024 by default; 5 here): a bad file in a later chunk must be
    reported and removed by its row in the whole split, not by its place inside the chunk."""
    import csv

    import hf_classifier.data.checks as quality
    import hf_classifier.data.scan as scan
    from hf_classifier.data.schema import IMAGE
    from hf_classifier.data.sources import from_image_folder

    monkeypatch.setattr(scan, "_CHUNK", 5)
    (tmp_path / "data" / "cats").mkdir(parents=True)
    for i in range(13):
        Image.new("RGB", (12, 10), (20 * i, 40, 90)).save(tmp_path / "data" / "cats" / f"{i:02d}.jpg")
    data = from_image_folder(tmp_path / "data")
    before = list(data.splits["train"][IMAGE])
    broken = before[7]  # in the second chunk (rows 5-9), at offset 2 there
    with open(broken, "wb") as handle:
        handle.write(b"not an image")
    kept = quality.drop_bad_images(data, skip=True, report_dir=tmp_path, num_workers=1)
    with (tmp_path / quality.BAD_IMAGES_FILE).open(encoding="utf-8") as handle:
        listed = [row["path"] for row in csv.DictReader(handle)]
    after = list(kept.splits["train"][IMAGE])
    assert listed == [broken]
    assert [path for path in before if path not in after] == [broken]
    assert len(after) == len(before) - 1


def test_a_too_large_image_is_caught_by_the_up_front_check(tmp_path, monkeypatch):
    """README: an image beyond Pillow's decompression-bomb limit stops the run before training, named."""
    import hf_classifier.data.checks as quality
    from hf_classifier.data.sources import from_image_folder

    (tmp_path / "data" / "cats").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (40, 30), (10, 60 * i, 90)).save(tmp_path / "data" / "cats" / f"small{i}.jpg")
    Image.new("RGB", (800, 600), (200, 120, 10)).save(tmp_path / "data" / "cats" / "huge.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # 480,000 px > 2 x limit: refused
    data = from_image_folder(tmp_path / "data")
    with pytest.raises(quality.BadImagesError, match=r"1 of 3 images.*\n.*huge\.jpg: too large"):
        quality.drop_bad_images(data, skip=False, report_dir=tmp_path, num_workers=1)
    with (tmp_path / quality.BAD_IMAGES_FILE).open(encoding="utf-8") as handle:
        assert handle.read().count("too large") == 1


def rotated_jpeg(path, size=(1200, 900), orientation=6):
    """A JPEG stored `size` (width, height), to be displayed turned by its EXIF orientation."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", size, RED).save(path, exif=exif, quality=90)
    return path


def test_one_read_gives_the_verdict_the_facts_and_the_picture(tmp_path):
    """The scan shared by the check, `inspect` and `prepare`: one decode of a rotated JPEG gives its
    header, its size as displayed and its hashes, at the draft scale (a rotated photo is drafted too)."""
    from hf_classifier.data.duplicates import content_hash
    from hf_classifier.data.scan import scan_image

    path = rotated_jpeg(tmp_path / "portrait.jpg")
    scan = scan_image(path, draft_size=(100, 100), hashes=True, keep_image=True)
    assert (scan.format, scan.mode, scan.orientation) == ("JPEG", "RGB", 6)
    assert (scan.width, scan.height) == (900, 1200) and scan.readable and scan.problem is None
    assert scan.content_hash == content_hash(path.read_bytes()) and scan.perceptual_hash is not None
    assert scan.image.size == (113, 150)  # 1/8 scale, upright
    unreadable = scan_image(tmp_path / "missing.jpg", hashes=True)
    assert not unreadable.readable and unreadable.problem == "file not found"


def test_the_shape_check_measures_the_photo_not_its_draft(tmp_path):
    """A JPEG banner decodes at 1/8 scale for the check (3,750 x 3 px): its ratio is the photo's."""
    Image.new("RGB", (30000, 20), RED).save(tmp_path / "banner.jpg", quality=80)
    assert check_image(tmp_path / "banner.jpg").startswith("aspect ratio 1500:1 (limit 20:1)")
