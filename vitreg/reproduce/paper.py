"""The published figures that `vitreg reproduce` shows beside its own, with where each comes from.

Every value here is copied from the papers (Darcet et al., *Vision Transformers Need Registers*, ICLR 2024, and the
reproducibility study of registers in small ViTs); none is computed. Their models are ViT-S to ViT-g trained for
hundreds of epochs on ImageNet-scale data; ours are a few-million-parameter ViT trained for minutes on generated
scenes, so only the direction of a difference can be compared, never the value.
"""

from __future__ import annotations

from typing import Any

PAPER = "Darcet et al., Vision Transformers Need Registers (ICLR 2024)"
TTR_PAPER = "Jiang, Dravid et al., Vision Transformers Don't Need Trained Registers (2025)"
STUDY = "Registers in Small Vision Transformers: a reproducibility study (TMLR)"

# Fig. 3 / Sec. 2.1: DINOv2 ViT-g, output patch-token norms
ARTIFACTS: dict[str, Any] = {
    "source": f"{PAPER}, Fig. 3 and Sec. 2.1 (DINOv2 ViT-g/14, output patch tokens)",
    "cutoff": 150.0,
    "outlier_ratio": 0.023,  # about 2.3% of patch tokens
    "norm_ratio": 10.0,  # about 10x the norm of the other tokens
}

# Fig. 4: where and when (DINOv2 ViT-g, 40 blocks)
EMERGENCE: dict[str, Any] = {
    "source": f"{PAPER}, Fig. 4 (DINOv2 ViT-g/14, 40 blocks)",
    "first_layer": 15,
    "depth": 40,
    "first_training_fraction": 1 / 3,  # "after about one third of training"
    "min_model": "ViT-L",
}

# Fig. 5: local information, normal vs outlier patch tokens (DINOv2 ViT-g)
LOCAL: dict[str, Any] = {
    "source": f"{PAPER}, Fig. 5b (DINOv2 ViT-g/14)",
    "position_accuracy": {"normal": 0.417, "outlier": 0.228},
    "pixel_error": {"normal": 18.38, "outlier": 25.23},
    "study_source": f"{STUDY}: MLP pixel reconstruction, DeiT-III Small",
    "study_pixel_mse": {"normal": 120.02, "outlier": 176.54},
}

# Table 1: linear probe on one token, ImageNet-1k top-1 (DINOv2 ViT-g)
GLOBAL: dict[str, Any] = {
    "source": f"{PAPER}, Table 1 (DINOv2 ViT-g/14, ImageNet-1k linear probe on one token)",
    "top1": {"cls": 0.860, "normal": 0.658, "outlier": 0.690},
}

# Table 2a: linear evaluation with frozen features, without and with registers
LINEAR: dict[str, Any] = {
    "source": f"{PAPER}, Table 2a (linear probes on frozen features)",
    "rows": {
        "DeiT-III": {"imagenet_top1": (0.847, 0.847), "ade20k_miou": (0.389, 0.391), "nyud_rmse": (0.511, 0.512)},
        "OpenCLIP": {"imagenet_top1": (0.782, 0.781), "ade20k_miou": (0.266, 0.267), "nyud_rmse": (0.702, 0.661)},
        "DINOv2": {"imagenet_top1": (0.843, 0.848), "ade20k_miou": (0.466, 0.479), "nyud_rmse": (0.378, 0.366)},
    },
}

# Table 3: LOST CorLoc (VOC07, VOC12, COCO20k), without -> with registers
CORLOC: dict[str, Any] = {
    "source": f"{PAPER}, Table 3 (LOST unsupervised object discovery, CorLoc)",
    "datasets": ("VOC07", "VOC12", "COCO20k"),
    "rows": {
        "DeiT-III": ((0.117, 0.131, 0.107), (0.271, 0.327, 0.251)),
        "OpenCLIP": ((0.388, 0.443, 0.310), (0.371, 0.420, 0.279)),
        "DINOv2": ((0.353, 0.402, 0.269), (0.554, 0.600, 0.420)),
    },
    "study_note": f"{STUDY}: DeiT-III Small did not show the CorLoc gain with registers",
}

# Fig. 12: cost of registers
OVERHEAD: dict[str, Any] = {
    "source": f"{PAPER}, Fig. 12",
    "flops_4": 0.02,  # "below 2%" for 4 registers
    "flops_16": 0.06,  # "up to 6%" for 16 registers
}

# Fig. 8: ablation of the number of registers (DINOv2 ViT-L)
ABLATION: dict[str, Any] = {
    "source": f"{PAPER}, Fig. 8 (DINOv2)",
    "claim": "one register is enough to remove the artifacts; more registers help downstream performance",
}

# Test-time registers: register neurons moved into an untrained extra token at inference
TTR: dict[str, Any] = {
    "source": f"{TTR_PAPER}: register neurons, test-time registers",
}
