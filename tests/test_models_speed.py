"""Speed-related model properties: one compiled graph without a GPU sync, channels-last equal to contiguous."""
from __future__ import annotations

import pytest
import torch

from agman.models.registry import build_model


def tiny(name="agman-official"):
    torch.manual_seed(0)
    return build_model(name, 5, backbone="resnet18", attention_dim=32, **({} if name == "agman-official" else
                                                                         {"embedding_dim": 16})).eval()


def test_forward_compiles_to_one_graph_and_still_checks_ids_eagerly():
    model = tiny()
    x, ids = torch.randn(2, 3, 32, 32), torch.tensor([1, 4])
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fails on any graph break
    with torch.no_grad():
        assert torch.equal(compiled(x, ids).embedding, model(x, ids).embedding)
    with pytest.raises(ValueError, match=r"attribute ids must lie in \[0, 5\)"):
        model(x, torch.tensor([1, 5]))


@pytest.mark.parametrize("name", ["agman", "agman-official"])
def test_channels_last_gives_the_same_outputs_and_gradients(name):
    model = tiny(name).train()
    x, ids = torch.randn(6, 3, 48, 48), torch.tensor([0, 1, 2, 3, 4, 0])
    out = model(x, ids)
    out.embedding.sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.to(memory_format=torch.channels_last)
    out_cl = model(x.contiguous(memory_format=torch.channels_last), ids)
    out_cl.embedding.sum().backward()
    assert torch.allclose(out_cl.embedding, out.embedding, atol=1e-5)
    assert torch.allclose(out_cl.attribute_logits, out.attribute_logits, atol=1e-4)
    for k, p in model.named_parameters():
        if k in grads:
            assert torch.allclose(p.grad, grads[k], atol=1e-4, rtol=1e-3), k
