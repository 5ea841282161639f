"""Tiny randomly initialised Hugging Face reward models, built offline for the tests.

A byte-level BPE tokenizer without merges (every text is tokenizable, nothing is downloaded),
wrapped as a ``PreTrainedTokenizerFast`` with bos/eos/pad tokens and, optionally, a chat template;
a two-layer ``LlamaForSequenceClassification`` (or ``GPT2ForSequenceClassification``) with one
label. Both are saved to a folder that ``--reward hf:DIR`` loads. ``build_own_code_reward_model``
makes a folder whose model is its own code (as BaichuanCharRM's): loaded only with
``--trust-remote-code``, its forward returns a tuple whose element 1 is the score.
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


# A reward model that is its own code, as BaichuanCharRM is: config.json maps AutoConfig to the
# folder's module but no Auto class of the model, names the class in `architectures`, and the
# forward returns a tuple whose element 1 is the score (what run_char_rm.py reads).
OWN_CODE = '''
import torch
from transformers import PretrainedConfig, PreTrainedModel


class TinyCharRMConfig(PretrainedConfig):
    model_type = "tinycharrm"

    def __init__(self, vocab_size=259, hidden_size=16, initializer_range=0.5, **kwargs):
        self.vocab_size, self.hidden_size, self.initializer_range = vocab_size, hidden_size, initializer_range
        super().__init__(**kwargs)


class TinyCharRM(PreTrainedModel):
    config_class = TinyCharRMConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = torch.nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        hidden = torch.tanh(self.embed(input_ids)).cumsum(dim=1)  # (B, T, H)
        return hidden, torch.tanh(self.head(hidden[:, -1])).squeeze(-1)  # (B,)
'''


def build_own_code_reward_model(folder: Path, seed: int = 0) -> Path:
    import importlib.util
    import shutil

    import torch

    build_reward_model(folder, seed=seed)  # the byte-level tokenizer (its Llama weights are replaced below)
    for path in folder.iterdir():
        if path.name not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            path.unlink() if path.is_file() else shutil.rmtree(path)
    source = folder / "modeling_tinycharrm.py"
    source.write_text(OWN_CODE)
    spec = importlib.util.spec_from_file_location("modeling_tinycharrm_build", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(seed)
    config = module.TinyCharRMConfig(auto_map={"AutoConfig": "modeling_tinycharrm.TinyCharRMConfig"})
    model = module.TinyCharRM(config)
    with torch.no_grad():
        model.embed.weight.normal_(0, 0.5)
        model.head.weight.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder
