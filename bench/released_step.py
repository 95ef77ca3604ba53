"""The released AG-MAN training step, written out plainly as the baseline of the speed benchmarks.

What it computes follows the facts of the authors' code listed in ``docs/model-card.md`` and
``../shared/docs/model-notes.md`` (a ResNet-50 whose layer3 output ``F3`` and ``F23 = F3 +
Conv1x1(MaxPool(F2))`` are concatenated; layer4 on ``F23`` for Eq. 7's logits; a learned input
scalar, 1x1 conv to 512, ASA, 7x7 SA, sum-pool, ACA by concatenation, CSN masks, L2 norm) and the
way mainFashionAI.py trains it: anchor, far and close as **three forward passes of B** in fp32,
BCE over the three images / 3, ``MarginRankingLoss(0.2)`` on dot products, fixed Eq. 9 weights
(init 1, not optimised: ``0.5 e`` each plus 2), Adam over the network's parameters.

Nothing here uses agman's modules except to copy weights in (:func:`copy_from_agman_official`),
so a benchmark that races agman's step against :class:`ReleasedStep` compares agman's
implementation with the released one on the same network.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn


class ReleasedNet(nn.Module):
    """The released network: ``(images [B,3,H,W], attrs [B]) -> (embedding [B,512], logits [B,n])``."""

    def __init__(self, n_attributes: int, backbone: str = "resnet50", width: int = 512):
        super().__init__()
        r = getattr(torchvision.models, backbone)(weights=None)
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        c2, c3, c4 = ([m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
                      for stage in (self.layer2, self.layer3, self.layer4))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv1_1 = nn.Conv2d(c2, c3, 1)
        self.fc_embed = nn.Linear(c4, n_attributes)
        self.w = nn.Parameter(torch.ones(1))
        self.conv1 = nn.Conv2d(2 * c3, width, 1)
        self.img_bn1 = nn.BatchNorm2d(width)
        self.attr_embedding = nn.Embedding(n_attributes, width)
        self.attr_transform1 = nn.Linear(width, width)
        self.w1 = nn.Parameter(torch.ones(1))
        self.sa_conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.attr_transform2 = nn.Linear(width, width)
        self.fc1 = nn.Linear(2 * width, width)
        self.fc2 = nn.Linear(width, width)
        self.w2 = nn.Parameter(torch.ones(1))
        self.masks = nn.Embedding(n_attributes, width)

    def forward(self, images: Tensor, attrs: Tensor) -> tuple[Tensor, Tensor]:
        f2 = self.layer2(self.layer1(self.stem(images)))
        f3 = self.layer3(f2)
        f23 = f3 + self.conv1_1(self.pool(f2))
        logits = self.fc_embed(self.layer4(f23).mean(dim=(2, 3)))
        x = self.conv1(self.w * torch.cat([f3, f23], dim=1))
        # ASA: softmax over space of <tanh(BN(x)), gate(attr)> / sqrt(c')
        a = self.attr_transform1(self.attr_embedding(attrs))
        a = torch.sigmoid(a) * a
        key = torch.tanh(self.img_bn1(x))
        b, c, h, w_ = key.shape
        att = (key * a[:, :, None, None]).sum(dim=1).view(b, h * w_) / math.sqrt(c)
        att = att.softmax(dim=1).view(b, 1, h, w_)
        x = x * self.w1 * att
        # SA (7x7 over channel mean and max)
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        x = (x * torch.sigmoid(self.sa_conv(s))).sum(dim=(2, 3))
        # ACA by concatenation, then the CSN mask row
        q = self.attr_transform2(self.attr_embedding(attrs))
        q = torch.sigmoid(q) * q
        mask = torch.sigmoid(self.fc2(F.relu(self.fc1(torch.cat([x, q], dim=1)))))
        x = x * self.w2 * mask * F.relu(self.masks(attrs))
        return x / x.norm(dim=1, keepdim=True), logits


class ReleasedStep:
    """One released training step: three passes, BCE/3, margin ranking on dot products, fixed weights, Adam."""

    def __init__(self, net: ReleasedNet, lr: float = 1e-4, margin: float = 0.2):
        self.net = net
        self.optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        self.ranking = nn.MarginRankingLoss(margin=margin)
        self.bce = nn.BCEWithLogitsLoss()
        self.loss_weight = 0.5 * math.e  # 0.5 * exp(1): Eq. 9 with the released init, never optimised

    def __call__(self, anchor: Tensor, positive: Tensor, negative: Tensor, attrs: Tensor) -> Tensor:
        e_a, l_a = self.net(anchor, attrs)
        e_n, l_n = self.net(negative, attrs)
        e_p, l_p = self.net(positive, attrs)
        target = F.one_hot(attrs, l_a.shape[1]).float()
        classification = (self.bce(l_a, target) + self.bce(l_n, target) + self.bce(l_p, target)) / 3
        s_far, s_close = (e_a * e_n).sum(dim=1), (e_a * e_p).sum(dim=1)
        triplet = self.ranking(s_far, s_close, -torch.ones_like(s_far))  # max(0, m + s_far - s_close)
        loss = self.loss_weight * triplet + 1 + self.loss_weight * classification + 1
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


#: agman-official parameter name -> ReleasedNet parameter name (the trunk keeps torchvision's names).
_OFFICIAL_NAMES = {
    "fusion.proj": "conv1_1", "classifier": "fc_embed", "aga.input_scale": "w", "aga.reduce": "conv1",
    "aga.asa.norm": "img_bn1", "aga.asa.attribute.embedding": "attr_embedding",
    "aga.asa.attribute.fc": "attr_transform1", "aga.asa.scale": "w1", "aga.sa.conv": "sa_conv",
    "aga.aca.attribute.fc": "attr_transform2", "aga.aca.fc1": "fc1", "aga.aca.fc2": "fc2", "aga.aca.scale": "w2",
    "aga.masks": "masks", "trunk.conv1": "stem.0", "trunk.bn1": "stem.1", "trunk.": "",
}


def copy_from_agman_official(net: ReleasedNet, official: nn.Module) -> None:
    """Load an ``agman-official`` model's weights (and BatchNorm buffers) into ``net``."""
    state = {}
    for key, value in official.state_dict().items():
        if key.startswith("aga.aca.attribute.embedding"):
            continue  # the shared table, stored once as attr_embedding
        for ours, theirs in _OFFICIAL_NAMES.items():
            if key.startswith(ours):
                key = theirs + key[len(ours):]
                break
        state[key] = value
    net.load_state_dict(state, strict=True)
