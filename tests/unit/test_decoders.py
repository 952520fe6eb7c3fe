"""Decoder rerankers as cross-encoders: parity with sentence-transformers and the families' recipes on every
backend, the prompt (instruction, truncation, chunking), the collapsed head, and what is refused."""

import random
import re
import shutil

import numpy as np
import pytest
import torch

from rayrank import Reranker
from rayrank.config import EngineConfig
from rayrank.errors import InvalidInputError, UnsupportedModelError
from rayrank.prompts import BGE_GEMMA_DEFAULT_PROMPT, QWEN3_DEFAULT_INSTRUCTION
from rayrank.scoring.base import chunking_of
from rayrank.scoring.decoder import DECODER_MAX_TOKENS_PER_BATCH, decoder_config, decoder_dtype
from tests.tiny_decoders import (
    PLAIN_CHAT_TEMPLATE,
    make_gemma,
    make_qwen2,
    make_qwen3,
    make_qwen3_seq_cls,
    needs_remote_code,
)
from tests.tiny_models import WORDS

BACKENDS = ["torch", "onnx", "openvino", "auto"]


def _texts(n, lo, hi, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


PAIRS = (_texts(12, 1, 5, 1), _texts(12, 2, 30, 2))


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return make_qwen3(tmp_path_factory.mktemp("qwen3"))


@pytest.fixture(scope="module")
def mxbai(tmp_path_factory):
    # The directory name states the family, as a Hugging Face id would (mixedbread-ai/mxbai-rerank-base-v2).
    return make_qwen2(tmp_path_factory.mktemp("models") / "mxbai-rerank-v2-tiny")


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    return make_gemma(tmp_path_factory.mktemp("models") / "bge-reranker-v2-gemma-tiny")


def _reranker(model, backend, cache_dir, **settings):
    return Reranker(str(model), backend=backend, cache_dir=cache_dir, **settings)


def _causal(model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(str(model)))


def _recipe_scores(model, pieces_of, true, false, bos=False):
    """The families' documented recipes, by hand: each piece tokenized alone, logits at the last token."""
    lm, tok = _causal(model)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for query, document in zip(*PAIRS):
            row = ([tok.bos_token_id] if bos else []) + [i for piece in pieces_of(query, document) for i in ids(piece)]
            logits = lm(input_ids=torch.tensor([row])).logits[0, -1]
            out.append(float(logits[ids(true)[0]] - (logits[ids(false)[0]] if false else 0)))
    return np.array(out, dtype=np.float32)


def _qwen3_recipe(instruction):
    # Qwen/Qwen3-Reranker model card: prefix + formatted pair + suffix.
    prefix = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
              "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    return lambda q, d: [prefix, f"<Instruct>: {instruction}\n<Query>: {q}\n<Document>: {d}", suffix]


def _mxbai_recipe(q, d):
    # mixedbread-ai/mxbai-rerank MxbaiRerankV2.prepare_inputs, no instruction.
    task = ("You are a search relevance expert who evaluates how well documents match search queries. For each "
            "query-document pair, carefully analyze the semantic relationship between them, then provide your "
            "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
    system = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
              "<|im_start|>user\n")
    return [system, f"query: {q}", "\n", f"document: {d}", "\n", task, "<|im_end|>\n<|im_start|>assistant\n"]


def _bge_gemma_recipe(q, d):
    # BAAI/bge-reranker-v2-gemma model card (FlagEmbedding get_inputs): bos, A, sep, B, sep, prompt.
    return [f"A: {q}", "\n", f"B: {d}", "\n", BGE_GEMMA_DEFAULT_PROMPT]


# --- parity --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_chat_template_model_equals_sentence_transformers(qwen3, backend, cache_dir):
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(qwen3)).predict(list(zip(*PAIRS)), activation_fn=torch.nn.Identity(), batch_size=5)
    scores = _reranker(qwen3, backend, cache_dir).score_pairs(*PAIRS).scores
    assert scores.dtype == np.float32 and scores.std() > 0.05  # random weights whose scores do spread
    assert np.abs(scores - reference).max() <= 1e-4


# backend auto (~25 s each: it times every setting) picks one of the three settings compared here; its path for
# decoders is run once, by the chat-template test above.
@pytest.mark.parametrize("backend", BACKENDS[:3])
@pytest.mark.parametrize(("fixture", "recipe", "true", "false", "bos"), [
    ("mxbai", _mxbai_recipe, "1", "0", False),
    ("gemma", _bge_gemma_recipe, "Yes", None, True),
])
def test_builtin_family_equals_its_documented_recipe(request, fixture, recipe, true, false, bos, backend, cache_dir):
    model = request.getfixturevalue(fixture)
    reference = _recipe_scores(model, recipe, true, false, bos)
    scores = _reranker(model, backend, cache_dir).score_pairs(*PAIRS).scores  # family recognised from the name
    assert np.abs(scores - reference).max() <= 1e-4


def test_qwen3_builtin_equals_the_model_card_recipe_and_its_chat_template(qwen3, cache_dir):
    reranker = _reranker(qwen3, "torch", cache_dir, prompt_template="qwen3-reranker")
    reference = _recipe_scores(qwen3, _qwen3_recipe(QWEN3_DEFAULT_INSTRUCTION), "yes", "no")
    assert np.abs(reranker.score_pairs(*PAIRS).scores - reference).max() <= 1e-4
    # QWEN3_RERANKER_CHAT_TEMPLATE (the tiny model's) renders the same prompt through the chat-template path.
    np.testing.assert_allclose(_reranker(qwen3, "torch", cache_dir).score_pairs(*PAIRS).scores, reference,
                               atol=1e-4, rtol=0)
    custom = _recipe_scores(qwen3, _qwen3_recipe("Find fish"), "yes", "no")
    assert np.abs(reranker.score_pairs(*PAIRS, instruction="Find fish").scores - custom).max() <= 1e-4


def test_yes_only_score_is_the_true_logit_as_sentence_transformers_logit_score():
    from sentence_transformers.cross_encoder.modules.logit_score import LogitScore

    from rayrank.scoring.decoder import collapse

    lm_head = torch.nn.Linear(8, 20, bias=True)
    hidden = torch.randn(3, 8)
    logits = {"causal_logits": lm_head(hidden)[:, None, :]}
    for false in (None, 7):
        want = LogitScore(4, false)(dict(logits))["scores"][:, 0]
        torch.testing.assert_close(collapse(lm_head, 4, false)(hidden)[:, 0], want, atol=1e-5, rtol=0)


def test_right_padded_batches_equal_one_row_at_a_time(qwen3, cache_dir):
    batched = _reranker(qwen3, "torch", cache_dir).score_pairs(*PAIRS).scores
    single = _reranker(qwen3, "torch", cache_dir, max_batch_size=1).score_pairs(*PAIRS).scores
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)


def test_converted_sequence_classification_with_a_named_prompt_equals_the_causal_lm(qwen3, tmp_path, cache_dir):
    from transformers import Qwen3ForSequenceClassification

    lm, tok = _causal(qwen3)
    folder = tmp_path / "seq-cls"
    cls = Qwen3ForSequenceClassification(lm.config.__class__(**{**lm.config.to_dict(), "num_labels": 1}))
    cls.model.load_state_dict(lm.model.state_dict())
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    with torch.no_grad():
        cls.score.weight.copy_((lm.lm_head.weight[yes] - lm.lm_head.weight[no])[None])
    cls.config.architectures = ["Qwen3ForSequenceClassification"]
    cls.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    causal = _reranker(qwen3, "torch", cache_dir, prompt_template="qwen3-reranker").score_pairs(*PAIRS).scores
    converted = _reranker(folder, "torch", cache_dir, prompt_template="qwen3-reranker").score_pairs(*PAIRS).scores
    np.testing.assert_allclose(converted, causal, atol=1e-4, rtol=0)


# --- prompt: instruction, truncation, chunking ------------------------------------------------------------------


def test_instruction_changes_the_score_as_sentence_transformers_prompt(qwen3, cache_dir):
    from sentence_transformers import CrossEncoder

    reranker = _reranker(qwen3, "torch", cache_dir)
    default = reranker.score_pairs(*PAIRS).scores
    instructed = reranker.score_pairs(*PAIRS, instruction="Find fish").scores
    assert np.abs(instructed - default).max() > 1e-2
    reference = CrossEncoder(str(qwen3)).predict(list(zip(*PAIRS)), prompt="Find fish",
                                                 activation_fn=torch.nn.Identity())
    assert np.abs(instructed - reference).max() <= 1e-4
    configured = _reranker(qwen3, "torch", cache_dir, instruction="Find fish")
    np.testing.assert_allclose(configured.score_pairs(*PAIRS).scores, instructed, atol=1e-6, rtol=0)
    np.testing.assert_allclose(configured.score("q", ["a doc"], instruction="Other"),
                               reranker.score("q", ["a doc"], instruction="Other"), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fixture", ["qwen3", "mxbai", "gemma"])
def test_truncation_cuts_the_document_and_keeps_the_suffix(request, fixture, cache_dir):
    model = request.getfixturevalue(fixture)
    reranker = _reranker(model, "torch", cache_dir, max_length=160)
    prompt = reranker.scorer.prompt
    long_doc = " ".join(["the cat is a big dog"] * 40)
    full = prompt.encode(["what is ray"], [long_doc], 10_000).input_ids[0]
    cut = prompt.encode(["what is ray", "what is ray"], [long_doc, "short"], 160)
    assert cut.truncated == 1 and len(cut.input_ids[0]) == 160 and len(full) > 250
    start, end = prompt._rows(["what is ray"], [long_doc], None)[0].document
    assert cut.input_ids[0][-(len(full) - end):] == full[end:]  # the closing suffix, whole
    assert cut.input_ids[0][:start + 5] == full[:start + 5]  # the prompt, the query and the document's start
    assert reranker.score_pairs(["what is ray"], [long_doc]).truncated == 1


def test_a_query_longer_than_the_budget_is_cut_and_counted(qwen3, cache_dir):
    reranker = _reranker(qwen3, "torch", cache_dir, max_length=160)
    long_query = " ".join(["what is ray"] * 60)
    result = reranker.scorer.prompt.encode([long_query], ["short doc"], 160)
    assert len(result.input_ids[0]) <= 160 and result.truncated == 1
    with pytest.raises(InvalidInputError, match="the prompt alone takes"):
        reranker.scorer.prompt.encode(["q"], ["d"], 20)


def test_chunked_long_documents_keep_the_suffix_and_take_the_best_window(qwen3, cache_dir):
    reranker = _reranker(qwen3, "torch", cache_dir, max_length=160, long_documents="chunk", chunk_tokens=16,
                         chunk_overlap_tokens=4, max_chunks_per_doc=3)
    prompt = reranker.scorer.prompt
    doc = " ".join(["the cat is a big dog"] * 10)
    chunked = prompt.encode(["what is ray"], [doc], 160, chunking=chunking_of(reranker.scorer.config))
    whole = prompt.encode(["what is ray"], [doc], 10_000).input_ids[0]
    row = prompt._rows(["what is ray"], [doc], None)[0]
    start, end = row.document
    windows = chunked.encoded.input_ids
    assert len(windows) == 3 and chunked.truncated == 1 and list(chunked.owners) == [0, 0, 0]
    for k, ids in enumerate(windows):
        assert ids[:start] == whole[:start] and ids[-(len(whole) - end):] == whole[end:]
        assert ids[start:len(ids) - (len(whole) - end)] == whole[start + 12 * k:start + 12 * k + 16]
    plain = _reranker(qwen3, "torch", cache_dir)
    best = max(plain.scorer.backend.run(chunked.encoded.batch(np.array([k]), 0))[0] for k in range(3))
    assert reranker.score_pairs(["what is ray"], [doc]).scores[0] == pytest.approx(best, abs=1e-5)


# --- defaults --------------------------------------------------------------------------------------------------


def test_decoders_run_bf16_on_cuda_and_a_smaller_budget_unless_set():
    assert decoder_dtype("auto", "cuda") == decoder_dtype("auto", "cuda:1") == "bfloat16"
    assert decoder_dtype("auto", "cpu") == "auto" and decoder_dtype("float16", "cuda") == "float16"
    assert decoder_config(EngineConfig(), "cpu").max_tokens_per_batch == DECODER_MAX_TOKENS_PER_BATCH
    assert decoder_config(EngineConfig(max_tokens_per_batch=8192), "cuda").max_tokens_per_batch == 8192
    assert decoder_config(EngineConfig.model_validate(EngineConfig().model_dump(exclude_unset=True)),
                          "cpu").max_tokens_per_batch == DECODER_MAX_TOKENS_PER_BATCH


# --- refusals --------------------------------------------------------------------------------------------------


def test_sequence_classification_decoder_without_a_template_is_refused(tmp_path):
    model = make_qwen3_seq_cls(tmp_path / "converted")
    with pytest.raises(UnsupportedModelError, match=re.escape("name a built-in prompt with prompt_template=")):
        Reranker(str(model), backend="torch")


def test_a_chat_template_without_pair_roles_and_an_unknown_name_is_refused(tmp_path):
    model = make_qwen3(tmp_path / "chat-model", chat_template=PLAIN_CHAT_TEMPLATE)
    with pytest.raises(UnsupportedModelError, match="does not render `query` and `document` role messages"):
        Reranker(str(model), backend="torch")
    # The same checkpoint named as the family it is scores with the built-in prompt.
    named = shutil.copytree(model, tmp_path / "Qwen3-Reranker-tiny")
    assert Reranker(str(named), backend="torch").scorer.prompt.pieces_of(None)[1].startswith("<Instruct>")


def test_two_labels_and_answerless_vocabularies_are_refused(tmp_path, tiny_cross_encoder):
    from transformers import BertForSequenceClassification, Qwen3Config, Qwen3ForCausalLM

    from tests.tiny_models import _config, _tokenizer

    two = tmp_path / "two-labels"
    BertForSequenceClassification(_config(num_labels=2)).save_pretrained(str(two))
    _tokenizer(two)
    with pytest.raises(UnsupportedModelError, match="has 2 labels; rayrank reranks with single-logit"):
        Reranker(str(two), backend="torch")
    no_answers = tmp_path / "no-yes-no"
    tok = _tokenizer(no_answers)  # a WordPiece vocabulary without "yes" or "no"
    tok.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    tok.save_pretrained(str(no_answers))
    Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=16)).save_pretrained(
        str(no_answers))
    with pytest.raises(UnsupportedModelError, match="the answer token 'yes' is not one token of this vocabulary"):
        Reranker(str(no_answers), backend="torch")


def test_custom_code_needs_trust_remote_code(qwen3, tmp_path):
    model = needs_remote_code(shutil.copytree(qwen3, tmp_path / "custom"))
    with pytest.raises(UnsupportedModelError, match="runs its own code .* pass trust_remote_code=True"):
        Reranker(str(model), backend="torch")


def test_instruction_is_refused_where_no_decoder_reads_it(tiny_cross_encoder):
    encoder = Reranker(str(tiny_cross_encoder), backend="torch")
    with pytest.raises(InvalidInputError, match="only decoder rerankers .* take a non-blank instruction"):
        encoder.score("q", ["d"], instruction="Find fish")
    with pytest.raises(UnsupportedModelError, match="is not a decoder reranker"):
        Reranker(str(tiny_cross_encoder), backend="torch", instruction="Find fish")


def test_serve_schema_and_checks_offer_the_instruction_only_to_decoders():
    from rayrank.ray_app.config import RequestLimits
    from rayrank.ray_app.schemas import (
        CohereRerankRequest,
        CohereV2RerankRequest,
        RequestError,
        TeiRerankRequest,
        check_instruction,
        constrain_openapi,
    )

    def schema(takes):
        models = (CohereRerankRequest, CohereV2RerankRequest, TeiRerankRequest)
        doc = {"components": {"schemas": {m.__name__: m.model_json_schema() for m in models}}}
        constrain_openapi(doc, RequestLimits(), "m", by_id=False, takes_instruction=takes)
        return doc["components"]["schemas"]["TeiRerankRequest"]["properties"]

    assert "instruction" not in schema(False) and "instruction" in schema(True)
    with pytest.raises(RequestError, match="not a decoder reranker"):
        check_instruction("Find fish", RequestLimits(), takes_instruction=False)
    check_instruction(None, RequestLimits(), takes_instruction=False)


