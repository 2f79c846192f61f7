"""Reference side of the data-pipeline conformance tests (test/conformance/data-*.test.ts).

Builds small Llama/Mistral-style tokenizers with the `tokenizers` library (BPE with byte fallback,
trained here on a few sentences; no downloads) and answers requests with what transformers 5 and
TRL 1.13 produce, so the tests can compare zephyr-native's token ids and loss masks with them.

    python data_reference.py tokenizers OUT_DIR      build the tokenizer folders, print their names
    python data_reference.py run REQUESTS.json       answer a list of requests, each one of:
        {"kind": "encode", "folders": [...], "texts": [...]}   AutoTokenizer ids, offsets, decodes
        {"kind": "tokenizer_tables"}                           model_type -> tokenizer class tables
        {"kind": "sft", "tokenizer": DIR, "rows": [...], ...}  SFTTrainer's rows and collated batch
        {"kind": "dpo", "tokenizer": DIR, "rows": [...], ...}  DPOTrainer's rows and collated batch

Results are JSON on stdout (a list for `run`, in request order).
"""

import copy
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPIECE = "\u2581"
SPECIALS = ["<unk>", "<s>", "</s>"]

CORPUS = [
    "Hello world! How are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Zephyr is a helpful assistant that answers questions about the world.",
    "What is the capital of France? The capital of France is Paris.",
    "Numbers: 12345 67890 3.14159 2023 1000000",
    "<|system|>\nYou are helpful.</s>\n<|user|>\nhello there</s>\n<|assistant|>\nhi, how can I help?</s>\n",
    "  indented   text  with   several    spaces  ",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe",
    "line one\nline two\n\nline four\n",
    "Write a short poem about the sea. The sea is wide and deep and blue.",
]


def train_base(split):
    """A BPE vocabulary: specials, the 256 byte tokens, then what training learned."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE, prepend_scheme="always", split=split)
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS * 10, trainer)
    spec = json.loads(tok.to_str())
    learned = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]) if t not in SPECIALS]
    vocab = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + learned
    spec["model"]["vocab"] = {t: i for i, t in enumerate(vocab)}
    spec["model"]["byte_fallback"] = True
    spec["model"]["fuse_unk"] = True
    return spec


def with_pipeline(base, kind, scheme="first"):
    spec = copy.deepcopy(base)
    if kind == "legacy":  # Llama-2 / Mistral-7B-v0.1 tokenizer.json
        spec["normalizer"] = {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": SPIECE},
                {"type": "Replace", "pattern": {"String": " "}, "content": SPIECE},
            ],
        }
        spec["pre_tokenizer"] = None
    else:  # newer Mistral/Llama tokenizer.json
        spec["normalizer"] = None
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": SPIECE, "prepend_scheme": scheme, "split": False}
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": SPIECE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<s>", "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    return spec


def write_folder(folder, spec, tokenizer_class="LlamaTokenizer", chat_template=None, **config):
    from tokenizers import Tokenizer

    os.makedirs(folder, exist_ok=True)
    Tokenizer.from_str(json.dumps(spec)).save(os.path.join(folder, "tokenizer.json"))
    cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000,
        "tokenizer_class": tokenizer_class,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
            for i, t in enumerate(SPECIALS)
        },
        **config,
    }
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def build_tokenizers(out):
    """Every variant the tokenizer tests cover; names say what differs."""
    words = train_base(split=True)  # SentencePiece-like: merges stay inside words
    spans = train_base(split=False)  # merges across spaces too ("o▁w")
    variants = {
        "llama-legacy-true": (with_pipeline(words, "legacy"), "LlamaTokenizer", {"legacy": True}),
        "llama-legacy-false": (with_pipeline(words, "legacy"), "LlamaTokenizer", {"legacy": False}),
        "llama-legacy-unset": (with_pipeline(words, "legacy"), "LlamaTokenizer", {}),
        "llama-metaspace-first": (with_pipeline(words, "metaspace", "first"), "LlamaTokenizerFast", {"legacy": False}),
        "llama-metaspace-always": (with_pipeline(words, "metaspace", "always"), "LlamaTokenizerFast", {"legacy": True}),
        "llama-no-prefix-space": (with_pipeline(words, "metaspace", "first"), "LlamaTokenizer", {"add_prefix_space": False}),
        "fast-metaspace-first": (with_pipeline(words, "metaspace", "first"), "PreTrainedTokenizerFast", {}),
        "fast-metaspace-always": (with_pipeline(words, "metaspace", "always"), "PreTrainedTokenizerFast", {}),
        "fast-legacy-normalizer": (with_pipeline(words, "legacy"), "PreTrainedTokenizerFast", {}),
        "fast-cross-word-merges": (with_pipeline(spans, "metaspace", "first"), "PreTrainedTokenizerFast", {}),
        "llama-cross-word-merges": (with_pipeline(spans, "legacy"), "LlamaTokenizer", {"legacy": True}),
        "llama-add-bos-false": (with_pipeline(words, "metaspace", "first"), "LlamaTokenizer", {"add_bos_token": False}),
    }
    for name, (spec, cls, config) in variants.items():
        write_folder(os.path.join(out, name), spec, cls, **config)
    return sorted(variants)


def utf16_index(text):
    """Maps a code-point index (Python) to a UTF-16 index (JavaScript)."""
    index = [0]
    for ch in text:
        index.append(index[-1] + (2 if ord(ch) > 0xFFFF else 1))
    return index


def encode(request):
    from transformers import AutoTokenizer

    out = {}
    for folder in request["folders"]:
        tok = AutoTokenizer.from_pretrained(folder)
        rows = []
        for text in request["texts"]:
            plain = tok(text, add_special_tokens=False)
            to16 = utf16_index(text)
            rows.append(
                {
                    "plain": plain["input_ids"],
                    "special": tok(text)["input_ids"],
                    "offsets": [[to16[a], to16[b]] for a, b in plain.encodings[0].offsets],
                    "decoded": tok.decode(plain["input_ids"]) if plain["input_ids"] else "",
                }
            )
        out[folder] = {"class": type(tok).__name__, "rows": rows}
    return out


def tokenizer_tables(request):
    """What lib/data/tokenizer-class.ts copies from transformers' tokenization_auto.py."""
    from transformers.models.auto import tokenization_auto as auto

    generic = {"TokenizersBackend", "PythonBackend", "PreTrainedTokenizerFast", "MistralCommonBackend"}
    names = auto.TOKENIZER_MAPPING_NAMES
    return {
        "generic": sorted(k for k, v in names.items() if v in generic),
        "overrides": {
            k: names[k].removesuffix("Fast")
            for k in sorted(auto.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS)
            if names.get(k) and names[k] not in generic
        },
        "llama": {
            k: v.removesuffix("Fast")
            for k, v in names.items()
            if v and v.removesuffix("Fast") in ("LlamaTokenizer", "CodeLlamaTokenizer")
        },
    }


