"""bgl.metrics"""

from bgl.metrics.image import psnr, ssim

__all__ = ["psnr", "ssim"]
