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
