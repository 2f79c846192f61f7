"""Reference log-probs for test/serve-logprobs.test.ts: transformers' MistralForCausalLM (float32,
eager attention) on the model folder the test serves, and log_softmax of its raw logits in
float64. Run only by the tests: `python serve_reference.py MODEL_DIR REQUEST_JSON`.

REQUEST_JSON: {"k": K, "paths": [{"prompt": [ids], "completion": [ids]}, ...]}
Prints JSON: for each path, per completion token t (the distribution after prompt + completion[:t]):
  chosen[t]   log p(completion[t])
  top[t]      the K + 1 most likely [id, logprob] pairs, most likely first (one more than asked,
              so the test can tell a tie at the K-th place from a wrong answer)
"""

import json
import sys

import torch
from transformers import MistralForCausalLM


def main(model_dir, request_path):
    with open(request_path) as f:
        request = json.load(f)
    model = MistralForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    k = request["k"] + 1
    out = []
    with torch.no_grad():
        for path in request["paths"]:
            prompt, completion = path["prompt"], path["completion"]
            ids = torch.tensor([prompt + completion])
            logits = model(ids).logits[0].to(torch.float64)
            # Position p's logits predict token p + 1: the completion's tokens follow prompt[-1] onwards.
            steps = logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)]
            logp = torch.log_softmax(steps, dim=-1)
            values, indices = logp.topk(k, dim=-1)
            out.append({
                "chosen": [logp[t, token].item() for t, token in enumerate(completion)],
                "top": [[[i, v] for i, v in zip(indices[t].tolist(), values[t].tolist())] for t in range(len(completion))],
            })
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
