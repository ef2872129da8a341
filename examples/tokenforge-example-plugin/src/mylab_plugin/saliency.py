"""A token scorer: gradient x input on the ViT's token embeddings (Simonyan et al. 2014; Shrikumar et al. 2017).

tokenforge calls a scorer once per batch of the samples a memory may keep, with the model in eval mode:
`score(model, units, targets, *, generator) -> (B, h*w)`, higher = more relevant. Only the model's public API is
used: `model.embed(units)` gives the (B, h, w, D) embeddings of code ids or pixel patches, and `model(x)` takes them
as a float (B, D, h, w) map, so the gradient can be taken with respect to the input, leaving no parameter a .grad.
"""

import torch

families = ("classification",)  # the task families this scorer can score (labels as targets)


def score(model, units: torch.Tensor, targets: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    with torch.enable_grad():
        embedded = model.embed(units).permute(0, 3, 1, 2).detach().requires_grad_(True)
        logits = model(embedded)
        # samples are independent in eval mode, so one backward of the sum gives each sample's own gradient
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), embedded)
    return (grad * embedded).detach().sum(dim=1).abs().flatten(1)


score.families = families
