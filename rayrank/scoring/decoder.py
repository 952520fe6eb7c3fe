"""Decoder rerankers scored as cross-encoders: `logit(true) - logit(false)` at a prompt's last token.

Qwen3-Reranker, mxbai-rerank-v2 and bge-reranker-v2-gemma are causal LMs asked "is the document
relevant?"; the score is the logit of the answer token ("yes", "1", "Yes") minus that of its
negation ("no", "0"; none for bge-gemma), read at the last prompt token. That is
sentence-transformers' `LogitScore` (≥ 5.4). Only one or two rows of the LM head matter, so the head
is collapsed at load into a Linear(hidden, 1) holding `W[true] - W[false]` (vLLM's
`from_2_way_softmax` idea): full-vocabulary logits are never computed, on any backend.

The prompt is the checkpoint's chat template over `query` / `document` role messages
(sentence-transformers' convention), or a built-in family recipe (`rayrank.prompts.FAMILIES`),
chosen explicitly with `prompt_template`, or recognised from a model name that states the family.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rayrank.backends.torch_backend import pick_device
from rayrank.config import EngineConfig
from rayrank.errors import UnsupportedModelError
from rayrank.prompts import FAMILIES, ChatTemplate, Family, PromptEncoder, family_by_name
from rayrank.scoring.base import (PairScores, attention_for, chunking_of, make_backend, report_truncation, run_batches,
                                  sigmoid)
from rayrank.scoring.cross_encoder import model_max_length
from rayrank.tokenize import TextTokenizer

logger = logging.getLogger(__name__)

# A decoder's forward costs 10-100x a MiniLM's per token, so the planner's per-batch overhead is noise and a
# smaller budget loses no throughput; it halves peak activation memory (an 8B model's MLP holds ~0.5 GB per
# layer per 8,192 bf16 tokens), leaving room beside the weights on a 24 GB card. A budget the user set wins.
DECODER_MAX_TOKENS_PER_BATCH = 4096

SUPPORTED = ("a causal LM (architectures[0] ending in ForCausalLM, or a sentence-transformers LogitScore "
             "checkpoint) with single-token answers, or a decoder ForSequenceClassification with one label")


def _modules(model_dir: Path) -> list[dict]:
    path = model_dir / "modules.json"
    return json.loads(path.read_text()) if path.is_file() else []


def logit_score_config(model_dir: Path) -> dict | None:
    """The `LogitScore` module's saved config (true/false token ids) when modules.json lists one."""
    for module in _modules(model_dir):
        if module.get("type", "").endswith("LogitScore"):
            path = model_dir / module.get("path", "") / "config.json"
            return json.loads(path.read_text()) if path.is_file() else {}
    return None


