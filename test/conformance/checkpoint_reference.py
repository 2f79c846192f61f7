"""Reference for test/conformance/checkpoint.test.ts: Hugging Face model folders made and read by
transformers. Run only by the tests.

`python checkpoint_reference.py make OUT` builds tiny random MistralForCausalLM models (f32, bf16
and f16; tied and untied; one file and sharded through max_shard_size) and saves each with
save_pretrained, with a small tokenizer, to OUT/<case>/model. For every tensor in the saved files
it dumps, from the model transformers saved:
  OUT/<case>/dump/<k>.bin       the stored bytes (the tensor in its own dtype)
  OUT/<case>/dump/<k>.f32.bin   torch's conversion to float32
  OUT/<case>/dump/<k>.bf16.bin  torch's conversion to bfloat16 (round to nearest even)
listed in OUT/<case>/manifest.json. It also writes configs in both transformers generations'
forms and records how transformers 5 reads them (OUT/configs/<name>/{config.json,view.json}).

`python checkpoint_reference.py check JOBS.json` loads folders zephyr-native wrote with
MistralForCausalLM.from_pretrained and compares every parameter bit for bit with the dumps of
the case they came from. JOBS.json: [{"dir", "case", "dtype"}]; it prints a JSON list of
{"dir", "problems": [...], "tensors": n} (no problems: the folder loads unchanged).
"""

import json
import os
import sys

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoTokenizer,
    GenerationConfig,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
)
from safetensors import safe_open

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

CASES = {
    # name: (dtype, tied, max_shard_size or None for one file)
    "f32_untied_single": ("float32", False, None),
    "f32_tied_sharded": ("float32", True, "20KB"),
    "bf16_untied_sharded": ("bfloat16", False, "12KB"),
    "bf16_tied_single": ("bfloat16", True, None),
    "f16_untied_single": ("float16", False, None),
}

TOKENIZER_TEXT = "w3 w4 w17 w63 </s>"


def tiny_config(tied):
    return MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"},
        sliding_window=16,
        tie_word_embeddings=tied,
        pad_token_id=0,
    )


def tiny_tokenizer():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, 64)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def bits(tensor):
    """The tensor's bit patterns as integers, so comparisons are bit for bit (-0.0 != 0.0)."""
    return tensor.contiguous().view(torch.int32 if tensor.dtype == torch.float32 else torch.int16)


def raw_bytes(tensor):
    if tensor.dtype == torch.bfloat16 or tensor.dtype == torch.float16:
        return tensor.contiguous().view(torch.int16).numpy().tobytes()
    return tensor.contiguous().numpy().tobytes()


def saved_tensors(model_dir):
    """Every tensor in the folder's safetensors files, as stored."""
    tensors = {}
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, name), framework="pt") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
    return tensors


def make_case(out, case, dtype, tied, max_shard_size, seed):
    torch.manual_seed(seed)
    model = MistralForCausalLM(tiny_config(tied))
    with torch.no_grad():
        for param in model.parameters():
            # Wide random values (incl. ones that round in bf16 and f16) rather than HF's tiny init.
            param.copy_(torch.randn(param.shape) * 1.7)
    model = model.to(DTYPES[dtype])
    model_dir = os.path.join(out, case, "model")
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {"max_shard_size": "1GB"}
    model.save_pretrained(model_dir, **kwargs)
    tiny_tokenizer().save_pretrained(model_dir)

    dump_dir = os.path.join(out, case, "dump")
    os.makedirs(dump_dir)
    manifest = []
    state = model.state_dict()
    for k, (name, stored) in enumerate(saved_tensors(model_dir).items()):
        # The dump comes from the model in memory; the file must hold the same bytes.
        tensor = state[name]
        assert torch.equal(bits(tensor), bits(stored)), name
        files = {"raw": f"{k}.bin", "f32": f"{k}.f32.bin", "bf16": f"{k}.bf16.bin"}
        with open(os.path.join(dump_dir, files["raw"]), "wb") as f:
            f.write(raw_bytes(tensor))
        with open(os.path.join(dump_dir, files["f32"]), "wb") as f:
            f.write(raw_bytes(tensor.to(torch.float32)))
        with open(os.path.join(dump_dir, files["bf16"]), "wb") as f:
            f.write(raw_bytes(tensor.to(torch.bfloat16)))
        manifest.append({"name": name, "dtype": str(stored.dtype), "shape": list(tensor.shape), "files": files})
    with open(os.path.join(out, case, "manifest.json"), "w") as f:
        json.dump({"dtype": dtype, "tied": tied, "sharded": max_shard_size is not None, "tensors": manifest}, f)


