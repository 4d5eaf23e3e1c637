"""Real-world architectures, built from code or config with random weights (nothing downloaded).

Each entry is a torchvision, timm or Hugging Face transformers model shrunk as far as its
architecture allows (few layers, narrow widths, small images and sequences) so that the
whole zoo runs in seconds on two CPU cores. ``build()`` returns a fresh model in eval mode,
seeded with ``torch.manual_seed(0)``; ``inputs()`` returns the positional ``args`` and
keyword ``kwargs`` to call it with, drawn from a seeded ``torch.Generator``. Tags say what
some torchscope features treat specially: ``data_dependent`` (shapes that depend on values:
detection's nonzero and NMS, wav2vec2), ``moe`` (mixture-of-experts routing), ``cache``
(a ``DynamicCache`` in the output), ``shared_layers`` (one layer applied many times).
``tests/test_real_zoo.py`` checks every entry against PyTorch itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torchvision
import transformers
from torch import nn

FAMILIES = (
    "torchvision_classifier",
    "torchvision_segmentation",
    "torchvision_detection",
    "rnn",
    "timm_convnext",
    "timm_vit",
    "timm_efficientnet",
    "bert",
    "gpt2",
    "t5",
    "llama",
    "whisper",
    "wav2vec2",
    "clip",
    "mixtral",
    "albert",
)


@dataclass(frozen=True)
class Inputs:
    """Positional and keyword arguments of one forward call."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RealModel:
    """One real architecture and the call to make on it.

    ``family`` is one of :data:`FAMILIES`; ``data_dependent`` marks forwards whose shapes
    depend on tensor values; ``moe`` mixture-of-experts layers.
    """

    name: str
    family: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], Inputs]
    data_dependent: bool = False
    moe: bool = False
    cache: bool = False
    shared_layers: bool = False

    def __repr__(self) -> str:
        return self.name


def _seeded(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return make().eval()

    return build


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(1)


def _images(*shape: int) -> Callable[[], Inputs]:
    return lambda: Inputs((torch.randn(*shape, generator=_gen()),))


def _tokens(
    batch: int, length: int, vocab: int = 100, generator: torch.Generator | None = None
) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=generator or _gen())


# ---------------------------------------------------------------------------------------------
# torchvision


class BiGRUTagger(nn.Module):
    """Embedding, two-layer bidirectional GRU, a tag per token: returns (logits, h_n)."""

    def __init__(self, vocab: int = 50, dim: int = 16, hidden: int = 24, tags: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h_n = self.gru(self.embed(tokens))
        return self.head(out), h_n


def _detector() -> nn.Module:
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=3,
        min_size=64,
        max_size=64,
        rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=20,
        box_detections_per_img=10,
        box_score_thresh=0.0,
    )


def _detector_inputs() -> Inputs:
    g = _gen()
    return Inputs(([torch.rand(3, 64, 64, generator=g), torch.rand(3, 48, 64, generator=g)],))


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers


def _bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return transformers.BertModel(config)


def _bert_inputs() -> Inputs:
    ids = _tokens(2, 12)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return Inputs(kwargs={"input_ids": ids, "attention_mask": mask})


def _gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def _gpt2_inputs() -> Inputs:
    return Inputs(kwargs={"input_ids": _tokens(2, 10), "use_cache": True})


def _t5() -> nn.Module:
    config = transformers.T5Config(
        vocab_size=100,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        decoder_start_token_id=0,
    )
    return transformers.T5Model(config)


def _t5_inputs() -> Inputs:
    g = _gen()
    return Inputs(
        kwargs={
            "input_ids": _tokens(2, 10, generator=g),
            "decoder_input_ids": _tokens(2, 6, generator=g),
        }
    )


def _llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config)


def _causal_inputs() -> Inputs:
    return Inputs(kwargs={"input_ids": _tokens(2, 10), "use_cache": False})


