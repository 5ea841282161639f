"""The shape of an RWKV-7 model, inferred from its checkpoint tensors."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the tensor shapes of an RWKV-7 ("x070") model.

    n_embd = n_head * head_size.  The four LoRA ranks belong to the decay (w), the in-context
    learning rate (a), the value-residual mix (v) and the output gate (g).
    """

    n_layer: int
    n_embd: int
    n_head: int
    head_size: int
    vocab_size: int
    ffn_size: int
    rank_w: int
    rank_a: int
    rank_v: int
    rank_g: int

    def __post_init__(self) -> None:
        if self.n_head * self.head_size != self.n_embd:
            raise ValueError(
                f"n_head * head_size must equal n_embd: {self.n_head} * {self.head_size} != {self.n_embd}"
            )
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, found {value!r}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def n_params(self) -> int:
        """Parameter count of a checkpoint of this shape (layer 0 with v0/v1/v2 counted)."""
        C, F, V, L = self.n_embd, self.ffn_size, self.vocab_size, self.n_layer
        per_layer = (
            4 * C  # ln1, ln2
            + 6 * C  # x_r .. x_g
            + 3 * C  # w0, a0, v0
            + C * self.rank_w * 2 + C * self.rank_a * 2 + C * self.rank_v * 2 + C * self.rank_g * 2
            + 2 * C + C  # k_k, k_a, r_k
            + 4 * C * C  # receptance, key, value, output
            + 2 * C  # ln_x
            + C + 2 * C * F  # ffn x_k, key, value
        )
        return L * per_layer + 2 * V * C + 2 * C + 2 * C  # emb, head, ln0, ln_out


# The official RWKV-7 release shapes (vocabulary 65536); LoRA ranks follow BlinkDL's formulas.
def official_config(name: str) -> ModelConfig:
    """The shape of an official RWKV-7 release by size name: 0.1B, 0.4B, 1.5B, 2.9B, 7.2B."""
    table = {"0.1B": (12, 768), "0.4B": (24, 1024), "1.5B": (24, 2048), "2.9B": (32, 2560), "7.2B": (32, 4096)}
    if name not in table:
        raise ValueError(f"unknown official RWKV-7 size {name!r}; expected one of {sorted(table)}")
    n_layer, C = table[name]
    return ModelConfig(
        n_layer=n_layer, n_embd=C, n_head=C // 64, head_size=64, vocab_size=65536, ffn_size=4 * C,
        rank_w=_lora_rank(C, 1.8, 0.5), rank_a=_lora_rank(C, 1.8, 0.5),
        rank_v=_lora_rank(C, 1.3, 0.5), rank_g=_lora_rank(C, 0.6, 0.8),
    )


def _lora_rank(C: int, scale: float, power: float) -> int:
    # BlinkDL's train_temp/src/model.py: max(32, int(round((scale * C**power) / 32) * 32))
    return max(32, int(round((scale * C**power) / 32) * 32))
