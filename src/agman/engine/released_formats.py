"""The released checkpoints' formats as data (`agman import`): each network's layer names, read in the
authors' repositories, where each lands in the agman model, and the tensors the released forward pass never reads."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReleasedFormat:
    """One released network's layer names and where agman keeps them."""

    name: str
    source: str  # where the names were read
    model: str  # agman model name
    preset_model: str  # configs/models/<preset_model>.yaml
    signature: tuple[str, ...]  # released keys (without the Tripletnet prefix) that identify the format
    prefix: str  # the Tripletnet attribute path before every key
    rules: tuple[tuple[str, tuple[str, ...]], ...]  # released name prefix -> agman name prefix(es)
    unused: tuple[str, ...] = ()  # released name prefixes the released forward pass never reads
    backbone_prefix: str = "backbonenet."
    notes: str = ""


_TRUNK = tuple((f"{part}.", (f"trunk.{part}.",)) for part in ("conv1", "bn1", "layer1", "layer2", "layer3"))


def _asen_branch(branch: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """ASEN++'s ``choices.<branch>`` (``attrnet``, ``basenet``, ``attnnet``) -> agman's ``<branch>_branch``."""
    ours = f"{branch}_branch."
    return (
        *((f"{branch}.basenet." + a, tuple(ours + t for t in b)) for a, b in _TRUNK),
        # one table serves both branches: the released state dict lists it under each, agman under ASA and ACA
        (f"{branch}.attrnet.attr_embedding.", (ours + "asa.attribute.embedding.", ours + "aca.attribute.embedding.")),
        (f"{branch}.attnnet.conv.", (ours + "asa.project.",)),
        (f"{branch}.attnnet.attr_transform1.", (ours + "asa.attribute.fc.",)),
        (f"{branch}.attnnet.attr_transform2.", (ours + "aca.attribute.fc.",)),
        (f"{branch}.attnnet.fc1.", (ours + "aca.fc1.",)),
        (f"{branch}.attnnet.fc2.", (ours + "aca.fc2.",)),
        (f"{branch}.attnnet.feature_fc.", (ours + "fc.",)),
    )


FORMATS: dict[str, ReleasedFormat] = {f.name: f for f in (
    ReleasedFormat(
        name="agman-released",
        source="Dr-LingXiao/AG-MAN model.py and model2.py (AG_MAN) with resnet.py (ResNet, resnet50): "
               "mainFashionAI.py, mainDeepFashion.py, mainZappos50k.py",
        model="agman-official",
        preset_model="agman-official",
        signature=("backbonenet.conv1_1.weight", "backbonenet.fc_embed.weight", "w", "w1", "w2",
                   "attr_transform1.weight", "img_bn1.weight", "sa.conv1.weight", "masks.weight"),
        prefix="embeddingnet.",
        rules=(
            *(("backbonenet." + a, b) for a, b in _TRUNK),
            ("backbonenet.layer4.", ("trunk.layer4.",)),
            ("backbonenet.conv1_1.", ("fusion.proj.",)),
            ("backbonenet.fc_embed.", ("classifier.",)),
            ("w", ("aga.input_scale",)),
            ("conv1.", ("aga.reduce.",)),
            ("img_bn1.", ("aga.asa.norm.",)),
            ("attr_embedding.", ("aga.asa.attribute.embedding.", "aga.aca.attribute.embedding.")),
            ("attr_transform1.", ("aga.asa.attribute.fc.",)),
            ("w1", ("aga.asa.scale",)),
            ("sa.conv1.", ("aga.sa.conv.",)),
            ("attr_transform2.", ("aga.aca.attribute.fc.",)),
            ("fc1.", ("aga.aca.fc1.",)),
            ("fc2.", ("aga.aca.fc2.",)),
            ("w2", ("aga.aca.scale",)),
            ("masks.", ("aga.masks.",)),
        ),
        notes="model.py and model2.py define the same layers; model2's Tripletnet only drops the classification "
              "loss, so its checkpoints (mainZappos50k.py) import the same way, classification branch included",
    ),
    ReleasedFormat(
        name="asen-v2",
        source="Maryeon/asen model.py (ASENet_V2) with resnet.py (resnet50_feature): main.py / asen.py",
        model="asenet-v2",
        preset_model="asenet-v2",
        signature=("attr_embedding.weight", "attr_transform1.weight", "attr_transform2.weight", "conv1.weight",
                   "img_bn1.weight", "fc1.weight", "fc2.weight"),
        prefix="embeddingnet.",
        rules=(
            *(("backbonenet." + a, b) for a, b in _TRUNK),
            ("attr_embedding.", ("asa.attribute.embedding.", "aca.attribute.embedding.")),
            ("attr_transform1.", ("asa.attribute.fc.",)),
            ("conv1.", ("asa.project.",)),
            ("img_bn1.", ("asa.norm.",)),
            ("attr_transform2.", ("aca.attribute.fc.",)),
            ("fc1.", ("aca.fc1.",)),
            ("fc2.", ("aca.fc2.",)),
            ("feature_fc.", ("projection.",)),
        ),
        # resnet50_feature builds ImageNet's fc (with_fc=True) and, in some versions, layer4; ASENet_V2 reads layer3
        unused=("backbonenet.fc.", "backbonenet.layer4."),
    ),
    ReleasedFormat(
        name="asenpp",
        source="Maryeon/asenpp modules/model/model.py (ASEN: choices.global / choices.local, each attrnet, basenet, "
               "attnnet) with modules/model/resnet.py (resnet50_feature / resnet34_feature: conv1..layer3, no fc): "
               "main.py saves {'epoch', 'model': model.state_dict(), 'mAP'}",
        model="asenpp",
        preset_model="asenpp",
        signature=("global.attrnet.attr_embedding.weight", "global.attnnet.conv.weight",
                   "global.attnnet.feature_fc.weight"),
        prefix="choices.",
        rules=(*_asen_branch("global"), *_asen_branch("local")),
        backbone_prefix="global.basenet.",
        notes="a stage-1 file (s1.yaml: no choices.local) imports as model.local=false; the crop threshold, "
              "local input size and beta are not in the weights: s2.yaml's 0.1, 112 and 0.6",
    ),
    ReleasedFormat(
        name="csn",
        source="andreasveit/conditional-similarity-networks csn.py (ConditionalSimNet) with Resnet_18.py "
               "(resnet18: conv1..layer3, avgpool, fc_embed) and tripletnet.py (CS_Tripletnet): main.py",
        model="csn",
        preset_model="csn",
        signature=("embeddingnet.fc_embed.weight", "masks.weight"),
        prefix="embeddingnet.",
        rules=(
            *(("embeddingnet." + a, b) for a, b in _TRUNK),
            ("embeddingnet.fc_embed.", ("embed.",)),
            ("masks.", ("masks.",)),
        ),
        backbone_prefix="embeddingnet.",
        notes="the original compares unnormalised embeddings by Euclidean distance; agman's CSN ranks by the cosine "
              "of the masked embedding (the same order only when norms are equal)",
    ),
    ReleasedFormat(
        name="asen-csn",
        source="Maryeon/asen model.py (ConditionalSimNet over resnet50_feature's layer3, embed_fc, masks)",
        model="csn",
        preset_model="csn",
        signature=("embed_fc.weight", "masks.weight"),
        prefix="embeddingnet.",
        rules=(
            *(("embeddingnet." + a, b) for a, b in _TRUNK),
            ("embed_fc.", ("embed.",)),
            ("masks.", ("masks.",)),
        ),
        unused=("embeddingnet.fc.", "embeddingnet.layer4."),
        backbone_prefix="embeddingnet.",
    ),
)}

#: Block counts of layer1..layer3 and the block kind -> torchvision ResNet name.
BACKBONES = {((2, 2, 2), False): "resnet18", ((3, 4, 6), False): "resnet34", ((3, 4, 6), True): "resnet50",
              ((3, 4, 23), True): "resnet101"}
