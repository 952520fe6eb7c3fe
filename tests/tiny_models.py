"""Tiny random BERT checkpoints written by the tests: config, vocab and weights, no downloads."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

WORDS = ("the a an of to and in is was for on that with as by it at from this be are or which not "
         "what how why who when where ray cluster python data model query document search rank score "
         "fish sea light sun cat dog run fast slow big small new old good bad one two three").split()


def _vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return specials + WORDS + chars + ["##" + c for c in string.ascii_lowercase + string.digits]


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_vocab())}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64,
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    fast.save_pretrained(str(folder))
    (folder / "vocab.txt").write_text("\n".join(_vocab()) + "\n")
    return fast


def _config(num_labels: int = 1):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                      initializer_range=0.2)  # wide enough that random logits spread


def make_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """A random single-logit BERT cross-encoder that `CrossEncoder` and rayrank both load."""
    from transformers import BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BertForSequenceClassification(_config()).eval().save_pretrained(str(folder))
    _tokenizer(folder)
    return folder


def make_encoder(folder: Path, seed: int = 0, colbert: bool = False) -> Path:
    """A random BERT encoder; with `colbert`, PyLate-style markers, query length and a 32→16 projection."""
    from safetensors.torch import save_file
    from transformers import BertModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BertModel(_config()).eval().save_pretrained(str(folder))
    _tokenizer(folder)
    if colbert:
        (folder / "config_sentence_transformers.json").write_text(json.dumps({
            "query_prefix": "[unused0]", "document_prefix": "[unused1]", "query_length": 12,
            "document_length": 48, "attend_to_expansion_tokens": False}))
        dense = folder / "1_Dense"
        dense.mkdir(exist_ok=True)
        (dense / "config.json").write_text(json.dumps({"in_features": 32, "out_features": 16, "bias": False}))
        save_file({"linear.weight": torch.randn(16, 32)}, str(dense / "model.safetensors"))
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
    return folder
