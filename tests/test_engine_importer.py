"""`agman import`: checkpoints of the authors' released code, built here in the released naming.

The layer names and shapes below are written out from the authors' files (read, not imported):

* Dr-LingXiao/AG-MAN ``resnet.py`` (``ResNet(Bottleneck, [3, 4, 6, 3], cls_num)``: conv1, bn1,
  layer1..4 by ``_make_layer``, ``fc_embed`` Linear(2048, n), ``conv1_1`` Conv2d(512, 1024, 1)) and
  ``model.py`` / ``model2.py`` (``AG_MAN``: w, w1, w2, conv1 Conv2d(2048, 512, 1), img_bn1,
  attr_embedding Embedding(n, 512), attr_transform1/2 Linear(512, 512), sa.conv1 Conv2d(2, 1, 7, no bias),
  fc1 Linear(1024, 512), fc2 Linear(512, 512), masks Embedding(n, 512)), inside
  ``Tripletnet.embeddingnet``; saved as ``{'epoch', 'state_dict', 'prec'}`` (``prec`` a numpy float).
* Maryeon/asen ``resnet.py`` (``resnet50_feature``: conv1..layer3, ImageNet ``fc`` Linear(2048, 1000),
  layer4 in later versions) and ``model.py`` (``ASENet_V2``: attr_embedding, attr_transform1, conv1
  Conv2d(1024, 512, 1), img_bn1, attr_transform2, fc1 Linear(1536, 512), fc2 Linear(512, 1024), and in
  later versions feature_fc Linear(1024, dim_embed)); PyTorch 1.1's (non-zip) serialization.
* andreasveit/conditional-similarity-networks ``Resnet_18.py`` (``ResNet(BasicBlock, [2, 2, 2])``:
  conv1..layer3, ``fc_embed`` Linear(256, 64)), ``csn.py`` (masks Embedding(n, 64)) inside
  ``CS_Tripletnet.embeddingnet``; saved as ``{'epoch', 'state_dict', 'best_prec1'}``.

Each test fills those names with random tensors, saves them as the released script does, imports,
and checks every released tensor's value in the agman parameter it belongs to, then the imported
model's embeddings against the released forward pass written out with plain tensor operations.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_asen
from test_cli_json import validate

from agman.cli import main
from agman.data.spec import Attribute
from agman.engine.checkpoint import load_checkpoint, load_model
from agman.engine.importer import ImportFormatError, ImportReadError, import_released

# --------------------------------------------------------------------------- released layer lists


def _bn(name: str, c: int) -> list[tuple[str, tuple]]:
    return [(f"{name}.weight", (c,)), (f"{name}.bias", (c,)), (f"{name}.running_mean", (c,)),
            (f"{name}.running_var", (c,)), (f"{name}.num_batches_tracked", ())]


def released_resnet(prefix: str, blocks: list[int], bottleneck: bool) -> list[tuple[str, tuple]]:
    """resnet.py's names: ``_make_layer(block, planes, blocks, stride)`` with planes 64, 128, 256, 512;
    a downsample (1x1 conv + BN) on a stage's first block when the stride or the width changes."""
    out = [(f"{prefix}conv1.weight", (64, 3, 7, 7)), *_bn(f"{prefix}bn1", 64)]
    expansion, inplanes = (4 if bottleneck else 1), 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for i in range(n):
            b = f"{prefix}layer{stage}.{i}."
            if bottleneck:
                out += [(b + "conv1.weight", (planes, inplanes, 1, 1)), *_bn(b + "bn1", planes),
                        (b + "conv2.weight", (planes, planes, 3, 3)), *_bn(b + "bn2", planes),
                        (b + "conv3.weight", (planes * 4, planes, 1, 1)), *_bn(b + "bn3", planes * 4)]
            else:
                out += [(b + "conv1.weight", (planes, inplanes, 3, 3)), *_bn(b + "bn1", planes),
                        (b + "conv2.weight", (planes, planes, 3, 3)), *_bn(b + "bn2", planes)]
            if i == 0 and (stage > 1 or inplanes != planes * expansion):
                out += [(b + "downsample.0.weight", (planes * expansion, inplanes, 1, 1)),
                        *_bn(b + "downsample.1", planes * expansion)]
            inplanes = planes * expansion
    return out


