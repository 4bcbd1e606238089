"""Image loading and views: LLaVA-1.5 padding, crops of the 2x square, robust loading."""

import numpy as np
import pytest
from PIL import Image

from sparsecut_core.model.images import expand_to_square, load_image, make_views

FILL = (10, 20, 30)


def solid(width, height, colour=(200, 0, 0)):
    return Image.new("RGB", (width, height), colour)


def noise(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_expand_to_square_pads_wide_image_above_and_below():
    square = np.asarray(expand_to_square(solid(40, 21), FILL))  # [H, W, 3]
    assert square.shape == (40, 40, 3)
    top = (40 - 21) // 2  # 9
    assert (square[:top] == FILL).all()
    assert (square[top : top + 21] == (200, 0, 0)).all()
    assert (square[top + 21 :] == FILL).all()


def test_expand_to_square_pads_tall_image_left_and_right():
    square = np.asarray(expand_to_square(solid(20, 40), FILL))
    assert square.shape == (40, 40, 3)
    assert (square[:, :10] == FILL).all()
    assert (square[:, 10:30] == (200, 0, 0)).all()
    assert (square[:, 30:] == FILL).all()


def test_expand_to_square_leaves_square_image_unchanged():
    image = noise(16, 16)
    assert np.array_equal(np.asarray(expand_to_square(image, FILL)), np.asarray(image))


def test_expand_to_square_rejects_bad_fill_and_non_rgb():
    with pytest.raises(ValueError, match="fill"):
        expand_to_square(solid(4, 2), (256, 0, 0))
    with pytest.raises(ValueError, match="mode"):
        expand_to_square(Image.new("L", (4, 2)), FILL)


def test_low_res_only_gives_one_base_size_view_of_the_padded_square():
    image = noise(50, 30)
    views = make_views(image, 16, None, FILL)
    assert len(views) == 1 and views[0].size == (16, 16)
    expected = expand_to_square(image, FILL).resize((16, 16), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(views[0]), np.asarray(expected))


def test_hi_res_crops_are_row_major_regions_of_the_2x_square():
    image = noise(50, 30)
    views = make_views(image, 16, (2, 2), FILL)
    assert [v.size for v in views] == [(16, 16)] * 5
    high = np.asarray(expand_to_square(image, FILL).resize((32, 32), Image.Resampling.BICUBIC))  # [H, W, 3]
    for k, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        region = high[row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16]
        assert np.array_equal(np.asarray(views[1 + k]), region), f"crop {k}"


def test_non_square_grid_resizes_to_cols_by_rows_base():
    image = noise(30, 50)
    views = make_views(image, 8, (1, 3), FILL)
    assert [v.size for v in views] == [(8, 8)] * 4
    high = np.asarray(expand_to_square(image, FILL).resize((24, 8), Image.Resampling.BICUBIC))
    assert np.array_equal(np.asarray(views[3]), high[:, 16:24])


def test_make_views_rejects_bad_grid_and_size():
    with pytest.raises(ValueError, match="grid"):
        make_views(noise(8, 8), 8, (0, 2), FILL)
    with pytest.raises(ValueError, match="base_size"):
        make_views(noise(8, 8), 0, None, FILL)


def test_exif_rotated_jpeg_loads_upright(tmp_path):
    # Stored 40 wide x 20 high, left half red; orientation 6 means "rotate 90 degrees
    # clockwise to display", so upright it is 20 x 40 with the red half on top.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)

    image = load_image(path)
    assert image.mode == "RGB" and image.size == (20, 40)
    pixels = np.asarray(image).astype(int)
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 60  # top: red
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 60  # bottom: blue

    # as LLaVA's eval scripts read it: the stored layout, and no later call rotates it
    stored_layout = load_image(path, exif_orientation=False)
    assert stored_layout.size == (40, 20) and load_image(stored_layout).size == (40, 20)


def test_palette_image_with_transparency_loads_as_rgb(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert tuple(np.asarray(loaded)[0, 0]) == (0, 255, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_images_load_as_rgb(tmp_path, mode):
    path = tmp_path / f"alpha_{mode}.png"
    Image.new(mode, (3, 2), (90,) * (len(mode) - 1) + (0,)).save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (3, 2)
    assert (np.asarray(loaded) == 90).all()


def test_16_bit_greyscale_png_is_scaled_to_8_bit(tmp_path):
    wide = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(wide).save(path)
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (1, 3, 3)
    assert loaded[0, :, 0].tolist() == [0, 100, 255]
    assert (loaded[..., 0] == loaded[..., 2]).all()


def test_pil_image_is_passed_through_as_rgb():
    loaded = load_image(Image.new("RGBA", (2, 2), (1, 2, 3, 4)))
    assert loaded.mode == "RGB" and tuple(np.asarray(loaded)[0, 0]) == (1, 2, 3)


def test_missing_file_error_names_the_path(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ValueError, match="cannot read image") as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_file_error_is_one_line(tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image") as info:
        load_image(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_webp_loads_as_rgb(tmp_path):
    path = tmp_path / "picture.webp"
    Image.new("RGB", (8, 6), (0, 200, 0)).save(path, lossless=True)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (8, 6)
    assert tuple(np.asarray(loaded)[3, 4]) == (0, 200, 0)


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path (loopback only: no network needed)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_image_loads_with_exif_rotation(tmp_path, local_server):
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 40 x 20 stored -> 20 x 40 upright
    Image.new("RGB", (40, 20), (250, 250, 0)).save(tmp_path / "remote.jpg", exif=exif.tobytes())
    loaded = load_image(f"{local_server}/remote.jpg")
    assert loaded.mode == "RGB" and loaded.size == (20, 40)


def test_url_that_fails_is_a_one_line_error_naming_it(local_server):
    url = f"{local_server}/missing.png"
    with pytest.raises(ValueError, match="cannot read image") as info:
        load_image(url)
    assert url in str(info.value) and "404" in str(info.value) and "\n" not in str(info.value)
