"""Sources: idx files and ImageFolder trees in canonical order, and their bad-input errors."""
import gzip

import numpy as np
import pytest
from PIL import Image

from export.readers import ImageFolderSource, open_source, read_idx
from conftest import synthetic_images, write_idx


def test_idx_source_round_trip(idx_root):
    src = open_source("fashion-mnist", idx_root, "train")
    images, labels = synthetic_images(96, 0)
    assert len(src) == 96 and src.class_names[9] == "ankle boot"
    assert src.label(5) == labels[5]
    np.testing.assert_array_equal(np.asarray(src.image(5)), images[5])
    import io
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(src.encoded(5)))), images[5])  # lossless PNG
    assert len(open_source("fashion-mnist", idx_root, "test")) == 40


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "x-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x12\x34\x08\x03" + b"\x00" * 12)
    with pytest.raises(ValueError, match=str(bad)):
        read_idx(bad)
    write_idx(tmp_path / "short.gz", np.zeros((2, 3), np.uint8))
    data = gzip.open(tmp_path / "short.gz").read()[:-1]
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(data)
    with pytest.raises(ValueError, match="short.gz"):
        read_idx(tmp_path / "short.gz")
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        open_source("idx", tmp_path, "test")


def _folder(root, layout):
    for cls, files in layout.items():
        (root / cls).mkdir(parents=True)
        for name in files:
            Image.fromarray(np.full((8, 8, 3), len(name), np.uint8)).save(root / cls / name)


def test_imagefolder_order_is_torchvisions(tmp_path):
    _folder(tmp_path / "train", {"zebra": ["b.png", "a.png"], "ant": ["z.png", "c.png", "m.jpg"]})
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    src = open_source("imagefolder", tmp_path, "train")
    assert src.class_names == ["ant", "zebra"]
    assert [src.path(i).split("/")[-2:] for i in range(len(src))] == [
        ["ant", "c.png"], ["ant", "m.jpg"], ["ant", "z.png"], ["zebra", "a.png"], ["zebra", "b.png"]]
    assert [src.label(i) for i in range(len(src))] == [0, 0, 0, 1, 1]


def test_corrupt_image_error_names_path(tmp_path):
    _folder(tmp_path, {"cat": ["ok.png"]})
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    src = ImageFolderSource(tmp_path)
    i = [n for n in range(len(src)) if src.path(n).endswith("broken.png")][0]
    with pytest.raises(ValueError, match="broken.png"):
        src.encoded(i)
    (tmp_path / "cat" / "empty.jpg").write_bytes(b"")
    src = ImageFolderSource(tmp_path)
    i = [n for n in range(len(src)) if src.path(n).endswith("empty.jpg")][0]
    with pytest.raises(ValueError, match=r"empty\.jpg \(empty, or not an image format PIL reads\)"):
        src.encoded(i)


def test_cut_jpegs_are_refused_as_a_full_decode_refuses_them(tmp_path):
    """pack checks a JPEG with libjpeg's 1/8-scale decode (readers.ImageFolderSource.encoded): a file cut
    anywhere, progressive or not, is refused exactly where a full decode refuses it (a cut in the middle
    always), and an accepted file is stored byte for byte."""
    import io
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8))
    (tmp_path / "cat").mkdir()
    full_decode_ok = {}
    for progressive in (False, True):
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=90, progressive=progressive)
        whole = buf.getvalue()
        for cut in (len(whole), len(whole) - 2, len(whole) - 40, len(whole) // 2, 300):
            name = f"p{int(progressive)}_{cut}.jpg"
            (tmp_path / "cat" / name).write_bytes(whole[:cut])
            try:
                Image.open(io.BytesIO(whole[:cut])).load()
                full_decode_ok[name] = True
            except OSError:
                full_decode_ok[name] = False
            assert full_decode_ok[name] == (cut == len(whole)) or cut == len(whole) - 2, name
    src = ImageFolderSource(tmp_path)
    for i in range(len(src)):
        name = src.path(i).rsplit("/", 1)[1]
        if full_decode_ok[name]:
            assert src.encoded(i) == (tmp_path / "cat" / name).read_bytes()
        else:
            with pytest.raises(ValueError, match=f"cannot decode image #{i}: .*{name}"):
                src.encoded(i)


def test_empty_class_folders_are_refused_by_name(tmp_path):
    _folder(tmp_path, {"cat": ["a.png"], "dog": [], "emu": [], "fox": ["b.png"]})
    (tmp_path / "emu" / "readme.txt").write_text("only a non-image file")
    with pytest.raises(ValueError, match=r"2 class folder\(s\) hold no images \('dog', 'emu'\).*--allow-empty-classes"):
        open_source("imagefolder", tmp_path)
    src = open_source("imagefolder", tmp_path, allow_empty_classes=True)
    assert src.class_names == ["cat", "dog", "emu", "fox"]  # the empty classes keep their label indices
    assert [src.label(i) for i in range(len(src))] == [0, 3]


def test_formats_mindspore_cannot_decode_are_stored_as_png(tmp_path):
    import io
    _folder(tmp_path, {"cat": ["a.jpg", "b.webp", "c.ppm"]})
    src = ImageFolderSource(tmp_path)
    kinds = {src.path(i).rsplit(".", 1)[1]: Image.open(io.BytesIO(src.encoded(i))).format for i in range(len(src))}
    assert kinds == {"jpg": "JPEG", "webp": "PNG", "ppm": "PNG"}
    for i in range(len(src)):  # lossless: the stored image is the decoded file
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(src.encoded(i))).convert("RGB")),
                                      np.asarray(src.image(i)))