def released_agman(n: int) -> list[tuple[str, tuple]]:
    """``Tripletnet(AG_MAN(resnet50(n)))``'s state dict names and shapes (model.py / model2.py)."""
    e = "embeddingnet."
    return [
        (e + "w1", (1,)), (e + "w2", (1,)), (e + "w", (1,)),
        *released_resnet(e + "backbonenet.", [3, 4, 6, 3], bottleneck=True),
        (e + "backbonenet.fc_embed.weight", (n, 2048)), (e + "backbonenet.fc_embed.bias", (n,)),
        (e + "backbonenet.conv1_1.weight", (1024, 512, 1, 1)), (e + "backbonenet.conv1_1.bias", (1024,)),
        (e + "attr_embedding.weight", (n, 512)),
        (e + "attr_transform1.weight", (512, 512)), (e + "attr_transform1.bias", (512,)),
        (e + "conv1.weight", (512, 2048, 1, 1)), (e + "conv1.bias", (512,)),
        *_bn(e + "img_bn1", 512),
        (e + "sa.conv1.weight", (1, 2, 7, 7)),
        (e + "attr_transform2.weight", (512, 512)), (e + "attr_transform2.bias", (512,)),
        (e + "fc1.weight", (512, 1024)), (e + "fc1.bias", (512,)),
        (e + "fc2.weight", (512, 512)), (e + "fc2.bias", (512,)),
        (e + "masks.weight", (n, 512)),
    ]


def released_asen_v2(n: int, layer4: bool = False, feature_fc: int | None = None) -> list[tuple[str, tuple]]:
    """``Tripletnet(ASENet_V2(resnet50_feature()))`` (asen model.py / resnet.py)."""
    e = "embeddingnet."
    out = [*released_resnet(e + "backbonenet.", [3, 4, 6, 3] if layer4 else [3, 4, 6], bottleneck=True),
           (e + "backbonenet.fc.weight", (1000, 2048)), (e + "backbonenet.fc.bias", (1000,)),
           (e + "attr_embedding.weight", (n, 512)),
           (e + "attr_transform1.weight", (512, 512)), (e + "attr_transform1.bias", (512,)),
           (e + "conv1.weight", (512, 1024, 1, 1)), (e + "conv1.bias", (512,)),
           *_bn(e + "img_bn1", 512),
           (e + "attr_transform2.weight", (512, 512)), (e + "attr_transform2.bias", (512,)),
           (e + "fc1.weight", (512, 1536)), (e + "fc1.bias", (512,)),
           (e + "fc2.weight", (1024, 512)), (e + "fc2.bias", (1024,))]
    if feature_fc:
        out += [(e + "feature_fc.weight", (feature_fc, 1024)), (e + "feature_fc.bias", (feature_fc,))]
    return out


def released_csn(n: int, dim: int = 64) -> list[tuple[str, tuple]]:
    """``CS_Tripletnet(ConditionalSimNet(resnet18(embedding_size=64)))`` (csn.py, Resnet_18.py, tripletnet.py)."""
    e = "embeddingnet."
    return [*released_resnet(e + "embeddingnet.", [2, 2, 2], bottleneck=False),
            (e + "embeddingnet.fc_embed.weight", (dim, 256)), (e + "embeddingnet.fc_embed.bias", (dim,)),
            (e + "masks.weight", (n, dim))]


