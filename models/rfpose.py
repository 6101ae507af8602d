"""RF-Pose student (Zhao et al., CVPR 2018): RF heatmap windows -> keypoint confidence maps.

    import models
    from models.rfpose import confidence_map_bce, keypoints_from_maps
    net = models.build("rfpose_student")
    logits = net(horizontal, vertical)        # 2 x (B, 1, T, H, W) -> (B, 14, T, H/2, W/2)
    loss = confidence_map_bce(logits, teacher_maps)
    xy, score = keypoints_from_maps(logits.sigmoid().transpose(1, 2))   # (B, T, 14, 2), (B, T, 14)

The paper gives kernels and strides but not channel widths; ENCODER_CHANNELS and
DECODER_CHANNELS are our choice (37,428,238 parameters), scaled together by ``width``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register
from models.width import scale

NUM_KEYPOINTS = 14  # head, neck, 2x shoulders, elbows, wrists, hips, knees, ankles
ENCODER_CHANNELS = (32, 32, 64, 64, 64, 64, 128, 128, 128, 128)
DECODER_CHANNELS = (128, 64, 32)  # the 4th decoder layer outputs NUM_KEYPOINTS logits


def spatio_temporal_encoder(in_channels: int, channels: list[int]) -> nn.Sequential:
    # 9x5x5 (time x space) kernels; time is padded, never strided, so every frame of the window
    # keeps its own output. Spatial stride 2 on every second layer: 10 layers -> H/32.
    layers: list[nn.Module] = []
    for i, out_channels in enumerate(channels):
        stride = (1, 2, 2) if i % 2 == 1 else (1, 1, 1)
        layers += [
            nn.Conv3d(in_channels, out_channels, (9, 5, 5), stride=stride, padding=(4, 2, 2),
                      bias=False),  # BN follows: a conv bias would be cancelled by its mean
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        ]
        in_channels = out_channels
    return nn.Sequential(*layers)


def pose_decoder(in_channels: int, channels: list[int], num_keypoints: int) -> nn.Sequential:
    # Fractionally strided 3x6x6 convs with 1 x 1/2 x 1/2 stride: padding (1, 2, 2) makes each
    # layer exactly double H and W and keep T. The last layer emits logits (no BN, no ReLU).
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [
            nn.ConvTranspose3d(in_channels, out_channels, (3, 6, 6), stride=(1, 2, 2),
                               padding=(1, 2, 2), bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        ]
        in_channels = out_channels
    layers.append(nn.ConvTranspose3d(in_channels, num_keypoints, (3, 6, 6), stride=(1, 2, 2),
                                     padding=(1, 2, 2)))
    return nn.Sequential(*layers)


class RFPoseStudent(nn.Module):
    """Two encoders (horizontal and vertical heatmap streams), features concatenated, a decoder.

    Input: two (B, C, T, H, W) windows of the same shape. Output: (B, K, T, h, w) confidence-map
    logits with h = 16 * ceil(H / 32), i.e. H / 2 when H is a multiple of 32. Any T >= 1 works:
    the paper's 100-frame windows and short test windows alike.
    """

    def __init__(self, in_channels: int = 1, num_keypoints: int = NUM_KEYPOINTS,
                 width: float = 1.0):
        super().__init__()
        enc = [scale(c, width) for c in ENCODER_CHANNELS]
        dec = [scale(c, width) for c in DECODER_CHANNELS]
        self.horizontal = spatio_temporal_encoder(in_channels, enc)
        self.vertical = spatio_temporal_encoder(in_channels, enc)
        self.decoder = pose_decoder(2 * enc[-1], dec, num_keypoints)

    def forward(self, horizontal: torch.Tensor, vertical: torch.Tensor) -> torch.Tensor:
        if horizontal.dim() != 5 or horizontal.shape != vertical.shape:
            raise ValueError("RF-Pose expects horizontal and vertical heatmaps of the same shape "
                             f"(B, C, T, H, W); got {tuple(horizontal.shape)} and "
                             f"{tuple(vertical.shape)}")
        features = torch.cat([self.horizontal(horizontal), self.vertical(vertical)], dim=1)
        return self.decoder(features)  # (B, 2*C_enc, T, H/32, W/32) -> (B, K, T, H/2, W/2)


@register("rfpose_student")
def rfpose_student(**kwargs) -> RFPoseStudent:
    return RFPoseStudent(**kwargs)


# --- the range-matched student: what a CPU run can train ---------------------------------------

RANGE_MATCHED_CHANNELS = (32, 64, 64, 128)  # encoder; the head runs at the last width


def range_encoder(in_channels: int, channels: list[int]) -> nn.Sequential:
    """(B, C, T, R, A) → (B, C', T, R/8, A): 3×·×· spatio-temporal convs that stride the range axis
    (three times) and keep every angle bin: angle is what places a joint in the image."""
    layers: list[nn.Module] = []
    for i, out_channels in enumerate(channels):
        kernel, stride = ((3, 5, 5), (1, 2, 1)) if i == 0 else ((3, 3, 3), (1, 2, 1) if i < 3 else (1, 1, 1))
        layers += [nn.Conv3d(in_channels, out_channels, kernel, stride=stride,
                             padding=tuple(k // 2 for k in kernel), bias=False),
                   nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


def resampling(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) linear-interpolation weights from ``in_size`` cells onto ``out_size`` over the
    same extent: the learnt angle → image-axis warps start here."""
    centres = (torch.arange(out_size) + 0.5) * in_size / out_size - 0.5
    return (1 - (centres[:, None] - torch.arange(in_size)[None]).abs()).clamp(min=0)


class RangeMatchedStudent(nn.Module):
    """Two encoders, as the paper's, but joined where the geometry joins them.

    Both heatmaps share their first axis, range (or depth): the horizontal one is range × azimuth,
    the vertical one range × elevation. A reflector at range r, azimuth a and elevation e lights
    cell (r, a) of one and (r, e) of the other, so the features meet as an outer product summed
    over range, f[c, e, a] = Σ_r h[c, r, a] · v[c, r, e]: people at different ranges do not mix.
    Two learnt linear warps take elevation to image rows and azimuth to image columns (a camera
    beside the radio sees azimuth as x, elevation as y; the warps start as plain resampling, rows
    flipped: elevation bins run down → up as the simulator writes them, image rows top → down), and
    a small convolutional head turns the (T, h, w) features into 14 confidence-map logits.

    The paper's student (``RFPoseStudent``) squeezes both planes through an H/32 bottleneck and
    lets its decoder learn the whole geometry; with the data and minutes of a CPU run it learns
    where people are but not where their joints are (README: the RF-Pose attempts).

    Input: (B, C, T, R, A) and (B, C, T, R, E) with R divisible by 8. Output (B, K, T, h, w),
    ``map_hw`` = (h, w) (default (E/2, A/2), the half-size maps the recipe renders).
    """

    def __init__(self, in_channels: int = 1, num_keypoints: int = NUM_KEYPOINTS, width: float = 1.0,
                 angles: tuple[int, int] = (64, 64), map_hw: tuple[int, int] | None = None):
        super().__init__()
        enc = [scale(c, width) for c in RANGE_MATCHED_CHANNELS]
        self.horizontal = range_encoder(in_channels, enc)
        self.vertical = range_encoder(in_channels, enc)
        elevations, azimuths = angles
        h, w = map_hw or (elevations // 2, azimuths // 2)
        # elevation bins run down → up, image rows top → down: the row warp starts flipped
        self.rows = nn.Parameter(resampling(h, elevations).flip(1))     # (h, E)
        self.columns = nn.Parameter(resampling(w, azimuths))    # (w, A)
        c = enc[-1]
        self.head = nn.Sequential(
            nn.BatchNorm3d(c),
            nn.Conv3d(c, c, (3, 3, 3), padding=1, bias=False), nn.BatchNorm3d(c), nn.ReLU(inplace=True),
            nn.Conv3d(c, c, (3, 3, 3), padding=1, bias=False), nn.BatchNorm3d(c), nn.ReLU(inplace=True),
            nn.Conv3d(c, num_keypoints, 1))
        # Start at the maps' prior (a joint covers ~1 % of a map's pixels), not at p = 0.5: Adam
        # would spend thousands of steps walking the bias down.
        nn.init.constant_(self.head[-1].bias, -4.6)

    def forward(self, horizontal: torch.Tensor, vertical: torch.Tensor) -> torch.Tensor:
        if (horizontal.dim() != 5 or vertical.dim() != 5 or horizontal.shape[:4] != vertical.shape[:4]
                or horizontal.shape[-1] != self.columns.shape[1] or vertical.shape[-1] != self.rows.shape[1]):
            raise ValueError("the range-matched student expects (B, C, T, R, A) and (B, C, T, R, E) heatmaps "
                             f"with A={self.columns.shape[1]}, E={self.rows.shape[1]}; got "
                             f"{tuple(horizontal.shape)} and {tuple(vertical.shape)}")
        h, v = self.horizontal(horizontal), self.vertical(vertical)       # (B, C, T, R', A|E)
        image = torch.einsum("bctea,ye,xa->bctyx", join_by_range(h, v), self.rows, self.columns)
        return self.head(image)


def join_by_range(horizontal: torch.Tensor, vertical: torch.Tensor) -> torch.Tensor:
    """(B, C, T, R, A) and (B, C, T, R, E) → (B, C, T, E, A): the mean over range of the two
    planes' outer product, so only features at the same range meet."""
    return torch.einsum("bctra,bctre->bctea", horizontal, vertical) / horizontal.shape[3]


@register("rfpose_range_matched")
def rfpose_range_matched(**kwargs) -> RangeMatchedStudent:
    return RangeMatchedStudent(**kwargs)


def confidence_map_bce(logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary cross-entropy against the teacher's confidence maps (values in [0, 1]).

    Each keypoint map is an independent per-pixel "is the joint here" probability (the paper's
    loss), so this is BCE, not a softmax over pixels; mean over every pixel of every map.
    """
    if logits.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(logits.shape)} and teacher maps "
                         f"{tuple(teacher.shape)} differ in shape")
    return F.binary_cross_entropy_with_logits(logits, teacher.to(logits.dtype))


def keypoints_from_maps(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence maps (..., H, W) -> keypoint coordinates (..., 2) as (x, y) and scores (...).

    Coordinates are in map pixels (x = column, y = row): the argmax, moved a quarter pixel
    towards the larger of its two neighbours on each axis, which halves the quantisation error
    of a coarse map (the usual heatmap decoding). The score is the map's maximum.
    """
    *lead, h, w = maps.shape
    flat = maps.reshape(-1, h, w)  # (N, H, W)
    score, index = flat.flatten(1).max(dim=1)  # (N,)
    y, x = index // w, index % w
    n = torch.arange(flat.shape[0], device=maps.device)

    def shift(before: torch.Tensor, after: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        return 0.25 * torch.sign(after - before) * inside

    dx = shift(flat[n, y, (x - 1).clamp(min=0)], flat[n, y, (x + 1).clamp(max=w - 1)],
               (x > 0) & (x < w - 1))
    dy = shift(flat[n, (y - 1).clamp(min=0), x], flat[n, (y + 1).clamp(max=h - 1), x],
               (y > 0) & (y < h - 1))
    xy = torch.stack([x + dx, y + dy], dim=-1).to(maps.dtype)  # (N, 2)
    return xy.reshape(*lead, 2), score.reshape(lead)