def test_rerank_cli_flags_reach_the_engine_config():
    from rayrank.jobs.rerank import parse_args

    engine = parse_args(["in.parquet", "out", "--instruction", "Find fish", "--prompt-template", "mxbai-rerank-v2",
                         "--trust-remote-code"]).engine
    assert (engine.instruction, engine.prompt_template, engine.trust_remote_code) == (
        "Find fish", "mxbai-rerank-v2", True)
    assert parse_args(["in.parquet", "out"]).engine.trust_remote_code is False


@pytest.mark.parametrize(("name", "model_type", "family"), [
    ("Qwen/Qwen3-Reranker-0.6B", "qwen3", "qwen3-reranker"), ("Qwen/Qwen3-Reranker-8B", "qwen3", "qwen3-reranker"),
    ("mixedbread-ai/mxbai-rerank-base-v2", "qwen2", "mxbai-rerank-v2"),
    ("mixedbread-ai/mxbai-rerank-large-v2", "qwen2", "mxbai-rerank-v2"),
    ("BAAI/bge-reranker-v2-gemma", "gemma", "bge-reranker-v2-gemma"),
    ("BAAI/bge-reranker-v2.5-gemma2-lightweight", "gemma2", None),  # another recipe: never guessed
    ("Qwen/Qwen3-Reranker-0.6B", "qwen2", None),  # the name alone is not enough
    ("someone/qwen3-chat", "qwen3", None),
])
def test_a_family_is_recognised_by_its_published_names_and_model_type(name, model_type, family):
    from rayrank.prompts import family_by_name

    found = family_by_name(name, model_type)
    assert (found and found.name) == family


def test_an_unset_decoder_budget_survives_the_trip_to_job_actors(qwen3, cache_dir):
    """Job drivers send actors only the keys that were set (jobs._shards.actor_config), so a decoder loaded in an
    actor takes the decoder budget, not the encoders' default; a budget the user set is kept."""
    from rayrank.config import RerankJobConfig
    from rayrank.jobs._shards import actor_config
    from rayrank.scoring.decoder import DECODER_MAX_TOKENS_PER_BATCH

    for given, expected in [({}, DECODER_MAX_TOKENS_PER_BATCH), ({"max_tokens_per_batch": 1024}, 1024)]:
        job = RerankJobConfig.model_validate({"engine": {"model": str(qwen3), "cache_dir": cache_dir, **given}})
        job = job.model_copy(update={"engine": job.engine.model_copy(update={"backend": "torch"})})  # as auto does
        sent = RerankJobConfig.model_validate(actor_config(job))
        assert Reranker.from_config(sent.engine).config.max_tokens_per_batch == expected