#: Where each released name belongs in agman's model (released name prefix -> agman name prefixes).
EXPECTED = {
    "agman-released": [("embeddingnet.backbonenet.conv1_1.", ["fusion.proj."]),
                       ("embeddingnet.backbonenet.fc_embed.", ["classifier."]),
                       ("embeddingnet.backbonenet.", ["trunk."]),
                       ("embeddingnet.w1", ["aga.asa.scale"]), ("embeddingnet.w2", ["aga.aca.scale"]),
                       ("embeddingnet.w", ["aga.input_scale"]), ("embeddingnet.conv1.", ["aga.reduce."]),
                       ("embeddingnet.img_bn1.", ["aga.asa.norm."]),
                       ("embeddingnet.attr_embedding.", ["aga.asa.attribute.embedding.",
                                                         "aga.aca.attribute.embedding."]),
                       ("embeddingnet.attr_transform1.", ["aga.asa.attribute.fc."]),
                       ("embeddingnet.sa.conv1.", ["aga.sa.conv."]),
                       ("embeddingnet.attr_transform2.", ["aga.aca.attribute.fc."]),
                       ("embeddingnet.fc1.", ["aga.aca.fc1."]), ("embeddingnet.fc2.", ["aga.aca.fc2."]),
                       ("embeddingnet.masks.", ["aga.masks."])],
    "asen-v2": [("embeddingnet.backbonenet.", ["trunk."]),
                ("embeddingnet.attr_embedding.", ["asa.attribute.embedding.", "aca.attribute.embedding."]),
                ("embeddingnet.attr_transform1.", ["asa.attribute.fc."]), ("embeddingnet.conv1.", ["asa.project."]),
                ("embeddingnet.img_bn1.", ["asa.norm."]), ("embeddingnet.attr_transform2.", ["aca.attribute.fc."]),
                ("embeddingnet.fc1.", ["aca.fc1."]), ("embeddingnet.fc2.", ["aca.fc2."]),
                ("embeddingnet.feature_fc.", ["projection."])],
    "csn": [("embeddingnet.embeddingnet.fc_embed.", ["embed."]), ("embeddingnet.embeddingnet.", ["trunk."]),
            ("embeddingnet.masks.", ["masks."])],
}
NEVER_READ = {"asen-v2": ("embeddingnet.backbonenet.fc.", "embeddingnet.backbonenet.layer4.")}


def random_state(layers, seed=0) -> dict[str, torch.Tensor]:
    """Random tensors of the listed shapes, every one distinct, scaled so that the random network still
    tells images apart (He-scaled weights, BatchNorms near the identity, counters integers)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in layers:
        leaf = name.split(".")[-1]
        if leaf == "num_batches_tracked":
            out[name] = torch.tensor(1000 + len(out))
        elif leaf == "running_var":
            out[name] = 1 + 0.2 * torch.rand(shape, generator=g)
        elif leaf == "running_mean":
            out[name] = 0.05 * torch.randn(shape, generator=g)
        elif leaf in ("w", "w1", "w2") or name.endswith("masks.weight"):
            out[name] = 1 + 0.2 * torch.rand(shape, generator=g)
        elif len(shape) == 1:  # BN weights and biases, FC and conv biases
            out[name] = (1.0 if leaf == "weight" else 0.0) + 0.05 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            out[name] = torch.randn(shape, generator=g) * math.sqrt(1.0 / fan_in)
    return out


def expected_name(fmt: str, released: str) -> list[str]:
    for prefix, targets in EXPECTED[fmt]:
        if released == prefix or (prefix.endswith(".") and released.startswith(prefix)):
            rest = released[len(prefix):]
            return [t + rest if prefix.endswith(".") else t for t in targets]
    raise AssertionError(f"the test's map has no place for {released}")


def save_released(path, state, *, key="prec", parallel=False, legacy=False):
    """As the released scripts: ``torch.save({'epoch', 'state_dict': tnet.state_dict(), key}, path)``."""
    if parallel:
        state = {f"module.{k}": v for k, v in state.items()}
    payload = {"epoch": 17, "state_dict": state, key: np.float64(0.6288) if key == "prec" else 93.14}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


def attrs(n: int) -> list[Attribute]:
    return [Attribute(f"attr{a}", ("x", "y")) for a in range(n)]


def check_every_tensor(fmt: str, state: dict, ckpt_path) -> None:
    imported = load_checkpoint(ckpt_path)["state_dict"]
    for name, tensor in state.items():
        if name.startswith(NEVER_READ.get(fmt, ("-",))):
            continue
        for agman_name in expected_name(fmt, name):
            assert torch.equal(imported[agman_name], tensor), f"{name} did not land in {agman_name}"


# --------------------------------------------------------------------------- released forward passes
def _bn_eval(x, sd, p):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
                        False, 0.0, 1e-5)


def _resnet_stages(x, sd, p, blocks, bottleneck, strides=(1, 2, 2, 2)):
    """resnet.py's forward, stage by stage (yields each stage's output)."""
    x = F.max_pool2d(F.relu(_bn_eval(F.conv2d(x, sd[p + "conv1.weight"], stride=2, padding=3), sd, p + "bn1.")),
                     3, 2, 1)
    for stage, n in enumerate(blocks, start=1):
        for i in range(n):
            b, s = f"{p}layer{stage}.{i}.", strides[stage - 1] if i == 0 else 1
            if bottleneck:
                out = F.relu(_bn_eval(F.conv2d(x, sd[b + "conv1.weight"]), sd, b + "bn1."))
                out = F.relu(_bn_eval(F.conv2d(out, sd[b + "conv2.weight"], stride=s, padding=1), sd, b + "bn2."))
                out = _bn_eval(F.conv2d(out, sd[b + "conv3.weight"]), sd, b + "bn3.")
            else:
                out = F.relu(_bn_eval(F.conv2d(x, sd[b + "conv1.weight"], stride=s, padding=1), sd, b + "bn1."))
                out = _bn_eval(F.conv2d(out, sd[b + "conv2.weight"], padding=1), sd, b + "bn2.")
            res = x
            if b + "downsample.0.weight" in sd:
                res = _bn_eval(F.conv2d(x, sd[b + "downsample.0.weight"], stride=s), sd, b + "downsample.1.")
            x = F.relu(out + res)
        yield x


def released_agman_features(sd, x):
    """resnet.py's ``ResNet.forward`` up to ``torch.cat((x, x_local), dim=1)`` (x1, the classification
    logits, does not reach the embedding)."""
    p = "embeddingnet.backbonenet."
    stages = _resnet_stages(x, sd, p, [3, 4, 6], True)
    _, layer2, layer3 = next(stages), next(stages), next(stages)
    x2 = F.conv2d(F.max_pool2d(layer2, 3, 2, 1), sd[p + "conv1_1.weight"], sd[p + "conv1_1.bias"])
    return torch.cat((layer3, x2 + layer3), dim=1)


def released_agman_forward(sd, x, c):
    """model.py ``AG_MAN.forward`` over resnet.py's ``ResNet.forward`` (the 14x14 the code fixes for 224 px
    is the feature grid here)."""
    e = "embeddingnet."
    x = sd[e + "w"] * released_agman_features(sd, x)
    x = F.conv2d(x, sd[e + "conv1.weight"], sd[e + "conv1.bias"])
    img = torch.tanh(_bn_eval(x, sd, e + "img_bn1."))  # ASA
    attr = F.linear(sd[e + "attr_embedding.weight"][c], sd[e + "attr_transform1.weight"], sd[e + "attr_transform1.bias"])
    attr = torch.sigmoid(attr) * attr
    att = (attr[:, :, None, None] * img).sum(dim=1, keepdim=True) / 512 ** 0.5
    att = att.flatten(2).softmax(dim=2).view_as(att)
    x = x * sd[e + "w1"] * att
    pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # sa
    x = torch.sigmoid(F.conv2d(pooled, sd[e + "sa.conv1.weight"], padding=3)) * x
    x = x.flatten(2).sum(dim=2)
    attr = F.linear(sd[e + "attr_embedding.weight"][c], sd[e + "attr_transform2.weight"], sd[e + "attr_transform2.bias"])
    attr = torch.sigmoid(attr) * attr  # ACA
    mask = torch.sigmoid(F.linear(F.relu(F.linear(torch.cat((x, attr), 1), sd[e + "fc1.weight"], sd[e + "fc1.bias"])),
                                  sd[e + "fc2.weight"], sd[e + "fc2.bias"]))
    x = x * sd[e + "w2"] * mask
    x = x * F.relu(sd[e + "masks.weight"][c])
    return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


def released_asen_forward(sd, x, c):
    """asen model.py ``ASENet_V2.forward`` (with ``feature_fc`` when the file has it)."""
    e = "embeddingnet."
    stages = _resnet_stages(x, sd, e + "backbonenet.", [3, 4, 6], True)
    next(stages), next(stages)
    x = next(stages)
    img = torch.tanh(_bn_eval(F.conv2d(x, sd[e + "conv1.weight"], sd[e + "conv1.bias"]), sd, e + "img_bn1."))
    attr = torch.tanh(F.linear(sd[e + "attr_embedding.weight"][c], sd[e + "attr_transform1.weight"],
                               sd[e + "attr_transform1.bias"]))
    att = (attr[:, :, None, None] * img).sum(dim=1, keepdim=True) / 512 ** 0.5
    att = att.flatten(2).softmax(dim=2).view_as(att)
    x = (x * att).flatten(2).sum(dim=2)
    attr = F.relu(F.linear(sd[e + "attr_embedding.weight"][c], sd[e + "attr_transform2.weight"],
                           sd[e + "attr_transform2.bias"]))
    mask = torch.sigmoid(F.linear(F.relu(F.linear(torch.cat((x, attr), 1), sd[e + "fc1.weight"], sd[e + "fc1.bias"])),
                                  sd[e + "fc2.weight"], sd[e + "fc2.bias"]))
    x = x * mask
    if e + "feature_fc.weight" in sd:
        x = F.linear(x, sd[e + "feature_fc.weight"], sd[e + "feature_fc.bias"])
    return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


def released_csn_forward(sd, x, c):
    """csn.py ``ConditionalSimNet.forward`` over Resnet_18.py (avgpool over the layer3 grid, fc_embed);
    agman's CSN L2-normalises the masked embedding, so the comparison normalises it too."""
    e = "embeddingnet."
    *_, x = _resnet_stages(x, sd, e + "embeddingnet.", [2, 2, 2], False)
    x = F.linear(x.mean(dim=(2, 3)), sd[e + "embeddingnet.fc_embed.weight"], sd[e + "embeddingnet.fc_embed.bias"])
    x = x * F.relu(sd[e + "masks.weight"][c])
    return x / x.norm(dim=1, keepdim=True)


