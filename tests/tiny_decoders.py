"""Tiny random decoder rerankers written by the tests (Qwen3, Qwen2/mxbai-v2, Gemma), no downloads.

Each has a byte-level BPE tokenizer trained here on the test words and the families' prompt words,
so "yes", "no", "Yes", "1" and "0" are single tokens as in the real vocabularies.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rayrank.prompts import QWEN3_RERANKER_CHAT_TEMPLATE
from tests.tiny_models import WORDS

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>"]

# What a plain chat model ships: user/assistant turns only, nothing for the query/document roles.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m.role in ['user', 'assistant', 'system'] %}<|im_start|>{{ m.role }}\n"
    "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}<|im_start|>assistant\n"
)

_PROMPT_TEXT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that "
    "the answer can only be yes or no. Given a web search query, retrieve relevant passages that answer the query "
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant). Relevance: instruction: query: document: "
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing "
    "a prediction of either 'Yes' or 'No'. A: B: <Instruct>: <Query>: <Document>: think Yes No yes no"
)


def _bpe(folder: Path, specials: list[str], extra_tokens: list[str], pad: str, **kwargs):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(WORDS), _PROMPT_TEXT, *["yes no Yes No"] * 50, *["yes", "no", "Yes", "No"] * 50]
    tok.train_from_iterator(corpus * 20, trainer)
    tok.add_tokens(extra_tokens)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, model_max_length=256, **kwargs)
    fast.save_pretrained(str(folder))
    return fast


def _save(folder: Path, model, tokenizer) -> Path:
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval().save_pretrained(str(folder))
    return folder


def _small(**overrides) -> dict:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 256, "initializer_range": 0.2,
            **overrides}


def make_qwen3(folder: Path, seed: int = 0, chat_template: str | None = QWEN3_RERANKER_CHAT_TEMPLATE) -> Path:
    """A Qwen3ForCausalLM reranker (tied embeddings, as Qwen3-Reranker-0.6B) with a pair-role chat template."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = _bpe(folder, QWEN_SPECIALS, ["<think>", "</think>"], "<|endoftext|>", eos_token="<|im_end|>")
    if chat_template is not None:
        tok.chat_template = chat_template
        tok.save_pretrained(str(folder))
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), tie_word_embeddings=True, **_small()))
    return _save(folder, model, tok)


def make_qwen2(folder: Path, seed: int = 0) -> Path:
    """A Qwen2ForCausalLM shaped like mxbai-rerank-v2 (untied head with no chat template of its own)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = _bpe(folder, QWEN_SPECIALS, [], "<|endoftext|>", eos_token="<|im_end|>")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), tie_word_embeddings=False,
                                         **_small()))
    return _save(folder, model, tok)


def make_gemma(folder: Path, seed: int = 0) -> Path:
    """A GemmaForCausalLM shaped like bge-reranker-v2-gemma (tied, BOS first, scored by "Yes" alone)."""
    from transformers import GemmaConfig, GemmaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = _bpe(folder, GEMMA_SPECIALS, [], "<pad>", bos_token="<bos>", eos_token="<eos>")
    torch.manual_seed(seed)
    model = GemmaForCausalLM(GemmaConfig(vocab_size=len(tok), **_small()))
    return _save(folder, model, tok)


def make_qwen3_seq_cls(folder: Path, seed: int = 0) -> Path:
    """A Qwen3ForSequenceClassification with one label (a converted Qwen3-Reranker) and no chat template."""
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    tok = _bpe(folder, QWEN_SPECIALS, ["<think>", "</think>"], "<|endoftext|>", eos_token="<|im_end|>")
    torch.manual_seed(seed)
    model = Qwen3ForSequenceClassification(Qwen3Config(vocab_size=len(tok), num_labels=1, **_small()))
    return _save(folder, model, tok)


def needs_remote_code(folder: Path) -> Path:
    """Mark a checkpoint as custom code (an `auto_map` in its config), as trust_remote_code models are."""
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder
