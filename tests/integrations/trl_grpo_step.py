"""One GRPO step of TRL's real trainer with kernelenv's environment_factory, on CPU, offline.

Run with the interpreter of the TRL venv: ``python trl_grpo_step.py OUT_DIR``. The model is a
tiny Qwen2 built from a config (random weights) and the tokenizer is built here with the
``tokenizers`` library and TRL's own Qwen2.5 chat template, so nothing is downloaded. A random
model does not call tools by itself, so generation is biased (``sequence_bias``) into a call
written as a Qwen model writes it: the ``<tool_call>`` token, the call's JSON (one added token,
to keep the completion short), ``</tool_call>``, end of turn. The delimiters must be generated
as their own token ids: transformers >= 5.25 parses token ids and ignores ``<tool_call>`` when
it is spelled out by other tokens. TRL parses the call, runs it through
``KernelToolEnv.run_python`` and answers; ``get_reward`` then grades the task.
Prints a JSON report for the calling test.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.chat_template_utils import qwen2_5_chat_template  # noqa: E402

from kernelenv.integrations.trl import KernelEnvFactory  # noqa: E402

CODE = "def is_palindrome(t):\n    k = [c.lower() for c in t if c.isalnum()]\n    return k == k[::-1]\nprint('kernel pid', __import__('os').getpid())"
CALL_JSON = "\n" + json.dumps({"name": "run_python", "arguments": {"code": CODE}}) + "\n"


def tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level tokenizer with Qwen's special tokens and TRL's Qwen2.5 template."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    core.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=core)
    fast.add_special_tokens({
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<|im_start|>"],
    })
    fast.add_tokens([CALL_JSON, "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"])
    fast.chat_template = qwen2_5_chat_template
    return fast


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    tok = tokenizer()
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    open_id, json_id, close_id = tok.convert_tokens_to_ids(["<tool_call>", CALL_JSON, "</tool_call>"])
    # Each bias outweighs the previous one, so the completion is exactly open, JSON, close, EOS.
    call_bias = {(open_id,): 100.0, (open_id, json_id): 200.0, (json_id, close_id): 300.0,
                 (close_id, tok.eos_token_id): 400.0}
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": "Solve the task."}],
         "task_id": "functions_easy_palindrome"},
    ] * 2)
    seen: dict[str, object] = {"prompts": [], "rewards": []}
    with KernelEnvFactory(pool_size=2) as factory:
        original_new_env = factory.new_env

        def new_env():
            env = original_new_env()
            seen.setdefault("envs", []).append(env)
            return env

        factory.new_env = new_env
        args = GRPOConfig(
            output_dir=out_dir, per_device_train_batch_size=2, num_generations=2,
            max_completion_length=8, max_steps=1, max_tool_calling_iterations=1,
            use_cpu=True, bf16=False, report_to=[], logging_steps=1, save_strategy="no",
            generation_kwargs={"sequence_bias": call_bias},
        )
        trainer = GRPOTrainer(model=model, processing_class=tok, args=args,
                              train_dataset=dataset, environment_factory=factory)
        trainer.train()
        envs = seen.pop("envs", [])
        steps = [
            (record.action.code, record.observation.stdout)
            for env in envs if env.episode is not None for record in env.episode.steps
        ]
        scores = [env.state.last_score for env in envs if env.episode is not None]
    history = trainer.state.log_history
    print(json.dumps({
        "steps": steps,
        "last_scores": scores,
        "log": history,
        "kernel_pids": [out.split()[-1] for _, out in steps if "kernel pid" in out],
    }, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