def assert_embeddings_equal(ckpt_path, forward, state, n, size=64):
    model, _ = load_model(ckpt_path)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model.embed_all(x)
        for a in range(n):
            theirs = forward(state, x, torch.full((3,), a, dtype=torch.long))
            torch.testing.assert_close(ours[:, a], theirs, atol=2e-5, rtol=1e-4)


# --------------------------------------------------------------------------- the formats
@pytest.mark.parametrize("n, key, parallel", [(8, "prec", False), (4, "prec", True)],
                         ids=["mainFashionAI-model.py", "mainZappos50k-model2.py-DataParallel"])
def test_released_agman_every_tensor_lands_and_embeds_as_released(tmp_path, n, key, parallel):
    state = random_state(released_agman(n))
    src = save_released(tmp_path / "checkpoint.pth.tar", state, key=key, parallel=parallel)
    report = import_released(src, attrs(n), tmp_path / "imported.pt", dataset="zappos50k" if n == 4 else "fashionai")
    assert report.format.name == "agman-released" and report.stripped_prefix == parallel
    assert set(report.placed) == set(state) and report.unused == []
    check_every_tensor("agman-released", state, tmp_path / "imported.pt")
    ckpt = load_checkpoint(tmp_path / "imported.pt")
    assert ckpt["model_name"] == "agman-official" and ckpt["epoch"] == 17
    assert ckpt["config"]["model"]["name"] == "agman-official" and ckpt["metrics"]["released"]["prec"] == 0.6288
    assert_embeddings_equal(tmp_path / "imported.pt", released_agman_forward, state, n)


@pytest.mark.parametrize("layer4, feature_fc", [(False, None), (True, 1024)],
                         ids=["resnet50_feature-layer3", "layer4-and-feature_fc"])
def test_released_asen_v2_every_tensor_lands_and_embeds_as_released(tmp_path, layer4, feature_fc):
    n = 8
    state = random_state(released_asen_v2(n, layer4, feature_fc), seed=1)
    src = save_released(tmp_path / "model_best.pth.tar", state, legacy=True)  # PyTorch 1.1's format
    report = import_released(src, attrs(n), tmp_path / "imported.pt")
    assert report.format.name == "asen-v2"
    never = [k for k in state if k.startswith(NEVER_READ["asen-v2"])]
    assert sorted(report.unused) == sorted(never) and set(report.placed) == set(state) - set(never)
    check_every_tensor("asen-v2", state, tmp_path / "imported.pt")
    assert_embeddings_equal(tmp_path / "imported.pt", released_asen_forward, state, n)


def test_released_csn_every_tensor_lands_and_embeds_as_released(tmp_path):
    n = 4
    state = random_state(released_csn(n), seed=2)
    src = save_released(tmp_path / "model_best.pth.tar", state, key="best_prec1")
    report = import_released(src, attrs(n), tmp_path / "imported.pt")
    assert report.format.name == "csn" and set(report.placed) == set(state)
    check_every_tensor("csn", state, tmp_path / "imported.pt")
    ckpt = load_checkpoint(tmp_path / "imported.pt")
    assert ckpt["model_config"]["backbone"] == "resnet18" and ckpt["model_config"]["embedding_dim"] == 64
    assert ckpt["input_size"] == 112
    assert_embeddings_equal(tmp_path / "imported.pt", released_csn_forward, state, n, size=112)


# --------------------------------------------------------------------------- eval equals the released loop
def released_eval_map(forward, state, spec, split, size) -> float:
    """mainFashionAI.py ``test()``: embed every candidate row and query row with ``test_model(img, c)``,
    per attribute ``simmat = queries @ cand.T``, ``argsort(-sim)``, metric.py's APScorer per query, and
    ``mAPs.update(mAP, n_queries)``: the mean over all queries."""
    from agman.data.transforms import build_transform
    from PIL import Image

    s = spec.splits[split]
    tf = build_transform(size, train=False, crop_ratio=1.0)

    def embed(rows):
        with torch.no_grad():
            x = torch.stack([tf(Image.open(spec.root / s.paths[i]).convert("RGB")) for i, _, _ in rows])
            return forward(state, x, torch.tensor([a for _, a, _ in rows])).numpy()

    def ap(sorted_labels):
        relevant = sum(1 for x in sorted_labels if x > 0)
        if relevant == 0:
            return 0.0
        total, rel = 0.0, 0
        for i, lab in enumerate(sorted_labels):
            if lab >= 1:
                rel += 1
                total += rel / (i + 1.0)
        return total / relevant

    total, count = 0.0, 0
    for a in range(spec.n_attributes):
        cand = [tuple(r) for r in s.candidates.tolist() if r[1] == a]
        query = [tuple(r) for r in s.queries.tolist() if r[1] == a]
        if not query:
            continue
        simmat = np.matmul(embed(query), embed(cand).T)
        ap_sum = 0.0
        for q in range(simmat.shape[0]):
            index = np.argsort(-simmat[q])
            ap_sum += ap([1 if cand[index[i]][2] == query[q][2] else 0 for i in range(index.shape[0])])
        total += ap_sum / simmat.shape[0] * len(query)
        count += len(query)
    return total / count


def distinct_images(root, size=32) -> None:
    """Replace the set's noise images by coarse colour layouts (a random 3x3 grid, upsampled), which a
    random network embeds far apart: MAP then does not hang on float-level near-ties."""
    from PIL import Image

    for i, path in enumerate(sorted(root.glob("images/*/*.png"))):
        grid = np.random.default_rng(i).integers(0, 256, (3, 3, 3), dtype=np.uint8)
        Image.fromarray(grid).resize((size, size), Image.NEAREST).save(path)


def centre_reduction(state, root, size=64) -> None:
    """Choose AG-MAN's ``conv1.bias`` so that the reduced feature has mean 0 over the set's images: a
    random network's post-ReLU features share one large mean direction, which would leave every
    cosine near 1 and the rankings hanging on float-level near-ties."""
    from agman.data.transforms import build_transform
    from PIL import Image

    tf = build_transform(size, train=False, crop_ratio=1.0)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in sorted(root.glob("images/test/*.png"))])
    e = "embeddingnet."
    with torch.no_grad():
        f = state[e + "w"] * released_agman_features(state, x)
        reduced = F.conv2d(f, state[e + "conv1.weight"])
        state[e + "conv1.bias"] = -reduced.mean(dim=(0, 2, 3))
        state[e + "img_bn1.running_mean"] = torch.zeros(512)


