"""ImageNet presets on uint8 tensors against torchvision's own transforms, on real JPEGs."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate
from torchvision import transforms as v1
from torchvision.transforms.v2 import functional as TF

from tasks.data import shards
from tasks.data.reader import ShardRef, ShardStream
from tasks.imagenet import ilsvrc_sample
from tasks.imagenet import transforms as T


def _photo() -> Image.Image:
    """A real photograph (Debian's wallpapers) when installed, else a synthetic gradient."""
    found = ilsvrc_sample.find_photos()
    if found:
        with Image.open(found[len(found) // 2]) as im:
            im.draft("RGB", (800, 800))
            return im.convert("RGB")
    x = np.linspace(0, 255, 640)[None, :, None]
    y = np.linspace(0, 255, 480)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2 + 40 * np.sin(x / 9) * np.cos(y / 7)], axis=2)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _jpeg(im: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return _photo()


@pytest.fixture(scope="module")
def square(photo) -> bytes:
    """A shard image: 256², as the ingest writes them."""
    side = min(photo.size)
    return _jpeg(photo.crop((0, 0, side, side)).resize((256, 256), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def landscape(photo) -> bytes:
    """An ImageNet-sized original, 500×375."""
    return _jpeg(photo.resize((500, 375), Image.Resampling.BILINEAR))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.int() - b.int()).abs()


# --- decoding ------------------------------------------------------------------------------------


def test_decode_jpeg_is_rgb_uint8_chw_and_matches_pillow(landscape, photo):
    image = T.decode_jpeg(landscape)
    assert image.dtype == torch.uint8 and image.shape == (3, 375, 500)
    pillow = torch.from_numpy(np.array(Image.open(io.BytesIO(landscape)).convert("RGB"))).permute(2, 0, 1)
    assert _diff(image, pillow).max() <= 1
    assert torch.equal(T.decode_jpeg(torch.frombuffer(bytearray(landscape), dtype=torch.uint8)), image)

    gray = T.decode_jpeg(_jpeg(photo.convert("L").resize((64, 48))))
    assert gray.shape == (3, 48, 64) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_decode_falls_back_to_pillow_for_what_libjpeg_refuses(photo):
    buf = io.BytesIO()
    photo.resize((40, 30)).convert("RGBA").save(buf, format="PNG")  # a PNG named .jpg
    image = T.decode_jpeg(buf.getvalue())
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8


def test_decode_without_torchvisions_decoder_uses_pillow(monkeypatch, landscape):
    fast = T.decode_jpeg(landscape)
    monkeypatch.setattr(T, "_tv_decode_jpeg", None)
    slow = T.decode_jpeg(landscape)
    assert slow.shape == fast.shape and slow.dtype == torch.uint8 and _diff(slow, fast).max() <= 1
    assert T.TrainPreset(64)(landscape, _gen(0)).shape == (3, 64, 64)


def test_decode_batch_on_the_cpu_equals_decode_jpeg(square, landscape):
    datas = [T.jpeg_bytes(square), T.jpeg_bytes(landscape)]
    images = T.decode_batch(datas, "cpu")
    assert [tuple(im.shape) for im in images] == [(3, 256, 256), (3, 375, 500)]
    assert torch.equal(images[0], T.decode_jpeg(square)) and torch.equal(images[1], T.decode_jpeg(landscape))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvjpeg)")
def test_decode_batch_on_cuda_is_close_to_libjpeg(square, landscape):
    datas = [T.jpeg_bytes(square), T.jpeg_bytes(landscape)]
    images = T.decode_batch(datas, "cuda")
    for gpu, data in zip(images, (square, landscape)):
        assert gpu.is_cuda and gpu.dtype == torch.uint8
        assert _diff(gpu.cpu(), T.decode_jpeg(data)).float().mean() < 1.0


# --- TrainPreset ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["square", "landscape"])
def test_train_preset_shape_dtype_and_determinism(source, request):
    data = request.getfixturevalue(source)
    preset = T.TrainPreset(224)
    a, b = preset(data, _gen(3)), preset(data, _gen(3))
    assert a.shape == (3, 224, 224) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    outputs = {preset(data, _gen(seed)).sum().item() for seed in range(8)}
    assert len(outputs) == 8  # different seeds, different crops
    g = _gen(5)  # one generator goes on drawing: consecutive calls differ
    assert not torch.equal(preset(data, g), preset(data, g))


@pytest.mark.parametrize("source", ["square", "landscape"])
def test_train_crop_matches_torchvision_resized_crop_of_the_same_box(source, request):
    data = request.getfixturevalue(source)
    image = T.decode_jpeg(data)
    preset = T.TrainPreset(224)
    worst = []
    for seed in range(20):
        box = preset.box(image.shape[1], image.shape[2], _gen(seed))
        ours = preset(data, _gen(seed))
        ref = TF.resized_crop(image, box.top, box.left, box.height, box.width, [224, 224], antialias=True)
        if box.flip:
            ref = TF.horizontal_flip(ref)
        d = _diff(ours, ref)
        assert d.max() <= 2 and (d <= 1).float().mean() > 0.99
        worst.append(d.max().item())
    assert max(worst) <= 1


def test_random_resized_crop_boxes_follow_the_documented_distribution():
    preset = T.TrainPreset(224, min_scale=0.08)
    areas, aspects = [], []
    for seed in range(400):
        box = preset.box(375, 500, _gen(seed))
        assert 0 <= box.top and box.top + box.height <= 375 and 0 <= box.left and box.left + box.width <= 500
        areas.append(box.height * box.width / (375 * 500))
        aspects.append(box.width / box.height)
    assert 0.08 * 0.9 <= min(areas) and max(areas) <= 1.0
    assert 3 / 4 * 0.95 <= min(aspects) and max(aspects) <= 4 / 3 * 1.05
    log_aspects = np.log(aspects)  # log-uniform: about as many below 1 as above
    assert abs((log_aspects < 0).mean() - 0.5) < 0.1
    assert np.mean(areas) > 0.3  # scale uniform in [0.08, 1], less the misses of big boxes

    tall = T.TrainPreset(16, min_scale=1.0).box(1000, 10, _gen(0))  # no try fits: the fallback
    assert (tall.width, tall.height) == (10, round(10 / (3 / 4))) and tall.top == (1000 - tall.height) // 2
    whole = T.TrainPreset(16, min_scale=1.0).box(300, 300, _gen(0))  # scale 1, square: the image
    assert (whole.top, whole.left, whole.height, whole.width) == (0, 0, 300, 300)


def test_jitter_crops_a_square_of_an_image_whose_shorter_side_is_in_range(landscape):
    preset = T.TrainPreset(224, jitter=(256, 512))
    image = T.decode_jpeg(landscape)
    shorter = []
    for seed in range(200):
        box = preset.box(375, 500, _gen(seed))
        assert box.height == box.width
        assert box.top + box.height <= 375 and box.left + box.width <= 500
        shorter.append(224 * 375 / box.height)  # the S at which this box is 224 pixels
    assert 256 * 0.99 <= min(shorter) and max(shorter) <= 512 * 1.01
    assert min(shorter) < 300 and max(shorter) > 470  # the whole range is used

    out = preset(landscape, _gen(7))
    box = preset.box(375, 500, _gen(7))
    ref = TF.resized_crop(image, box.top, box.left, box.height, box.width, [224, 224], antialias=True)
    ref = TF.horizontal_flip(ref) if box.flip else ref
    assert out.shape == (3, 224, 224) and _diff(out, ref).max() <= 1

    with pytest.raises(ValueError):
        T.TrainPreset(224, jitter=(200, 300))  # S below the crop size would need upscaling


def test_flip_happens_about_half_the_time_and_mirrors_the_crop(square):
    flipping, plain = T.TrainPreset(224), T.TrainPreset(224, flip=False)
    flips = 0
    for seed in range(400):
        box = flipping.box(256, 256, _gen(seed))
        flips += box.flip
        assert not plain.box(256, 256, _gen(seed)).flip
    assert 160 <= flips <= 240
    seed = next(s for s in range(50) if flipping.box(256, 256, _gen(s)).flip)
    # The same draws give the same box with or without the flip.
    assert torch.equal(flipping(square, _gen(seed)), plain(square, _gen(seed)).flip(-1))


# --- EvalPreset ----------------------------------------------------------------------------------


def test_eval_on_a_256_shard_image_is_a_plain_center_crop(square):
    preset = T.EvalPreset(224)
    assert preset.resize == 256
    image = T.decode_jpeg(square)
    out = preset(square)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    assert torch.equal(out, TF.center_crop(image, [224, 224]))
    assert torch.equal(out, image[:, 16:240, 16:240])


def test_eval_on_a_non_square_image_is_torchvisions_resize_and_center_crop(landscape):
    preset = T.EvalPreset(224)
    out = preset(landscape)
    assert out.shape == (3, 224, 224)
    image = T.decode_jpeg(landscape)
    v2_ref = TF.center_crop(TF.resize(image, [256], antialias=True), [224, 224])
    assert _diff(out, v2_ref).max() <= 1
    pil = Image.open(io.BytesIO(landscape)).convert("RGB")
    v1_ref = torch.from_numpy(np.array(v1.CenterCrop(224)(v1.Resize(256)(pil)))).permute(2, 0, 1)
    d = _diff(out, v1_ref)  # Pillow's bilinear: the same filter, its own rounding
    assert d.float().mean() < 0.6 and (d <= 1).float().mean() > 0.97
    assert T.EvalPreset(128, resize=160)(landscape).shape == (3, 128, 128)


# --- batches -------------------------------------------------------------------------------------


def test_collate_stacks_in_channels_last_memory_with_default_collates_values(square):
    preset = T.TrainPreset(224)
    g = _gen(0)
    batch = [(preset(square, g), i) for i in range(5)]
    images, labels = T.collate(batch)
    ref_images, ref_labels = default_collate(batch)
    assert images.shape == (5, 3, 224, 224) and images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    assert labels.dtype == torch.int64


def test_rect_collate_crops_to_the_batch_mean_aspect_in_multiples_of_8(photo):
    size = 160
    shapes = [(160, 213), (160, 240), (160, 284), (213, 160), (160, 160)]  # (h, w), shorter side 160
    pixels = T.decode_jpeg(_jpeg(photo.resize((400, 400))))
    batch = [(T._resize(pixels, h, w), i) for i, (h, w) in enumerate(shapes)]
    images, labels = T.rect_collate(batch, size)
    mean = np.mean([w / h for h, w in shapes])
    b, c, h, w = images.shape
    assert (b, c) == (5, 3) and images.dtype == torch.uint8 and labels.tolist() == [0, 1, 2, 3, 4]
    assert h % 8 == 0 and w % 8 == 0 and h == 160 and abs(w / h - mean) <= 8 / h
    # An image at least (h, w) big is only cropped, from its centre.
    wide = batch[2][0]
    left = round((wide.shape[2] - w) / 2)
    assert torch.equal(images[2], wide[:, :, left:left + w])

    # Portrait: the width is the shorter side; mean aspect (160/300 + 160/250) / 2 → h = 160 / 0.587.
    portrait, _ = T.rect_collate([(T._resize(pixels, 300, 160), 0), (T._resize(pixels, 250, 160), 1)], 160)
    assert portrait.shape[2:] == (272, 160)
    # A shorter side that is no multiple of 8 is rounded down (a crop, never an upscale).
    odd, _ = T.rect_collate([(T._resize(pixels, 300, 166), 0)], 166)
    assert odd.shape[2:] == (288, 160)
    assert torch.equal(odd[0], T._resize(pixels, 300, 166)[:, 6:294, 3:163])


# --- normalize -----------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [True, False])
def test_normalize_matches_torchvisions_to_tensor_and_normalize(square, landscape, channels_last):
    preset = T.TrainPreset(224)
    g = _gen(1)
    batch = [(preset(data, g), 0) for data in (square, landscape, square)]
    images, _ = T.collate(batch)
    out = T.normalize(images, channels_last=channels_last)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 224, 224)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    reference = v1.Compose([v1.ToTensor(), v1.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)])
    for image, normalised in zip(images, out):
        ref = reference(Image.fromarray(image.permute(1, 2, 0).numpy()))
        torch.testing.assert_close(normalised, ref, atol=1e-5, rtol=0)

    nchw = T.normalize(images.contiguous(), channels_last=channels_last)  # any input layout
    torch.testing.assert_close(nchw, out, atol=1e-6, rtol=0)
    again = torch.empty_like(out)
    assert T.normalize(images, channels_last=channels_last, out=again) is again
    torch.testing.assert_close(again, out, atol=0, rtol=0)
    torch.testing.assert_close(T.normalize(images.float(), channels_last=channels_last), out, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        T.normalize(images[0], channels_last=channels_last)


# --- GPU path, run on the CPU here ---------------------------------------------------------------


def test_gpu_train_preset_draws_torchvisions_boxes_like_train_preset(square, landscape):
    datas = [square, landscape, square, landscape]
    images = T.decode_batch([T.jpeg_bytes(d) for d in datas], "cpu")
    gpu = T.GpuTrainPreset(224)
    out = gpu(images, _gen(11))
    assert out.shape == (4, 3, 224, 224) and out.dtype == torch.uint8
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, gpu(images, _gen(11)))
    cpu = T.TrainPreset(224)
    g = _gen(11)  # the same draws in the same order: the same boxes and flips
    for batched, data in zip(out, datas):
        d = _diff(batched, cpu(data, g))  # float kernel rounded against the uint8 kernel
        assert d.max() <= 2 and (d <= 1).float().mean() > 0.99
    floats = T.GpuTrainPreset(224, dtype=torch.float32)(images, _gen(11))
    assert floats.dtype == torch.float32 and (floats.round() - out.float()).abs().max() <= 1


