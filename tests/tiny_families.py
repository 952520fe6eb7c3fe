"""Tiny random cross-encoders of each encoder family rayrank supports, written by the tests (no downloads).

Each is the family's sequence-classification class at hidden 32 and 2 layers, with a small tokenizer
of the family's kind (WordPiece, sentencepiece-like Unigram, byte-level BPE), its special tokens and
its pair template, so that `sentence_transformers.CrossEncoder` and rayrank load the same checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_models import WORDS, _tokenizer

FAMILIES = ("bert", "xlm-roberta", "modernbert", "electra", "deberta-v2")

_SIZE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "num_labels": 1, "initializer_range": 0.2}  # wide enough that random logits spread
_CORPUS = [" ".join(WORDS[i:i + 7]) for i in range(len(WORDS))] + ["0123456789 !?.,;:'\"()-"]


def _trained(folder: Path, model, trainer, specials: dict[str, str], pair: str, input_names: list[str],
             pre_tokenizer, decoder, length: int):
    """A `tokenizers` model trained on a small corpus, with the family's template, saved as a fast tokenizer."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(model)
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoder
    tok.train_from_iterator(_CORPUS, trainer)
    bos, eos = specials["cls_token"], specials["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=pair.format(bos=bos, eos=eos),
        special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=length, model_input_names=input_names,
                                   **specials)
    fast.save_pretrained(str(folder))
    return fast


def _unigram(folder: Path, specials: dict[str, str], pair: str, input_names: list[str], length: int):
    """Sentencepiece-like: Metaspace pre-tokenizer and a Unigram model (XLM-R, DeBERTa-v3)."""
    from tokenizers import decoders, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer

    order = list(dict.fromkeys(specials.values()))
    trainer = UnigramTrainer(vocab_size=200, special_tokens=order, unk_token=specials["unk_token"])
    return _trained(folder, Unigram(), trainer, specials, pair, input_names, pre_tokenizers.Metaspace(),
                    decoders.Metaspace(), length)


def _byte_bpe(folder: Path, specials: dict[str, str], length: int):
    """Byte-level BPE with BERT-style specials (ModernBERT's OLMo tokenizer)."""
    from tokenizers import decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    trainer = BpeTrainer(vocab_size=400, special_tokens=list(specials.values()),
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return _trained(folder, BPE(), trainer, specials, "{bos} $A {eos} $B {eos}", ["input_ids", "attention_mask"],
                    pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), length)


def xlm_roberta_tokenizer(folder: Path, length: int = 96):
    """XLM-R's kind of tokenizer, tiny: <s> A </s></s> B </s>, no segment ids (also used by bench/export_large)."""
    specials = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"}
    return _unigram(folder, specials, "{bos} $A {eos} {eos} $B {eos}", ["input_ids", "attention_mask"], length)


_BERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"}


def _build(family: str, folder: Path):
    """(model, tokenizer) of `family`, the tokenizer saved in `folder`."""
    import transformers as tf

    if family in ("bert", "electra"):
        tok = _tokenizer(folder)  # WordPiece with [CLS] A [SEP] B [SEP] and segment ids
        ids = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id}
        if family == "bert":
            return tf.BertForSequenceClassification(tf.BertConfig(**_SIZE, **ids, max_position_embeddings=64)), tok
        config = tf.ElectraConfig(**_SIZE, **ids, embedding_size=16, max_position_embeddings=64)
        return tf.ElectraForSequenceClassification(config), tok
    if family == "xlm-roberta":
        tok = xlm_roberta_tokenizer(folder)
        # RoBERTa positions start after the padding id: 96 tokens need 98 positions.
        config = tf.XLMRobertaConfig(**_SIZE, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                     bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                                     max_position_embeddings=98, type_vocab_size=1)
        return tf.XLMRobertaForSequenceClassification(config), tok
    if family == "deberta-v2":  # v3 settings: relative attention only, no absolute positions or segments
        tok = _unigram(folder, _BERT_SPECIALS, "{bos} $A {eos} $B:1 {eos}:1",
                       ["input_ids", "token_type_ids", "attention_mask"], 96)
        config = tf.DebertaV2Config(**_SIZE, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                    max_position_embeddings=96, type_vocab_size=0, relative_attention=True,
                                    position_biased_input=False, pos_att_type=["p2c", "c2p"], position_buckets=16,
                                    max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True)
        return tf.DebertaV2ForSequenceClassification(config), tok
    if family == "modernbert":
        tok = _byte_bpe(folder, _BERT_SPECIALS, 96)
        # A 16-token local window, so pairs longer than it exercise the sliding-window layers.
        config = tf.ModernBertConfig(**_SIZE, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                     cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                                     bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                                     max_position_embeddings=96, global_attn_every_n_layers=2, local_attention=16,
                                     classifier_pooling="mean")
        return tf.ModernBertForSequenceClassification(config), tok
    raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")


def make_family_cross_encoder(family: str, folder: Path, seed: int = 0) -> Path:
    """A random single-logit cross-encoder of `family` (one of FAMILIES) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, _ = _build(family, folder)
    model.eval().save_pretrained(str(folder))
    return folder
