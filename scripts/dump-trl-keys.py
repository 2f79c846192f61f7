"""Writes lib/train/known-keys.json: every configuration key TRL's SFTConfig / DPOConfig (with
transformers' TrainingArguments), ModelConfig and ScriptArguments define, with its default.
zephyr-native uses it to tell a known-but-unsupported key (an error unless the value is the
default) from a misspelt one. Regenerate when moving to a new TRL: python scripts/dump-trl-keys.py
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
path = pathlib.Path(__file__).resolve().parent.parent / "lib" / "train" / "known-keys.json"
document = {"source": f"trl {trl.__version__}, transformers {transformers.__version__}", "keys": dict(sorted(keys.items()))}
path.write_text(json.dumps(document, indent=1) + "\n")
print(f"wrote {len(keys)} keys to {path}")
