"""Tiny randomly initialised Hugging Face reward models, built offline for the tests.

A byte-level BPE tokenizer without merges (every text is tokenizable, nothing is downloaded),
wrapped as a ``PreTrainedTokenizerFast`` with bos/eos/pad tokens and, optionally, a chat template;
a two-layer ``LlamaForSequenceClassification`` (or ``GPT2ForSequenceClassification``) with one
label. Both are saved to a folder that ``--reward hf:DIR`` loads.
"""
from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
                 "{% endfor %}")


def build_reward_model(folder: Path, *, arch: str = "llama", chat_template: bool = True, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<s>", "</s>", "<pad>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, num_labels=1, max_position_embeddings=1024,
                             pad_token_id=vocab["<pad>"], initializer_range=0.3)
        model = LlamaForSequenceClassification(config)
    else:
        config = GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=1024, num_labels=1,
                            pad_token_id=vocab["<pad>"], initializer_range=0.3)
        model = GPT2ForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