def test_agman_eval_of_an_imported_checkpoint_gives_the_released_loops_map(tmp_path, capsys):
    from agman.data.layouts import open_dataset

    root = make_asen(tmp_path / "data", n_per_split=(6, 6, 30), values=(3, 2, 3, 2))
    distinct_images(root)
    n = 4
    state = random_state(released_agman(n), seed=3)
    centre_reduction(state, root)
    src = save_released(tmp_path / "checkpoint.pth.tar", state)
    code = main(["import", str(src), "--data", str(root), "--out", str(tmp_path / "imported.pt"),
                 "--input-size", "64", "--preset", "synthetic"])
    assert code == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "imported.pt"), "--split", "test", "--device", "cpu",
                 "--workers", "0", "--json", "--out", str(tmp_path / "eval")]) == 0
    ours = json.loads(capsys.readouterr().out)["metrics"]["map"]
    spec = open_dataset(root)
    theirs = released_eval_map(released_agman_forward, state, spec, "test", 64)
    assert 0 < theirs < 1 and ours == pytest.approx(theirs, abs=1e-9)
    # the imported checkpoint indexes, searches and draws attention like any agman checkpoint
    index, image = tmp_path / "index", root / spec.split("test").paths[3]
    assert main(["index", "--checkpoint", str(tmp_path / "imported.pt"), "--images", str(root), "--split", "test",
                 "--out", str(index), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--image", str(image), "-a", "attr2", "--k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == spec.split("test").paths[3]
    assert main(["attention", "--index", str(index), "--image", str(image), "-a", "attr1",
                 "--out", str(tmp_path / "att.png")]) == 0 and (tmp_path / "att.png").stat().st_size > 0


def test_import_json_lists_every_placement_and_a_forced_wrong_format_is_named(tmp_path, capsys):
    state = random_state(released_csn(2), seed=10)
    src = save_released(tmp_path / "c.pth.tar", state, key="best_prec1", parallel=True)
    (tmp_path / "meta.json").write_text(json.dumps({"ATTRIBUTES": ["heel", "closure"],
                                                    "ATTRIBUTES_NUM": {"heel": 3, "closure": 2}}))
    args = ["import", str(src), "--meta", str(tmp_path / "meta.json"), "--out", str(tmp_path / "o.pt")]
    assert main(args + ["--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    validate(body, "model-card.md", "import")
    assert body["format"] == "csn" and body["stripped_module_prefix"] is True
    assert set(body["placed"]) == set(state) and body["attributes"] == ["heel", "closure"]
    assert main(args) == 2 and "already exists; pass --force" in capsys.readouterr().err
    assert main(args + ["--format", "asen-v2", "--force"]) == 2
    assert "is not in the asen-v2 format: it lacks embeddingnet.attr_embedding.weight" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input
def test_a_file_of_no_supported_format_names_its_keys_and_tensors(tmp_path, capsys):
    torch.save({"epoch": 3, "model": {"encoder.weight": torch.zeros(2)}, "optimizer": {}}, tmp_path / "x.pth")
    torch.save({"epoch": 3, "state_dict": {"encoder.weight": torch.zeros(2), "head.bias": torch.zeros(1)}},
               tmp_path / "y.pth")
    (tmp_path / "meta.json").write_text(json.dumps({"ATTRIBUTES": ["a"], "ATTRIBUTES_NUM": {"a": 2}}))
    for name, shown in (("x.pth", "'model', 'optimizer'"), ("y.pth", "encoder.weight, head.bias")):
        code = main(["import", str(tmp_path / name), "--meta", str(tmp_path / "meta.json"), "--out",
                     str(tmp_path / "o.pt")])
        err = capsys.readouterr().err
        assert code == 2 and shown in err and "Traceback" not in err
    assert not (tmp_path / "o.pt").exists()


def test_attribute_count_mismatch_names_both(tmp_path, capsys):
    state = random_state(released_csn(4), seed=4)
    src = save_released(tmp_path / "c.pth.tar", state, key="best_prec1")
    root = make_asen(tmp_path / "data", values=(3, 2))
    code = main(["import", str(src), "--data", str(root), "--out", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "4 attributes" in err and "2: attr0, attr1" in err


@pytest.mark.parametrize("damage", ["truncated", "text", "empty", "pickled-code"])
def test_unreadable_files_are_one_clear_sentence(tmp_path, capsys, damage):
    path = tmp_path / "bad.pth.tar"
    if damage == "truncated":
        save_released(path, random_state(released_csn(2), seed=6), key="best_prec1")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "text":
        path.write_text("epoch,prec\n3,0.5\n")
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"epoch": 1, "state_dict": {}, "args": argparse_like()}, path)
    with pytest.raises(ImportReadError) as err:
        import_released(path, attrs(2))
    assert str(path) in str(err.value)
    assert {"truncated": "truncated", "text": "not a file torch.save wrote", "empty": "empty",
            "pickled-code": "Python objects"}[damage] in str(err.value)


def argparse_like():
    import argparse

    return argparse.Namespace(lr=1e-4)


def test_a_tensor_the_map_does_not_place_stops_the_import_naming_it(tmp_path):
    state = random_state(released_csn(2), seed=7)
    state["embeddingnet.extra_head.weight"] = torch.zeros(3)
    src = save_released(tmp_path / "c.pth.tar", state, key="best_prec1")
    with pytest.raises(ImportFormatError, match="embeddingnet.extra_head.weight"):
        import_released(src, attrs(2), tmp_path / "o.pt")
    assert not (tmp_path / "o.pt").exists()


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(tmp_path):
    state = random_state(released_csn(2), seed=8)
    state["embeddingnet.embeddingnet.layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    src = save_released(tmp_path / "c.pth.tar", state, key="best_prec1")
    with pytest.raises(ImportFormatError, match=r"layer2\.0\.conv1\.weight \[128, 64, 1, 1\] -> .*\[128, 64, 3, 3\]"):
        import_released(src, attrs(2))


def test_a_missing_tensor_is_named(tmp_path):
    state = random_state(released_csn(2), seed=9)
    del state["embeddingnet.embeddingnet.layer3.1.bn2.running_var"]
    src = save_released(tmp_path / "c.pth.tar", state, key="best_prec1")
    with pytest.raises(ImportFormatError, match=r"trunk\.layer3\.1\.bn2\.running_var"):
        import_released(src, attrs(2))
