"""What the reference-code drivers (owl_reference.py, flap_reference.py) share: running the
authors' layer-by-layer loops on transformers 4.53, and prune's perplexity."""
import numpy as np
import torch
from transformers.models.llama import modeling_llama


def give_position_embeddings(model):
    """Decoder layers called without position embeddings (the authors' loops call them as
    transformers < 4.48 did) get them from the model's rotary embedding."""
    original_forward = modeling_llama.LlamaDecoderLayer.forward

    def forward(self, hidden_states, *args, **kwargs):
        if kwargs.get("position_embeddings") is None:
            positions = kwargs.get("position_ids")
            if positions is None:
                positions = torch.arange(hidden_states.shape[1]).unsqueeze(0)
            kwargs["position_embeddings"] = model.model.rotary_emb(hidden_states, positions)
        return original_forward(self, hidden_states, *args, **kwargs)

    modeling_llama.LlamaDecoderLayer.forward = forward


@torch.no_grad()
def perplexity(model, evaluation):
    """As prune's evaluation: exp(mean NLL of every next token) over the windows (rows of ids)."""
    nll, count = 0.0, 0
    for row in evaluation:
        ids = torch.tensor(row, dtype=torch.long).unsqueeze(0)
        logits = model(ids).logits[0, :-1].double()
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return float(np.exp(nll / count))