# HuggingFaceH4/zephyr-7b-beta tokenizer_config.json `chat_template`, for folders that have none
# (transformers 5 refuses to render without one; zephyr-native falls back to it).
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)


def load_tokenizer(folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.chat_template is None:
        tok.chat_template = ZEPHYR_CHAT_TEMPLATE
    return tok


def tiny_model(vocab_size):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=vocab_size,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=8192,
    )
    return MistralForCausalLM(config)


def common_args(request, workdir):
    return {
        "output_dir": workdir,
        "report_to": [],
        "use_cpu": True,
        "max_length": request.get("max_length"),
        "per_device_train_batch_size": 2,
    }


def sft(request):
    """SFTTrainer's prepared training rows, and TRL's padding-free collation of all of them."""
    import tempfile

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = load_tokenizer(request["tokenizer"])
    with tempfile.TemporaryDirectory() as workdir:
        args = SFTConfig(
            **common_args(request, workdir),
            packing=request.get("packing", False),
            assistant_only_loss=request.get("assistant_only_loss", False),
        )
        trainer = SFTTrainer(
            model=tiny_model(len(tok)), args=args, train_dataset=Dataset.from_list(request["rows"]), processing_class=tok
        )
        rows = [dict(row) for row in trainer.train_dataset]
    collator = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id or 0, padding_free=True)
    collated = collator(rows)
    return {
        "rows": [{k: row[k] for k in ("input_ids", "labels", "seq_lengths") if k in row} for row in rows],
        "collated": {k: collated[k][0].tolist() for k in ("input_ids", "labels", "position_ids")},
    }


def dpo(request):
    """DPOTrainer's prepared rows (prompt_ids, chosen_ids, rejected_ids) and its collated batch."""
    import tempfile

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok = load_tokenizer(request["tokenizer"])
    with tempfile.TemporaryDirectory() as workdir:
        args = DPOConfig(**common_args(request, workdir))
        trainer = DPOTrainer(
            model=tiny_model(len(tok)),
            ref_model=tiny_model(len(tok)),
            args=args,
            train_dataset=Dataset.from_list(request["rows"]),
            processing_class=tok,
        )
        rows = [dict(row) for row in trainer.train_dataset]
        collated = trainer.data_collator([{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for row in rows])
    mask = collated["attention_mask"].tolist()
    return {
        "rows": [{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for row in rows],
        "sequences": [ids[: sum(m)] for ids, m in zip(collated["input_ids"].tolist(), mask)],
        "completion_masks": [cm[: sum(m)] for cm, m in zip(collated["completion_mask"].tolist(), mask)],
    }


def main():
    command, arg = sys.argv[1], sys.argv[2]
    if command == "tokenizers":
        result = build_tokenizers(arg)
    else:
        with open(arg) as f:
            requests = json.load(f)
        handlers = {"encode": encode, "tokenizer_tables": tokenizer_tables, "sft": sft, "dpo": dpo}
        result = [handlers[request["kind"]](request) for request in requests]
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