def _decoder_only(model_type: str) -> bool:
    """Whether transformers has a causal LM for this type and no masked LM (BERT-likes have both)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def is_decoder(hf_config, model_dir: Path) -> bool:
    """A decoder reranker: a ForCausalLM (as sentence-transformers ≥ 5.4 decides), a checkpoint whose
    modules.json lists LogitScore, or a sequence-classification head on a decoder-only model."""
    arch = (getattr(hf_config, "architectures", None) or [""])[0]
    if arch.endswith("ForCausalLM") or logit_score_config(model_dir) is not None:
        return True
    return arch.endswith("ForSequenceClassification") and _decoder_only(hf_config.model_type)


def decoder_dtype(dtype: str, device: str) -> str:
    """`auto` is bf16 on CUDA for decoders: fp16's range overflows in some (Qwen, Gemma activations reach
    beyond 65,504); CPU keeps `auto` (fp32, or what backend auto measured)."""
    return "bfloat16" if dtype == "auto" and device.startswith("cuda") else dtype


def decoder_config(config: EngineConfig, device: str) -> EngineConfig:
    """The engine config a decoder runs with: bf16 on CUDA and the decoder token budget, unless set."""
    update = {"dtype": decoder_dtype(config.dtype, device)}
    if "max_tokens_per_batch" not in config.model_fields_set:
        update["max_tokens_per_batch"] = DECODER_MAX_TOKENS_PER_BATCH
    return config.model_copy(update=update)


class LastTokenScore(torch.nn.Module):
    """Decoder body + a one-row head read at each row's last real token: the function every backend runs."""

    def __init__(self, body: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        # Batches are right-padded (Encoded.batch): each row's real tokens keep positions 0..n-1 (HF numbers
        # positions from 0 whatever the mask, which is right only for right padding) and causal attention
        # never lets them see the pads after them, so row i reads exactly as unpadded; its score is at n-1.
        last = (attention_mask.sum(dim=1) - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return self.head(torch.gather(hidden, 1, last)[:, 0])[:, 0]


def collapse(lm_head: torch.nn.Linear, true_id: int, false_id: int | None) -> torch.nn.Linear:
    """Linear(hidden, 1) computing `logit[true] - logit[false]` (or `logit[true]`) from the LM head's rows."""
    weight = lm_head.weight[true_id] - (lm_head.weight[false_id] if false_id is not None else 0)
    head = torch.nn.Linear(weight.shape[0], 1, bias=lm_head.bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight.unsqueeze(0))
        if lm_head.bias is not None:
            head.bias.copy_(lm_head.bias[true_id] - (lm_head.bias[false_id] if false_id is not None else 0))
    return head


def _token_id(hf_tokenizer, token: str, model_dir: Path, how: str) -> int:
    """The id of a single-token answer; `how` is the reference code's way to look it up."""
    if how == "vocab":  # sentence-transformers: convert_tokens_to_ids("yes")
        found = hf_tokenizer.convert_tokens_to_ids(token)
        ok = found is not None and found != hf_tokenizer.unk_token_id
    else:  # the family recipes: the first id of tokenizer(token) without special tokens
        ids = hf_tokenizer(token, add_special_tokens=False)["input_ids"]
        found, ok = (ids[0] if ids else None), len(ids) == 1
    if not ok:
        raise UnsupportedModelError(f"{model_dir}: the answer token {token!r} is not one token of this vocabulary; "
                                    f"rayrank supports {SUPPORTED}.")
    return found


class DecoderScorer:
    """Scores pairs with a decoder reranker; `score` is a log-odds (`relevance` is its sigmoid, P(yes) for the
    two-token families, as the Qwen3-Reranker model card computes it)."""

    kind = "cross-encoder"
    takes_instruction = True

    def __init__(self, model_dir: Path, config: EngineConfig) -> None:
        from transformers import AutoConfig, AutoTokenizer

        remote = {"trust_remote_code": config.trust_remote_code, "local_files_only": True}
        hf_config = AutoConfig.from_pretrained(str(model_dir), **remote)
        if getattr(hf_config, "final_logit_softcapping", None):
            raise UnsupportedModelError(f"{model_dir}: final_logit_softcapping={hf_config.final_logit_softcapping} "
                                        f"makes the score non-linear in the LM head; rayrank supports {SUPPORTED}.")
        hf_tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **remote)
        self.tokenizer = TextTokenizer(model_dir)
        self.config = decoder_config(config, pick_device(config.device))
        self.instruction = config.instruction
        family = self._family(model_dir, config, hf_config, hf_tokenizer)
        causal = (hf_config.architectures or [""])[0].endswith("ForCausalLM") or logit_score_config(model_dir)
        model = self._load(model_dir, config, causal, hf_config)
        if causal:
            true_id, false_id = self._answer_ids(model_dir, family, hf_tokenizer)
            head = collapse(model.get_output_embeddings(), true_id, false_id)
        else:
            true_id = false_id = None
            head = model.score
        module = LastTokenScore(model.base_model, head).eval()
        _check_collapse(model, module, hf_tokenizer.pad_token_id, causal and (true_id, false_id), model_dir)
        bos = hf_tokenizer.bos_token_id if family is not None and family.bos else None
        self.prompt = PromptEncoder(self.tokenizer, family.pieces if family else self._chat.pieces, bos)
        # Unset, max_length is what one batch holds (a decoder's 32k-40k positions would not fit a budget).
        self.max_length = model_max_length(hf_config, self.tokenizer,
                                           config.max_length or self.config.max_tokens_per_batch)
        self.answer = (true_id, false_id)  # the vocabulary rows the score reads; None for a classification head
        self.backend = make_backend(self.config, module, model_dir, f"decoder-{true_id}-{false_id}", hf_config)

    def _family(self, model_dir: Path, config: EngineConfig, hf_config, hf_tokenizer) -> Family | None:
        """The built-in family, or None when the checkpoint's chat template is the prompt (`self._chat`)."""
        if config.prompt_template is not None:
            return FAMILIES[config.prompt_template]
        if getattr(hf_tokenizer, "chat_template", None):
            try:
                self._chat = ChatTemplate(hf_tokenizer, model_dir)
                return None
            except UnsupportedModelError:
                if (family := family_by_name(config.model_name, hf_config.model_type)) is None:
                    raise
        elif (family := family_by_name(config.model_name, hf_config.model_type)) is None:
            raise UnsupportedModelError(
                f"{model_dir}: a {hf_config.model_type} decoder reranker with no chat template and no known "
                f"prompt; name a built-in prompt with prompt_template={sorted(FAMILIES)} (CLI --prompt-template) "
                "or save a chat template that renders `query` and `document` role messages in its tokenizer config "
                "(e.g. rayrank.prompts.QWEN3_RERANKER_CHAT_TEMPLATE).")
        logger.info("%s: prompt %r recognised from the model name (set prompt_template to choose another)",
                    config.model_name, family.name)
        return family

    def _load(self, model_dir: Path, config: EngineConfig, causal: bool, hf_config) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
        attn = attention_for(hf_config, config.backend)
        # Loaded at the precision it will run in (an 8B model in fp32 would need 32 GB of host memory first).
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.config.dtype, torch.float32)
        model = auto.from_pretrained(str(model_dir), local_files_only=True, attn_implementation=attn,
                                     trust_remote_code=config.trust_remote_code, dtype=dtype).eval()
        if not causal and model.config.num_labels != 1:
            raise UnsupportedModelError(f"{model_dir} has {model.config.num_labels} labels; rayrank supports "
                                        f"{SUPPORTED}.")
        return model

    def _answer_ids(self, model_dir: Path, family: Family | None, hf_tokenizer) -> tuple[int, int | None]:
        if family is not None:
            false = family.false_token and _token_id(hf_tokenizer, family.false_token, model_dir, "encode")
            return _token_id(hf_tokenizer, family.true_token, model_dir, "encode"), false
        saved = logit_score_config(model_dir) or {}
        if "true_token_id" in saved:
            return saved["true_token_id"], saved.get("false_token_id")
        return (_token_id(hf_tokenizer, "yes", model_dir, "vocab"), _token_id(hf_tokenizer, "no", model_dir, "vocab"))

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str], instruction: str | None = None
                    ) -> PairScores:
        """Score aligned lists of queries and documents, under `instruction` (default: the configured one, then
        the family's); scores come back in input order."""
        scores = np.empty(len(queries), dtype=np.float32)
        if not len(queries):
            return PairScores(scores)
        chunking = chunking_of(self.config)
        encoded = self.prompt.encode(queries, documents, self.max_length, instruction or self.instruction, chunking)
        pad = self.tokenizer.pad_id
        if chunking is None:
            for rows, logits in run_batches(self.backend, encoded, self.config, pad):
                scores[rows] = logits
        else:  # every (query, window) row in the same token-budget batches; the best window wins
            scores.fill(-np.inf)
            for rows, logits in run_batches(self.backend, encoded.encoded, self.config, pad):
                np.maximum.at(scores, encoded.owners[rows], logits)
        report_truncation(encoded.truncated, len(queries), "pairs", self.max_length)
        return PairScores(scores, encoded.truncated)

    def relevance(self, queries: Sequence[str], scores: np.ndarray) -> np.ndarray:
        """Scores in [0, 1]: the sigmoid of the log-odds, P(true) against false (FlagEmbedding's `normalize`)."""
        return sigmoid(scores)


