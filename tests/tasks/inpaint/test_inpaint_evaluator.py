"""InpaintEvaluator: its per-bucket numbers are the per-image metrics of the composite, averaged;
the baselines appear in detailed mode; its table and grid are real files; and two gloo ranks,
each with half the batch, report what one process reports."""

from __future__ import annotations

import io
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from tasks.inpaint import baselines, quality
from tasks.inpaint.evaluator import SSIM_DTYPE, InpaintEvaluator
from tasks.train.recipe import EvalContext

SIDE = 32
CPU = torch.device("cpu")
# sample: bucket index (-1: none), border flag; sample 4 has no hole at all
BUCKET = torch.tensor([0, 0, 2, -1, 1, 0])
BORDER = torch.tensor([False, True, False, True, False, False])


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = len(BUCKET)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIDE), torch.linspace(0, 1, SIDE), indexing="ij")
    image = torch.stack([xx, yy, xx * yy])[None].repeat(n, 1, 1, 1)
    image = (image + 0.1 * torch.rand(n, 3, SIDE, SIDE, generator=g)).clamp(0, 1)
    mask = torch.ones(n, 1, SIDE, SIDE)
    for i in range(n):
        if i != 4:
            y, x = torch.randint(0, SIDE - 10, (2,), generator=g).tolist()
            mask[i, :, y:y + 4 + i, x:x + 6] = 0
    mask[1, :, :3, :] = 0  # the border samples' holes touch the edge
    mask[3, :, :, -2:] = 0
    output = torch.rand(n, 3, SIDE, SIDE, generator=g) * 1.2 - 0.1  # outside [0, 1]: clamped
    return output, (image, mask, BUCKET.clone(), BORDER.clone()), (image * mask, mask)


def composite(output, image, mask):
    return mask * image + (1 - mask) * output.clamp(0, 1)


def direct(filled, image, mask) -> dict[str, torch.Tensor]:
    return {"l1": quality.l1(filled, image), "l1_hole": quality.l1(filled, image, 1 - mask),
            "psnr": quality.psnr(filled, image), "ssim": quality.ssim(filled, image, SSIM_DTYPE)}


def expected_keys(prefix: str, values: dict[str, torch.Tensor]) -> dict[str, float]:
    scored = [0, 1, 2, 3, 5]  # sample 4 has no hole: left out
    out = {f"{prefix}{m}": v[scored].mean().item() for m, v in values.items()}
    for m, v in values.items():
        out[f"{prefix}{m}/r01-10/no-border"] = v[[0, 5]].mean().item()
        out[f"{prefix}{m}/r01-10/border"] = v[1].item()
        out[f"{prefix}{m}/r20-30/no-border"] = v[2].item()
    return out


def test_keys_and_values_equal_direct_computation():
    output, targets, inputs = batch()
    image, mask = targets[:2]
    ev = InpaintEvaluator(EvalContext((), CPU))
    ev.update(output, targets, inputs)
    got = ev.compute()
    expected = expected_keys("", direct(composite(output, image, mask), image, mask))
    expected["no_hole"] = 1.0
    assert set(got) == set(expected)  # no key for empty cells (r10-20 holds only a hole-free sample)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert "psnr/r20-30/no-border" in got and not any(k.startswith("baseline/") for k in got)
    assert 0 < got["l1"] < got["l1_hole"]  # the holes hold all the error


def test_updates_accumulate_like_one_batch():
    output, targets, inputs = batch()
    whole = InpaintEvaluator(EvalContext((), CPU))
    whole.update(output, targets, inputs)
    parts = InpaintEvaluator(EvalContext((), CPU))
    for half in (slice(0, 2), slice(2, None)):
        parts.update(output[half], tuple(t[half] for t in targets), tuple(t[half] for t in inputs))
    a, b = whole.compute(), parts.compute()
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-12) for k in a)