def config_view(config_dir):
    """How transformers 5 reads a config, in the fields zephyr-native reads."""
    c = AutoConfig.from_pretrained(config_dir)
    return {
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_parameters["rope_theta"],
        "rope_type": c.rope_parameters["rope_type"],
        "sliding_window": c.sliding_window,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "dtype": str(c.dtype).replace("torch.", "") if c.dtype is not None else None,
    }


# A config as transformers 4.4x wrote it for MistralForCausalLM (top-level rope_theta, rope_scaling,
# torch_dtype, no head_dim).
TRANSFORMERS_4_CONFIG = {
    "_name_or_path": "tiny-mistral",
    "architectures": ["MistralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 48,
    "initializer_range": 0.02,
    "intermediate_size": 80,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 6,
    "num_hidden_layers": 3,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.44.2",
    "use_cache": True,
    "vocab_size": 1000,
}


def make_configs(out, fixture):
    configs = {"transformers4": TRANSFORMERS_4_CONFIG, "mistral_7b_v0_1": json.load(open(fixture))}
    configs_dir = os.path.join(out, "configs")
    for name, config in configs.items():
        d = os.path.join(configs_dir, name)
        os.makedirs(d)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(d, "view.json"), "w") as f:
            json.dump(config_view(d), f)
    # transformers 5's own form: what save_pretrained writes for a config.
    d = os.path.join(configs_dir, "transformers5")
    tiny_config(False).save_pretrained(d)
    with open(os.path.join(d, "view.json"), "w") as f:
        json.dump(config_view(d), f)


def make(out, fixture):
    for seed, (case, (dtype, tied, max_shard_size)) in enumerate(CASES.items()):
        make_case(out, case, dtype, tied, max_shard_size, seed)
    make_configs(out, fixture)


def read_dump(path, dtype, shape):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if dtype in (torch.bfloat16, torch.float16):
        return torch.frombuffer(data, dtype=torch.int16).view(dtype).reshape(shape)
    return torch.frombuffer(data, dtype=dtype).reshape(shape)


def check_job(out, job):
    problems = []
    model, info = MistralForCausalLM.from_pretrained(job["dir"], dtype="auto", output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(kind):
            problems.append(f"{kind}: {info[kind]}")
    want = DTYPES[job["dtype"]]
    if model.dtype != want:
        problems.append(f"model dtype {model.dtype}, expected {want}")
    manifest = json.load(open(os.path.join(out, job["case"], "manifest.json")))
    if model.config.tie_word_embeddings != manifest["tied"]:
        problems.append("tie_word_embeddings changed")
    if manifest["tied"] and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        problems.append("lm_head is not tied to embed_tokens")
    state = model.state_dict()
    source_dtype = DTYPES[manifest["dtype"]]
    for entry in manifest["tensors"]:
        # Same dtype: the stored bytes; f32 saved as bf16: torch's rounding of them.
        dump = entry["files"]["raw"] if want == source_dtype else entry["files"]["bf16"]
        expected = read_dump(os.path.join(out, job["case"], "dump", dump), want, entry["shape"])
        got = state[entry["name"]]
        if got.dtype != want or got.shape != expected.shape or not torch.equal(bits(got), bits(expected)):
            problems.append(f"tensor {entry['name']} differs")
    if len(state) != len(manifest["tensors"]) + (1 if manifest["tied"] else 0):
        problems.append(f"{len(state)} tensors in the model, {len(manifest['tensors'])} saved")
    GenerationConfig.from_pretrained(job["dir"])
    source_ids = AutoTokenizer.from_pretrained(os.path.join(out, job["case"], "model"))(TOKENIZER_TEXT).input_ids
    ids = AutoTokenizer.from_pretrained(job["dir"])(TOKENIZER_TEXT).input_ids
    if ids != source_ids:
        problems.append(f"tokenizer gives {ids}, the source's {source_ids}")
    return {"dir": job["dir"], "problems": problems, "tensors": len(manifest["tensors"])}


def check(out, jobs_path):
    jobs = json.load(open(jobs_path))
    print(json.dumps([check_job(out, job) for job in jobs]))


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
