"""Partial convolutions and the PConv U-Net (Liu et al., "Image Inpainting for Irregular Holes
Using Partial Convolutions", ECCV 2018).

    import models
    net = models.build("pconv_unet")                 # 8 encoder layers, for 512x512 inputs
    net = models.build("pconv_unet", depth=7)        # for 256x256 inputs
    out = net(image * mask, mask)                    # mask: (B, 1 or 3, H, W), 1 = known pixel
    net.set_encoder_bn_frozen(True)                  # the paper's fine-tuning stage

Losses are in ``models.pconv_loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register
from models.width import scale

ENCODER_KERNELS = (7, 5, 5, 3, 3, 3, 3, 3)
ENCODER_CHANNELS = (64, 128, 256, 512, 512, 512, 512, 512)


class PartialConv2d(nn.Conv2d):
    """``forward(x, mask) -> (out, new_mask)`` with out = W·(X⊙M)·sum(1)/sum(M) + b where the
    window holds any valid pixel, 0 elsewhere; new_mask is 1 exactly there.

    ``mask`` is binary, (B, 1, H, W) or (B, C_in, H, W). sum(1) and sum(M) run over the whole
    window, channels included, so a 1-channel mask acts as C_in identical channels. The new mask
    has 1 channel for a 1-channel mask and C_out channels (all equal) for a multi-channel one.
    Zero padding counts as hole, which renormalises the border too.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError("PartialConv2d supports groups=1 and zero padding only")
        # Non-persistent: a constant, so it stays out of state dicts but follows .to(device).
        self.register_buffer("mask_kernel", torch.ones(1, 1, *self.kernel_size),
                             persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if (mask.dim() != 4 or mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]
                or mask.shape[1] not in (1, x.shape[1])):
            raise ValueError(f"mask {tuple(mask.shape)} does not fit input {tuple(x.shape)}: "
                             "expected (B, 1, H, W) or (B, C, H, W)")
        # Counts reach C_in*k*k (4608 for 512 channels, 3x3): exact in float32 but not in
        # float16/bfloat16, so the mask path runs outside autocast.
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            valid = F.conv2d(mask.float().sum(1, keepdim=True), self.mask_kernel,
                             stride=self.stride, padding=self.padding, dilation=self.dilation)
            new_mask = (valid > 0).float()  # (B, 1, H', W')
            window = mask.shape[1] * self.mask_kernel.numel()
            ratio = window / valid.clamp(min=1.0) * new_mask
        out = F.conv2d(x * mask.to(x.dtype), self.weight, None, self.stride, self.padding,
                       self.dilation)
        out = out * ratio.to(out.dtype)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1).to(out.dtype) * new_mask.to(out.dtype)
        new_mask = new_mask.to(mask.dtype)
        if mask.shape[1] > 1:
            new_mask = new_mask.expand(-1, self.out_channels, -1, -1)
        return out, new_mask


class PConvBlock(nn.Module):
    """Partial conv, optional BN, optional activation; carries the mask alongside."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 batch_norm: bool, activation: nn.Module | None):
        super().__init__()
        # Bias only where no BN follows: BN's own shift makes a conv bias redundant.
        self.conv = PartialConv2d(in_channels, out_channels, kernel, stride=stride,
                                  padding=kernel // 2, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.act = activation if activation is not None else nn.Identity()

    def forward(self, x, mask):
        x, mask = self.conv(x, mask)
        return self.act(self.bn(x)), mask


class PConvUNet(nn.Module):
    """Encoder: ``depth`` stride-2 partial convs (kernels 7,5,5,3,..., channels 64,128,256,512,...),
    BN except on the first layer, ReLU. Decoder: nearest x2 upsampling of features and mask,
    concatenation with the encoder's skip (features and masks), 3x3 partial conv, BN and
    LeakyReLU(0.2); the last layer's skip is the input image and mask, and it outputs
    ``in_channels`` channels with neither BN nor activation.

    Input sides must be multiples of 2**depth (512 for depth 8, the paper's 512x512 network).
    """

    def __init__(self, depth: int = 8, in_channels: int = 3, width: float = 1.0,
                 freeze_encoder_bn: bool = False):
        super().__init__()
        if not 1 <= depth <= len(ENCODER_KERNELS):
            raise ValueError(f"depth must be 1..{len(ENCODER_KERNELS)}, got {depth}")
        self.depth = depth
        channels = [in_channels] + [scale(c, width) for c in ENCODER_CHANNELS[:depth]]
        self.encoder = nn.ModuleList(
            PConvBlock(channels[i], channels[i + 1], ENCODER_KERNELS[i], stride=2,
                       batch_norm=i > 0, activation=nn.ReLU(inplace=True))
            for i in range(depth)
        )
        # Decoder layer i (i = depth..1) joins the upsampled features of level i with the skip of
        # level i-1 and outputs that skip's width (so 512+512 -> 512, ..., 64+3 -> 3).
        self.decoder = nn.ModuleList(
            PConvBlock(channels[i] + channels[i - 1], channels[i - 1], 3, stride=1,
                       batch_norm=i > 1, activation=nn.LeakyReLU(0.2) if i > 1 else None)
            for i in range(depth, 0, -1)
        )
        self.freeze_encoder_bn = freeze_encoder_bn

    def set_encoder_bn_frozen(self, frozen: bool) -> PConvUNet:
        # Fine-tuning stage (paper, Sec. 4): encoder BN statistics stay fixed, which lets the
        # hole pixels' features stop skewing the running mean and variance.
        self.freeze_encoder_bn = frozen
        return self.train(self.training)

    def train(self, mode: bool = True) -> PConvUNet:
        super().train(mode)
        if mode and self.freeze_encoder_bn:
            for m in self.encoder.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        side = 2 ** self.depth
        if image.dim() != 4 or image.shape[-2] % side or image.shape[-1] % side:
            raise ValueError(f"PConv U-Net of depth {self.depth} needs (B, C, H, W) with H and W "
                             f"multiples of {side}; got {tuple(image.shape)}")
        # Per-channel masks from the start, so the skip concatenations keep which channels are
        # valid (a 1-channel mask could not describe features-plus-skip).
        mask = mask.to(image.dtype).expand_as(image)
        skips = [(image, mask)]
        x = image
        for layer in self.encoder:
            x, mask = layer(x, mask)
            skips.append((x, mask))
        skips.pop()  # the bottleneck feeds the decoder directly
        for layer in self.decoder:
            skip_x, skip_mask = skips.pop()
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            mask = F.interpolate(mask, scale_factor=2, mode="nearest")
            x, mask = layer(torch.cat([x, skip_x], 1), torch.cat([mask, skip_mask], 1))
        return x  # (B, in_channels, H, W)


@register("pconv_unet")
def pconv_unet(**kwargs) -> PConvUNet:
    return PConvUNet(**kwargs)