def test_detailed_adds_both_baselines_scored_on_the_same_images():
    output, targets, inputs = batch()
    image, mask = targets[:2]
    ev = InpaintEvaluator(EvalContext((), CPU, detailed=True))
    ev.update(output, targets, inputs)
    got = ev.compute()
    for name, fill in (("mean", baselines.mean_fill), ("telea", baselines.telea)):
        expected = expected_keys(f"baseline/{name}/", direct(fill(image, mask), image, mask))
        assert {k for k in got if k.startswith(f"baseline/{name}/")} == set(expected)
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    # the model's own keys are unchanged by detailed mode
    plain = InpaintEvaluator(EvalContext((), CPU))
    plain.update(output, targets, inputs)
    assert all(got[k] == pytest.approx(v) for k, v in plain.compute().items())
    assert got["baseline/telea/l1_hole"] < got["baseline/mean/l1_hole"]  # smooth images


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_artifacts_are_a_table_and_a_png_grid():
    output, targets, inputs = batch()
    ev = InpaintEvaluator(EvalContext((), CPU, detailed=True))
    ev.update(output, targets, inputs)
    metrics = ev.compute()
    files = ev.artifacts()
    assert set(files) == {"inpaint_table.md", "inpaint_table.csv", "inpaint_grid.png"}
    table = files["inpaint_table.md"].decode().splitlines()
    header = cells(table[0])
    assert header[:4] == ["metric", "method", "r01-10 N", "r01-10 B"] and header[-1] == "all"
    assert len(header) == 2 + 12 + 1 and set(table[1]) <= set("|-")
    assert cells(table[2])[:5] == ["samples", "", "2", "1", "0"]
    rows = {tuple(cells(line)[:2]): line for line in table[3:] if line.startswith("|")}
    assert len(rows) == 4 * 3  # (L1 hole, L1, PSNR, SSIM) x (Telea, mean fill, PConv)
    psnr_pconv = cells(rows[("PSNR", "PConv")])
    assert float(psnr_pconv[2]) == pytest.approx(metrics["psnr/r01-10/no-border"], abs=0.005)
    assert float(psnr_pconv[-1]) == pytest.approx(metrics["psnr"], abs=0.005)
    l1_telea = cells(rows[("L1 hole (%)", "Telea")])
    assert float(l1_telea[3]) == pytest.approx(100 * metrics["baseline/telea/l1_hole/r01-10/border"], abs=0.005)
    csv_lines = files["inpaint_table.csv"].decode().splitlines()
    assert csv_lines[0] == "method,bucket,flag,samples,l1,l1_hole,psnr,ssim"
    assert len(csv_lines) == 1 + 3 * (12 + 1)
    grid = Image.open(io.BytesIO(files["inpaint_grid.png"]))
    assert grid.format == "PNG" and grid.width > 300 and grid.height > 300
    assert np.asarray(grid.convert("L")).std() > 10  # pictures, not a blank canvas


def test_grid_keeps_the_first_eight_samples_and_validation_keeps_none():
    ev = InpaintEvaluator(EvalContext((), CPU, detailed=True))
    plain = InpaintEvaluator(EvalContext((), CPU))
    for seed in range(2):
        output, targets, inputs = batch(seed)
        ev.update(output, targets, inputs)
        plain.update(output, targets, inputs)
    assert len(ev.samples) == 8 and ev.samples[6]["title"] == "r01-10/no-border"  # batch 2, sample 0
    first = batch(0)
    holes = first[1][1][0, 0] < 0.5
    assert (ev.samples[0]["input"][holes.numpy()] == 255).all()  # holes shown white
    assert plain.samples == [] and set(plain.artifacts()) == {"inpaint_table.md", "inpaint_table.csv"}


def test_rejects_bucket_indices_out_of_range():
    output, (image, mask, bucket, border), inputs = batch()
    ev = InpaintEvaluator(EvalContext((), CPU))
    with pytest.raises(ValueError, match="bucket"):
        ev.update(output, (image, mask, torch.full_like(bucket, 6), border), inputs)


# --- two gloo ranks, half the batch each ---------------------------------------------------------


def _rank(rank: int, world: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        output, targets, inputs = batch()
        part = slice(rank, None, world)  # interleaved: each rank holds buckets of the other's too
        ev = InpaintEvaluator(EvalContext((), CPU))
        ev.update(output[part], tuple(t[part] for t in targets), tuple(t[part] for t in inputs))
        results[rank] = ev.compute()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_report_what_one_process_reports():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_rank, args=(2, port, results), nprocs=2, start_method="spawn")
        ranks = [dict(results[r]) for r in range(2)]
    output, targets, inputs = batch()
    one = InpaintEvaluator(EvalContext((), CPU))
    one.update(output, targets, inputs)
    single = one.compute()
    for got in ranks:
        assert got.keys() == single.keys()
        assert all(got[k] == pytest.approx(single[k], rel=1e-12) for k in single)
