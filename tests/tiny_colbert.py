"""Tiny random ColBERT checkpoints in the layouts real ones ship in, written by the tests (no downloads).

- Stanford ColBERT (colbert-ir/colbertv2.0, answerai-colbert-small-v1): `HF_ColBERT.save_pretrained` writes
  the BERT under `bert.` and a bias-free `linear.weight` in one file; ColBERT writes its config beside it
  as `artifact.metadata`.
- PyLate ModernBERT (lightonai/GTE-ModernColBERT-v1): a ModernBERT with `[Q] `/`[D] ` added to its
  byte-level BPE tokenizer, a bias-free `1_Dense`, conventions in `config_sentence_transformers.json`.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from tests.tiny_models import WORDS, _config, _tokenizer

STANFORD_METADATA = {"query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_token": "[Q]",
                     "doc_token": "[D]", "query_maxlen": 12, "doc_maxlen": 24, "attend_to_mask_tokens": False,
                     "mask_punctuation": True, "dim": 16, "similarity": "cosine", "interaction": "colbert"}
PYLATE_CONFIG = {"query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 12, "document_length": 24,
                 "attend_to_expansion_tokens": False, "skiplist_words": list(string.punctuation),
                 "do_query_expansion": True, "similarity_fn_name": "MaxSim", "model_type": "ColBERT"}


def make_stanford_colbert(folder: Path, seed: int = 0, linear: bool = True, metadata: dict | None = None) -> Path:
    """A random HF_ColBERT (BERT hidden 32, linear 32 → 16); `linear=False` leaves the projection out."""
    from safetensors.torch import save_file
    from transformers import BertModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = _config()
    bert = BertModel(config).eval()
    state = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    if linear:
        state["linear.weight"] = torch.randn(16, config.hidden_size) * 0.2
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["HF_ColBERT"]
    config.save_pretrained(str(folder))
    _tokenizer(folder)
    (folder / "artifact.metadata").write_text(json.dumps(STANFORD_METADATA if metadata is None else metadata))
    return folder


def _bpe_tokenizer(folder: Path):
    """A byte-level BPE like ModernBERT's ([CLS] $A [SEP], no prefix space), with PyLate's added markers."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = Tokenizer(BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]", model_max_length=64,
                                   model_input_names=["input_ids", "attention_mask"])
    fast.add_tokens(["[Q] ", "[D] "])  # what PyLate does before it saves
    fast.save_pretrained(str(folder))
    return fast


def make_pylate_modernbert(folder: Path, seed: int = 0) -> Path:
    """A random PyLate ColBERT on a ModernBERT (hidden 32, Dense 32 → 16 without bias)."""
    from safetensors.torch import save_file
    from transformers import ModernBertConfig, ModernBertModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _bpe_tokenizer(folder)
    config = ModernBertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=64, local_attention=8,
                              global_attn_every_n_layers=2, pad_token_id=3, cls_token_id=1, sep_token_id=2,
                              bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    config.architectures = ["ModernBertModel"]
    ModernBertModel(config).eval().save_pretrained(str(folder))
    dense = folder / "1_Dense"
    dense.mkdir(exist_ok=True)
    (dense / "config.json").write_text(json.dumps({
        "in_features": 32, "out_features": 16, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False}))
    save_file({"linear.weight": torch.randn(16, 32) * 0.2}, str(dense / "model.safetensors"))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 23, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(PYLATE_CONFIG))
    return folder
