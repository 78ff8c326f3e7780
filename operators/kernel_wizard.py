"""The bkse KernelWizard network: a learned, non-linear blur generator.

Tran, Pham, Hoai, Nguyen, "Explore Image Deblurring via Encoded Blur Kernel Space", CVPR 2021
(https://github.com/VinAIResearch/blur-kernel-space-exploring, "bkse"). The paper encodes blur
operators as codes k in a latent kernel space: a kernel extractor F(sharp, blurry) -> k and a
blur generator G(sharp, k) -> blurry. DPS and DAPS use G with the released ``GOPRO_wVAE.pth``
weights, a fixed random code k, as the "nonlinear deblur" forward model.

This is an independent re-implementation of the architecture of ``GOPRO_wVAE.pth`` (options
``options/generate_blur/default.yml``: input_nc 3, nf 64, front_RBs 10, back_RBs 20,
kernel_dim 512, use_vae true, KernelExtractor norm none / use_sharp true / n_blocks 4 /
padding reflect, Adapter norm none). With norm "none" the bkse norm layers are parameter-free
identities and the convolutions next to them have no bias; the module indices below keep the
positions those layers take in the official ``nn.Sequential`` containers, so that the official
state dict loads with ``strict=True``.

State-dict keys matched (sources: ``models/kernel_encoding/kernel_wizard.py``,
``models/backbones/resnet.py``, ``models/backbones/unet_parts.py`` of the bkse repository, the
latter as vendored by alexdenker/DEFT ``bkse/models/backbones/unet_parts.py`` and VinAI's own
Blur2Blur ``models/explore/backbones/unet_parts.py``; the loading code of DPS2022/
diffusion-posterior-sampling ``guided_diffusion/measurements.py``), with nf = 64:

- ``feature_extractor.{0,2,4}.{weight,bias}``: 3x3 convs 3->nf, nf->nf (stride 2) twice;
  ``feature_extractor.{6..15}.conv{1,2}.{weight,bias}``: 10 residual blocks without BN.
- ``kernel_extractor.model.1.weight`` (nf, 2 nf, 7, 7); ``kernel_extractor.model.{4,7,10,13,16}
  .weight``: five stride-2 3x3 convs up to 2 kernel_dim channels (no bias);
  ``kernel_extractor.model.{19..22}.conv_block.{1,5}.weight``: 4 ResNet blocks (no bias).
- ``adapter.model.down.0.weight``, ``adapter.model.up.1.{weight,bias}`` (outermost U-Net level);
  ``adapter.model[.submodule]{1..4}.down.1.weight`` and ``.up.1.weight`` (inner levels; the
  up-convolutions are ``ConvTranspose2d`` without bias).
- ``recon_trunk.{0..19}.conv{1,2}.{weight,bias}``: 20 residual blocks; ``recon_trunk.{20,23,26,
  28}.{weight,bias}``: the upsampling head (two PixelShuffle x2 stages). bkse writes the
  width of its last layers as a literal 64; it equals nf in the released model, and this module
  uses nf so that small test networks stay small.

Older bkse revisions (``models/unet_parts.py``) used a ``DoubleConv`` + bilinear upsampling in
the U-Net instead of ``ConvTranspose2d`` (keys ``up.1.double_conv.*``); the repository head,
which DPS/DAPS clone and load strictly, uses ``ConvTranspose2d``, implemented here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Residual branches start at 0.1 x Kaiming scale, as bkse's ``initialize_weights(..., 0.1)``.
_RESIDUAL_INIT_SCALE = 0.1


class ResidualBlockNoBN(nn.Module):
    """x + conv(relu(conv(x))): bkse's ``ResidualBlock_noBN`` (3x3 convs with bias)."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class ResnetBlock(nn.Module):
    """bkse's ``ResnetBlock`` with reflection padding, no norm and no conv bias.

    ``conv_block`` keeps the official layout (pad, conv, norm, relu, pad, conv, norm) with the
    "none" norm as ``nn.Identity``, so the convolutions sit at indices 1 and 5.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=False),
            nn.Identity(),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=False),
            nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class KernelExtractor(nn.Module):
    """The function F of the paper: (sharp, blurry) features -> kernel code mean and std.

    Works on the features of both images concatenated (use_sharp), halves the resolution five
    times and returns the two halves of a ``2 * kernel_dim`` channel map (VAE mean and sigma).
    """

    def __init__(self, nf: int, kernel_dim: int, n_blocks: int) -> None:
        super().__init__()
        self.kernel_dim = kernel_dim
        out_channels = 2 * kernel_dim
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(2 * nf, nf, 7, bias=False),
            nn.Identity(),
            nn.ReLU(),
        ]
        for i in range(5):
            c_in = min(nf * 2**i, out_channels)
            c_out = min(nf * 2 ** (i + 1), out_channels)
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.Identity(), nn.ReLU()]
        layers += [ResnetBlock(out_channels) for _ in range(n_blocks)]
        self.model = nn.Sequential(*layers)

    def forward(
        self, sharp_features: torch.Tensor, blur_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(torch.cat((sharp_features, blur_features), dim=1))
        return out[:, : self.kernel_dim], out[:, self.kernel_dim :]


class UnetLevel(nn.Module):
    """One level of the kernel adapter's U-Net (bkse's ``UnetSkipConnectionBlock``, norm none).

    Inner levels compute ``cat(up(inner(down(x))), leaky_relu(x))``. The skip branch carries the
    LeakyReLU because bkse applies it in place to ``x`` before concatenating ``x``. The innermost
    level concatenates the kernel code to its bottleneck features; the outermost level has no
    skip and ends in ``tanh``.
    """

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: UnetLevel | None = None,
        code_channels: int = 0,
        outermost: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        self.innermost = submodule is None
        down_conv = nn.Conv2d(input_nc or outer_nc, inner_nc, 4, 2, 1, bias=False)
        # Innermost: the bottleneck features (inner_nc) and the kernel code are concatenated;
        # elsewhere the submodule returns its up-path output (inner_nc) and its skip (inner_nc).
        up_in = inner_nc + code_channels if self.innermost else 2 * inner_nc
        up_conv = nn.ConvTranspose2d(up_in, outer_nc, 4, 2, 1, bias=outermost)
        # Registration order down, submodule, up reproduces the official state-dict key order.
        if outermost:
            self.down = nn.Sequential(down_conv)
        else:
            self.down = nn.Sequential(nn.LeakyReLU(0.2), down_conv)
        if submodule is not None:
            self.submodule = submodule
        if outermost:
            self.up = nn.Sequential(nn.ReLU(), up_conv, nn.Tanh())
        else:
            self.up = nn.Sequential(nn.ReLU(), up_conv)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.up(self.submodule(self.down(x), code))
        skip = self.down[0](x)
        inner = self.down[1](skip)
        inner = torch.cat((inner, code), dim=1) if self.innermost else self.submodule(inner, code)
        return torch.cat((self.up(inner), skip), dim=1)


class KernelAdapter(nn.Module):
    """The function G of the paper: features of the sharp image + kernel code -> blur features.

    A five-level U-Net (widths nf, 2 nf, 4 nf, 8 nf, 8 nf) whose bottleneck, at 1/32 of the
    feature resolution, is concatenated with the kernel code. bkse sizes the innermost
    up-convolution as 2 x 8 nf input channels, which presumes kernel_dim = 8 nf (512 = 8 x 64);
    here it takes 8 nf + kernel_dim, the same shape for the released model, so that small test
    networks may choose kernel_dim freely.
    """

    def __init__(self, nf: int, kernel_dim: int) -> None:
        super().__init__()
        level = UnetLevel(nf * 8, nf * 8, code_channels=kernel_dim)
        level = UnetLevel(nf * 4, nf * 8, submodule=level)
        level = UnetLevel(nf * 2, nf * 4, submodule=level)
        level = UnetLevel(nf, nf * 2, submodule=level)
        self.model = UnetLevel(nf, nf, input_nc=nf, submodule=level, outermost=True)

    def forward(self, features: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.model(features, code)


class KernelWizard(nn.Module):
    """bkse's KernelWizard: shared feature extractor, kernel extractor F and blur generator G.

    Image sides must be multiples of ``size_multiple`` (two stride-2 convolutions, then five
    halvings in the U-Net and in F); the kernel code for an ``H x W`` image has shape
    ``(B, kernel_dim, H / 128, W / 128)``: ``(B, 512, 2, 2)`` at 256 x 256.
    """

    size_multiple = 128

    def __init__(
        self,
        nf: int = 64,
        front_blocks: int = 10,
        back_blocks: int = 20,
        kernel_dim: int = 512,
        image_channels: int = 3,
        extractor_blocks: int = 4,
    ) -> None:
        super().__init__()
        self.kernel_dim = kernel_dim
        lrelu = nn.LeakyReLU(0.1)
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(image_channels, nf, 3, 1, 1),
            lrelu,
            nn.Conv2d(nf, nf, 3, 2, 1),
            lrelu,
            nn.Conv2d(nf, nf, 3, 2, 1),
            lrelu,
            *[ResidualBlockNoBN(nf) for _ in range(front_blocks)],
        )
        self.kernel_extractor = KernelExtractor(nf, kernel_dim, extractor_blocks)
        self.adapter = KernelAdapter(nf, kernel_dim)
        self.recon_trunk = nn.Sequential(
            *[ResidualBlockNoBN(nf) for _ in range(back_blocks)],
            nn.Conv2d(nf, nf * 4, 3, 1, 1),
            nn.PixelShuffle(2),
            lrelu,
            nn.Conv2d(nf, nf * 4, 3, 1, 1),
            nn.PixelShuffle(2),
            lrelu,
            nn.Conv2d(nf, nf, 3, 1, 1),
            lrelu,
            nn.Conv2d(nf, image_channels, 3, 1, 1),
        )

    def adapt_kernel(self, sharp: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """G(sharp, code): the blurry image (bkse ``adaptKernel``); images in [0, 1]."""
        out = self.recon_trunk(self.adapter(self.feature_extractor(sharp), code))
        return out + sharp

    def encode_kernel(
        self, sharp: torch.Tensor, blurry: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """F(sharp, blurry): mean and sigma of the kernel code (bkse ``forward``).

        Needs sides of at least 256: F's ResNet blocks reflection-pad its 1/128-scale output.
        """
        return self.kernel_extractor(self.feature_extractor(sharp), self.feature_extractor(blurry))


def init_weights(network: KernelWizard, generator: torch.Generator) -> None:
    """Deterministic random initialisation from ``generator`` (for tests, not a trained model).

    Kaiming-normal (fan-in) weights and zero biases for every convolution, with residual branches
    scaled by 0.1 as in bkse's ``initialize_weights``; so is the output layer, whose result is
    added to the sharp image.
    """
    residual = {
        id(conv)
        for block in network.modules()
        if isinstance(block, ResidualBlockNoBN | ResnetBlock)
        for conv in block.modules()
        if isinstance(conv, nn.Conv2d)
    }
    residual.add(id(network.recon_trunk[-1]))
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, a=0.0, generator=generator)
                if id(module) in residual:
                    module.weight.mul_(_RESIDUAL_INIT_SCALE)
                if module.bias is not None:
                    module.bias.zero_()