def _check_collapse(model, module: LastTokenScore, pad_id: int | None, answer, model_dir: Path) -> None:
    """Refuse a model whose scores the collapsed module does not reproduce (a logit scale, a custom head):
    two right-padded probe rows against the full model run one row at a time."""
    rows = [list(range(3, 11)), list(range(5, 9))]
    ids = torch.tensor([r + [pad_id or 0] * (8 - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (8 - len(r)) for r in rows])
    with torch.no_grad():
        got = module(ids, mask, torch.zeros_like(ids))
        want = []
        for r in rows:
            if answer:
                logits = model(input_ids=torch.tensor([r]), logits_to_keep=1, use_cache=False).logits[0, -1]
                want.append(logits[answer[0]] - (logits[answer[1]] if answer[1] is not None else 0))
            else:
                want.append(model(input_ids=torch.tensor([r]), use_cache=False).logits[0, 0])
    want = torch.stack(want).float()
    tolerance = 1e-3 if got.dtype == torch.float32 else 5e-2  # half precision rounds to ~1e-2
    if not torch.allclose(got.float(), want, atol=tolerance * max(1.0, float(want.abs().max())), rtol=0):
        raise UnsupportedModelError(f"{model_dir}: the model's head is not a plain linear map of the last hidden "
                                    f"state (collapsed {got.tolist()} vs full {want.tolist()}); rayrank supports "
                                    f"{SUPPORTED}.")