# --- in a DataLoader -----------------------------------------------------------------------------


@pytest.fixture
def shard(tmp_path, square, landscape) -> list[ShardRef]:
    path = tmp_path / "train-000000.tar"
    samples = [{"__key__": f"k{i:03d}", "jpg": (square, landscape)[i % 2], "cls": i % 3} for i in range(12)]
    shards.write_tar(samples, path)
    return [ShardRef(str(path), len(samples))]


def test_shard_decoder_in_dataloader_workers_is_reproducible(shard):
    def epoch(seed: int):
        stream = ShardStream(shard, T.ShardDecoder(T.TrainPreset(96)), seed=0, shuffle=False)
        loader = DataLoader(stream, batch_size=4, num_workers=2, collate_fn=T.collate,
                            generator=torch.Generator().manual_seed(seed))
        return [(images.clone(), labels) for images, labels in loader]

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert sum(len(labels) for _, labels in first) == 12
    assert all(images.shape[1:] == (3, 96, 96) and images.dtype == torch.uint8 for images, _ in first)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_shard_decoder_without_preset_ships_the_jpeg_bytes(shard, square):
    stream = ShardStream(shard, T.ShardDecoder(), shuffle=False)
    datas, labels = next(iter(DataLoader(stream, batch_size=3, collate_fn=T.collate_bytes)))
    assert labels.tolist() == [0, 1, 2] and datas[0].dtype == torch.uint8
    assert bytes(datas[0].numpy()) == square
    images = T.decode_batch(datas, "cpu")
    assert images[0].shape == (3, 256, 256) and images[1].shape == (3, 375, 500)
    assert math.isclose(T.EVAL_CROP_FRACTION, 224 / 256)
