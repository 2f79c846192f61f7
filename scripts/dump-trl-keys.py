"""Writes lib/train/known-keys.json: every configuration key TRL's SFTConfig / DPOConfig (with
transformers' TrainingArguments), ModelConfig and ScriptArguments define, with its default.
zephyr-native uses it to tell a known-but-unsupported key (an error unless the value is the
default) from a misspelt one. Regenerate when moving to a new TRL: python scripts/dump-trl-keys.py

It also writes `removed`: keys that earlier transformers / TRL / alignment-handbook versions
defined and recipes still carry (the handbook's Zephyr recipes among them), with the version
that dropped each and the default it had. That table is kept by hand below (sources in the
comments), since the installed packages no longer know these keys.
"""
import dataclasses
import json
import pathlib

import transformers
import trl
from trl import DPOConfig, ModelConfig, ScriptArguments, SFTConfig


def defaults(cls):
    out = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = None
        try:
            json.dumps(value)
        except TypeError:
            value = str(value)
        out[field.name] = value
    return out


tables = {"sft": defaults(SFTConfig), "dpo": defaults(DPOConfig), "model": defaults(ModelConfig), "script": defaults(ScriptArguments)}
keys = {}
for table, fields in tables.items():
    for name, default in fields.items():
        entry = keys.setdefault(name, {"default": default, "in": []})
        entry["in"].append(table)
# name: (the release that dropped it, its default there). Versions from the projects' release
# notes and pull requests: transformers #41017/#41323 (v5 removals), the 5.15 removal of
# logging_dir/warmup_ratio (bisected 5.14.1 -> 5.15.0), transformers #30190 (evaluation_strategy,
# deprecated 4.41), TRL #2895 (max_seq_length, removed in 0.20). The handbook's own keys went
# when its scripts moved to TRL's configuration classes.
HANDBOOK = "alignment-handbook's H4 arguments (before its move to TRL's config classes)"
REMOVED = {
    "overwrite_output_dir": ("transformers 5.0", False),
    "no_cuda": ("transformers 5.0", False),
    "evaluation_strategy": ("transformers 4.46", "no"),
    "logging_dir": ("transformers 5.15", None),
    "warmup_ratio": ("transformers 5.15", 0.0),
    "max_seq_length": ("trl 0.20", None),
    "use_flash_attention_2": (HANDBOOK, False),
    "preprocessing_num_workers": (HANDBOOK, None),
    "dataset_mixer": (HANDBOOK, None),
    "dataset_splits": (HANDBOOK, None),
    "dataset_configs": (HANDBOOK, None),
    "auto_insert_empty_system_msg": (HANDBOOK, True),
    "hub_model_revision": (HANDBOOK, "main"),
    "push_to_hub_revision": (HANDBOOK, False),
    "overwrite_hub_revision": (HANDBOOK, False),
}
for name in REMOVED:
    assert name not in keys, f"{name} is still defined by the installed packages"
removed = {name: {"default": default, "removed_in": version} for name, (version, default) in sorted(REMOVED.items())}
path = pathlib.Path(__file__).resolve().parent.parent / "lib" / "train" / "known-keys.json"
document = {"source": f"trl {trl.__version__}, transformers {transformers.__version__}", "keys": dict(sorted(keys.items())), "removed": removed}
path.write_text(json.dumps(document, indent=1) + "\n")
print(f"wrote {len(keys)} keys to {path}")
