"""Typed configs, split by purpose, serializable to JSON; pluggable parts are named by strings.

EncoderConfig: which frozen vision encoder and which of its tokens the projector sees.
TextConfig: which frozen text space the projector aims at.
ProjectorConfig: connector family and its options (build_projector(family, in_dim, out_dim, **options)).
TrainConfig: how the projector is trained.
CaptionConfig: for the caption loss only, how the connector talks to the frozen LM (the LM is the text space's).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

TOKEN_MODES = ("all", "patch", "cls", "mean", "cls+mean", "mean+max", "cls+mean+max", "cls+maxgrid", "cls+cells")
POOLINGS = ("mean", "cls", "none")  # applied to projector outputs: mean of tokens, first token, keep all tokens
DEVICES = ("auto", "cpu", "cuda", "mps")
CAPTION_MODES = ("prefix", "xattn")


def _check(value, allowed, what):
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(str, allowed))}; got {value!r}")


@dataclass
class EncoderConfig:
    name: str = "vit-s14"
    tokens: str = "all"

    def __post_init__(self):
        _check(self.tokens, TOKEN_MODES, "token selection")


@dataclass
class TextConfig:
    name: str = "smollm2-135m"


@dataclass
class ProjectorConfig:
    family: str = "linear"
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        from .projectors.base import _resolve, check_options  # validates mlpNx_gelu spellings too

        cls, from_name = _resolve(self.family)
        check_options(self.family, cls, {**self.options, **from_name})


@dataclass
class TrainConfig:
    loss: str = "infonce"
    pooling: str = "mean"
    steps: int = 1000
    lr: float = 1e-2
    batch_size: int = 256
    warmup_steps: int = 20
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "auto"
    eval_every: int = 50
    aux_loss_weight: float = 0.01  # MoE load balancing, as in Switch Transformer
    standardize: bool = True  # set the projector's frozen input mean/std from the training features
    hard_negatives: bool = False  # scenes: also contrast each pair with its own color/role-swapped twins (NegCLIP)

    def __post_init__(self):
        from .losses import LOSSES

        _check(self.loss, LOSSES + ("caption",), "loss")
        if self.loss == "caption" and self.pooling != "none":
            raise ValueError("the caption loss feeds every projected token to the LM: use pooling 'none'")
        _check(self.pooling, POOLINGS, "pooling")
        if self.hard_negatives and self.loss not in ("infonce", "sigmoid"):
            raise ValueError(f"hard negatives need loss infonce or sigmoid, not {self.loss!r}")
        _check(self.device, DEVICES, "device")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # AdamW moves every weight by about lr per step, so a rate above 1 only diverges (inf, 1e12 ...)
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr <= 1):
            raise ValueError(f"lr must be a number in (0, 1] (AdamW moves each weight by about lr per step), "
                             f"got {self.lr}")
        if self.warmup_steps < 0 or self.eval_every < 0:
            raise ValueError("warmup_steps and eval_every must be >= 0")


@dataclass
class CaptionConfig:
    """prefix: the visual tokens are LM input embeddings (LLaVA); xattn: gated cross-attention blocks in front of
    every `every`-th decoder layer read them (Flamingo), trained together with the connector."""

    mode: str = "prefix"
    every: int = 4
    prompt: str = "Describe the image."

    def __post_init__(self):
        _check(self.mode, CAPTION_MODES, "caption mode")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if not self.prompt.strip():
            raise ValueError("the caption prompt must not be empty")


# What a caption run needs that the retrieval defaults get wrong: every projected token goes through a 135 M LM, so
# small batches, few steps, a lower learning rate (measured in BENCHMARKS.md, "Captioning through the frozen LM").
CAPTION_TRAIN = {"pooling": "none", "steps": 200, "lr": 1e-3, "batch_size": 8, "warmup_steps": 10, "eval_every": 0}
# Few visual tokens per family: each one is a position the LM runs over in every step (8 to 16, as in issue 6).
CAPTION_OPTIONS = {"resampler": {"num_queries": 8}, "qformer": {"num_queries": 8}, "pixel_shuffle": {"scale": 4},
                   "cabstractor": {"output_side": 3}, "multidepth": {"groups": 2, "scale": 4, "last_scale": 8}}


@dataclass
class ExperimentConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        unknown = set(d) - {"encoder", "text", "projector", "train", "caption"}
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}; expected encoder, text, projector, train, "
                             "caption")
        return cls(
            encoder=EncoderConfig(**d.get("encoder", {})),
            text=TextConfig(**d.get("text", {})),
            projector=ProjectorConfig(**d.get("projector", {})),
            train=TrainConfig(**d.get("train", {})),
            caption=CaptionConfig(**d.get("caption", {})),
        )


PRESETS: dict[str, ExperimentConfig] = {
    # The classic projector lesson: a 768 -> 1024 -> 512 mlp2x_gelu head trained with cosine loss
    # (32 synthetic pairs, 200 steps, lr 3e-4; the lesson reports the loss falling from about 1.07 to 0.80).
    "classic-lesson": ExperimentConfig(
        encoder=EncoderConfig("vit-s14", "cls+mean"),
        projector=ProjectorConfig("mlp2x_gelu", {"hidden_dim": 1024}),
        train=TrainConfig(loss="cosine", steps=200, lr=3e-4, batch_size=32, warmup_steps=0, standardize=False),
    ),
    # The strongest pooled recipe measured here: ViT-S/14 concat(CLS, mean patches), linear, InfoNCE.
    "pooled-linear": ExperimentConfig(
        encoder=EncoderConfig("vit-s14", "cls+mean"),
        projector=ProjectorConfig("linear"),
        train=TrainConfig(loss="infonce", steps=1000, lr=1e-2, batch_size=256),
    ),
    # LLaVA-1.5's connector on every patch token.
    "llava-1.5": ExperimentConfig(
        encoder=EncoderConfig("vit-s14", "patch"),
        projector=ProjectorConfig("mlp2x_gelu"),
        train=TrainConfig(loss="infonce", pooling="mean", steps=300, lr=1e-3, batch_size=64),
    ),
    # LLaVA stage 1 through the frozen SmolLM2-135M: 8 learned queries over the 256 patch tokens.
    "caption-stage1": ExperimentConfig(
        encoder=EncoderConfig("vit-s14", "patch"),
        projector=ProjectorConfig("resampler", {"num_queries": 8}),
        train=TrainConfig(loss="caption", **CAPTION_TRAIN),
    ),
    # The built-in Describe captioner (issue 18 item 3, BENCHMARKS.md "Captions right on every attribute"): ViT-S/14
    # read after blocks 4 and 12, each depth through its own pixel shuffle, both token groups in the LM's prefix
    # (block 4 names color and position, block 12 the shape); trained on PRESET_DATA's 2000 one-object scenes.
    "caption-describe": ExperimentConfig(
        encoder=EncoderConfig("vit-s14@4+12", "patch"),
        projector=ProjectorConfig("multidepth", {"groups": 2, "scale": 4, "last_scale": 8}),
        train=TrainConfig(loss="caption", pooling="none", steps=300, lr=1e-3, batch_size=8, warmup_steps=30,
                          eval_every=0),
    ),
    # Relation captions of two-object scenes ("a red circle left of a blue square"; BENCHMARKS.md, the relation
    # table of "Captions right on every attribute"): the Describe connector at twice the learning rate and 400 steps.
    "caption-relations": ExperimentConfig(
        encoder=EncoderConfig("vit-s14@4+12", "patch"),
        projector=ProjectorConfig("multidepth", {"groups": 2, "scale": 4, "last_scale": 8}),
        train=TrainConfig(loss="caption", pooling="none", steps=400, lr=2e-3, batch_size=8, warmup_steps=40,
                          eval_every=0),
    ),
}
# the training set a preset was measured with, where it matters (caption-eval --preset and the Describe built-in)
PRESET_DATA = {"caption-describe": {"dataset": "scenes-1obj", "n_train": 2000, "objects": 1},
               "caption-relations": {"dataset": "scenes-2obj", "n_train": 2000, "objects": 2}}


def preset(name: str) -> ExperimentConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return ExperimentConfig.from_dict(PRESETS[name].to_dict())  # a fresh copy