def _whisper() -> nn.Module:
    config = transformers.WhisperConfig(
        vocab_size=100,
        num_mel_bins=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        d_model=32,
        max_source_positions=16,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    return transformers.WhisperModel(config)


def _whisper_inputs() -> Inputs:
    g = _gen()
    features = torch.randn(1, 16, 32, generator=g)  # 2 * max_source_positions frames
    return Inputs(
        kwargs={"input_features": features, "decoder_input_ids": _tokens(1, 5, generator=g)}
    )


def _wav2vec2() -> nn.Module:
    config = transformers.Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        vocab_size=32,
    )
    return transformers.Wav2Vec2Model(config)


def _wav2vec2_inputs() -> Inputs:
    return Inputs((torch.randn(1, 400, generator=_gen()),))


def _clip() -> nn.Module:
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": 100,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    return transformers.CLIPModel(config)


def _clip_inputs() -> Inputs:
    g = _gen()
    return Inputs(
        kwargs={
            "input_ids": _tokens(3, 8, generator=g),
            "pixel_values": torch.randn(2, 3, 32, 32, generator=g),
        }
    )


def _mixtral() -> nn.Module:
    config = transformers.MixtralConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
    )
    return transformers.MixtralForCausalLM(config)


def _albert() -> nn.Module:
    config = transformers.AlbertConfig(
        vocab_size=100,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return transformers.AlbertModel(config)


def _albert_inputs() -> Inputs:
    return Inputs(kwargs={"input_ids": _tokens(2, 12)})


# ---------------------------------------------------------------------------------------------

REAL_ZOO: tuple[RealModel, ...] = (
    RealModel(
        "resnet18",
        "torchvision_classifier",
        _seeded(lambda: torchvision.models.resnet18(weights=None, num_classes=10)),
        _images(1, 3, 64, 64),
    ),
    RealModel(
        "lraspp_mobilenet_v3_large",
        "torchvision_segmentation",
        _seeded(
            lambda: torchvision.models.segmentation.lraspp_mobilenet_v3_large(
                weights=None, weights_backbone=None, num_classes=3
            )
        ),
        _images(1, 3, 64, 64),
    ),
    RealModel(
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "torchvision_detection",
        _seeded(_detector),
        _detector_inputs,
        data_dependent=True,
    ),
    RealModel(
        "bigru_tagger",
        "rnn",
        _seeded(BiGRUTagger),
        lambda: Inputs((torch.randint(0, 50, (2, 7), generator=_gen()),)),
    ),
    RealModel(
        "timm_convnext_atto",
        "timm_convnext",
        _seeded(
            lambda: timm.create_model(
                "convnext_atto", pretrained=False, num_classes=10, depths=(1, 1, 2, 1)
            )
        ),
        _images(1, 3, 64, 64),
    ),
    RealModel(
        "timm_vit_tiny",
        "timm_vit",
        _seeded(
            lambda: timm.create_model(
                "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64, depth=2
            )
        ),
        _images(1, 3, 64, 64),
    ),
    RealModel(
        "timm_mobilenetv3",
        "timm_efficientnet",
        _seeded(
            lambda: timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10)
        ),
        _images(1, 3, 64, 64),
    ),
    RealModel(
        "timm_efficientnet_b0",
        "timm_efficientnet",
        _seeded(lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=10)),
        _images(1, 3, 64, 64),
    ),
    RealModel("hf_bert", "bert", _seeded(_bert), _bert_inputs),
    RealModel("hf_gpt2_cache", "gpt2", _seeded(_gpt2), _gpt2_inputs, cache=True),
    RealModel("hf_t5", "t5", _seeded(_t5), _t5_inputs, cache=True),
    RealModel("hf_llama", "llama", _seeded(_llama), _causal_inputs),
    RealModel("hf_whisper", "whisper", _seeded(_whisper), _whisper_inputs, cache=True),
    RealModel("hf_wav2vec2", "wav2vec2", _seeded(_wav2vec2), _wav2vec2_inputs, data_dependent=True),
    RealModel("hf_clip", "clip", _seeded(_clip), _clip_inputs),
    RealModel("hf_mixtral", "mixtral", _seeded(_mixtral), _causal_inputs, moe=True),
    RealModel("hf_albert", "albert", _seeded(_albert), _albert_inputs, shared_layers=True),
)
