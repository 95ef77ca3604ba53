"""ASEN++ (`asenpp`): the authors' forward pass from the same weights, their checkpoint format, the two stages.

The released computation is written out below from Maryeon/asenpp (read, not imported):
``modules/model/model.py`` (``ASEN``: ``choices.global`` / ``choices.local``, each ``attrnet``
(``attr_embedding``, shared), ``basenet`` (``resnet.py``'s ``resnet50_feature`` / ``resnet34_feature``:
conv1..layer3, no fc) and ``attnnet`` (``AttnEmbedding``: ``conv`` Conv2d(c3, common, 1) + tanh,
``attr_transform1`` + tanh, dot / sqrt(common), softmax over space, weighted sum; ``attr_transform2`` +
ReLU, ``fc1`` on the concatenation, ReLU, ``fc2``, sigmoid, product; ``feature_fc``)),
``modules/data/transforms/transforms.py`` (``LocalTransform``: cv2 INTER_LINEAR resize of the map to
GLOBAL_SIZE, min-max, ``np.uint8(mask*255)``, ``cv2.threshold(255*THRESHOLD, THRESH_BINARY)``,
``cv2.boundingRect``, the square around the box centre, PIL crop, ``Resize(LOCAL_SIZE)``), and
``modules/engine/evaluation.py`` (``process_batch``: ``[sqrt(beta) norm(g), sqrt(1-beta) norm(l)]``).
The checkpoint is ``main.py``'s ``{'epoch', 'model': model.state_dict(), 'mAP'}``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from test_engine_importer import _resnet_stages, attrs, random_state, released_resnet
from test_engine_train import assert_same_weights, weights

from agman.engine.checkpoint import load_checkpoint, load_model
from agman.cli import main
from agman.engine.config import from_dict, save_config
from agman.engine.importer import import_released
from agman.engine.train import train
from agman.models import build_model
from agman.models.asenpp import attended_box

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


# --------------------------------------------------------------------------- the released layer list
def released_branch(branch: str, n: int, blocks, bottleneck: bool, common: int, attr: int = 512,
                    embed: int = 1024, rate: int = 2) -> list[tuple[str, tuple]]:
    """``choices.<branch>``'s names and shapes (model.py ``ASEN.__init__``, resnet.py ``ResNet(with_fc=False)``)."""
    p = f"choices.{branch}."
    c3 = 1024 if bottleneck else 256
    return [(p + "attrnet.attr_embedding.weight", (n, attr)),
            *released_resnet(p + "basenet.", blocks, bottleneck),
            (p + "attnnet.attr_transform1.weight", (common, attr)), (p + "attnnet.attr_transform1.bias", (common,)),
            (p + "attnnet.conv.weight", (common, c3, 1, 1)), (p + "attnnet.conv.bias", (common,)),
            (p + "attnnet.attr_transform2.weight", (attr, attr)), (p + "attnnet.attr_transform2.bias", (attr,)),
            (p + "attnnet.fc1.weight", (c3 // rate, c3 + attr)), (p + "attnnet.fc1.bias", (c3 // rate,)),
            (p + "attnnet.fc2.weight", (c3, c3 // rate)), (p + "attnnet.fc2.bias", (c3,)),
            (p + "attnnet.feature_fc.weight", (embed, c3)), (p + "attnnet.feature_fc.bias", (embed,))]


def released_asenpp(n: int, local: bool = True, seed: int = 3) -> dict[str, torch.Tensor]:
    """The released s2 (or s1) network's state dict, random; the shared table equal under both names."""
    layers = released_branch("global", n, [3, 4, 6], True, 512)
    if local:
        layers += released_branch("local", n, [3, 4, 6], False, 256)
    state = random_state(layers, seed=seed)
    if local:
        state["choices.local.attrnet.attr_embedding.weight"] = state["choices.global.attrnet.attr_embedding.weight"]
    return state


def save_asenpp(path, state):
    torch.save({"epoch": 20, "model": state, "mAP": np.float64(0.6405)}, path)
    return path


# --------------------------------------------------------------------------- the released forward pass
def released_attn_embedding(sd, p, x, c):
    """model.py ``AttnEmbedding.forward`` (spatial and channel attention enabled)."""
    key = torch.tanh(F.conv2d(x, sd[p + "conv.weight"], sd[p + "conv.bias"]))
    a = sd[p.replace("attnnet.", "attrnet.") + "attr_embedding.weight"][c]
    q = torch.tanh(F.linear(a, sd[p + "attr_transform1.weight"], sd[p + "attr_transform1.bias"]))
    att = (q[:, :, None, None] * key).sum(dim=1, keepdim=True) / key.shape[1] ** 0.5
    att = att.flatten(2).softmax(dim=2).view(att.shape)
    v = (x * att).flatten(2).sum(dim=2)
    a2 = F.relu(F.linear(a, sd[p + "attr_transform2.weight"], sd[p + "attr_transform2.bias"]))
    m = F.relu(F.linear(torch.cat((v, a2), 1), sd[p + "fc1.weight"], sd[p + "fc1.bias"]))
    m = torch.sigmoid(F.linear(m, sd[p + "fc2.weight"], sd[p + "fc2.bias"]))
    v = F.linear(v * m, sd[p + "feature_fc.weight"], sd[p + "feature_fc.bias"])
    return v, att[:, 0]


def released_branch_forward(sd, branch, x, c, blocks, bottleneck):
    *_, f3 = _resnet_stages(x, sd, f"choices.{branch}.basenet.", blocks, bottleneck)
    return released_attn_embedding(sd, f"choices.{branch}.attnnet.", f3, c)


def cv2_linear_resize(src: np.ndarray, size: int) -> np.ndarray:
    """cv2.resize(src, (size, size), interpolation=INTER_LINEAR) for float32 maps (half-pixel centres, edges clamped)."""
    def axis(n_in):
        s = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(n_in / size) - 0.5
        i0 = np.floor(s).astype(int)
        f = (s - i0).astype(np.float32)
        f[i0 < 0], i0[i0 < 0] = 0, 0
        high = i0 >= n_in - 1
        f[high], i0[high] = 0, n_in - 1
        return i0, np.minimum(i0 + 1, n_in - 1), f
    r0, r1, fr = axis(src.shape[0])
    c0, c1, fc = axis(src.shape[1])
    rows = src[r0] * (1 - fr)[:, None] + src[r1] * fr[:, None]
    return (rows[:, c0] * (1 - fc)[None] + rows[:, c1] * fc[None]).astype(np.float32)


def released_local_box(mask: np.ndarray, global_size: int, threshold: float, img_size) -> tuple[int, int, int]:
    """transforms.py ``LocalTransform.__call__`` up to the crop box (cv2.threshold and boundingRect written out)."""
    mask = cv2_linear_resize(mask.astype(np.float32), global_size)
    mask = (mask - np.min(mask)) / (np.max(mask) - np.min(mask))
    mask = np.uint8(mask * 255)
    mask = np.where(mask > 255 * threshold, 255, 0)
    ys, xs = np.nonzero(mask)
    x, y, w, h = xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    xc, yc, d = x + w // 2, y + h // 2, max(w, h)
    x = global_size - d if xc + d // 2 > global_size else max(0, xc - d // 2)
    y = global_size - d if yc + d // 2 > global_size else max(0, yc - d // 2)
    short_edge = 0 if img_size[0] < img_size[1] else 1
    x = int(x / global_size * img_size[short_edge])
    y = int(y / global_size * img_size[short_edge])
    d = int(d / global_size * img_size[short_edge])
    if short_edge == 0:
        y += (img_size[1] - img_size[0]) // 2
    else:
        x += (img_size[0] - img_size[1]) // 2
    return x, y, d


def released_local_input(rgb: np.ndarray, box, local_size: int) -> torch.Tensor:
    """``img.crop((x, y, x+d, y+d))`` then ``Resize(LOCAL_SIZE)``, ToTensor, Normalize — on 32-bit float
    channels (PIL mode F) so that 8-bit rounding does not enter the comparison."""
    x, y, d = box
    planes = []
    for ch in range(3):
        im = Image.fromarray(rgb[..., ch].astype(np.float32), mode="F").crop((x, y, x + d, y + d))
        planes.append(np.asarray(TF.resize(im, local_size), dtype=np.float32))
    out = (np.stack(planes) - MEAN[:, None, None]) / STD[:, None, None]
    return torch.from_numpy(out.astype(np.float32))


def released_asenpp_forward(sd, rgb: np.ndarray, c: torch.Tensor, *, threshold=0.1, local_size=32, beta=0.6):
    """evaluation.py ``process_batch`` for images ``rgb [B, S, S, 3]`` in [0, 1] (so GlobalTransform's
    Resize(S) + CenterCrop(S) leave them as they are)."""
    size = rgb.shape[1]
    gx = torch.from_numpy(((rgb - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32))
    g, attmap = released_branch_forward(sd, "global", gx, c, [3, 4, 6], True)
    boxes = [released_local_box(m, size, threshold, (size, size)) for m in attmap.numpy()]
    lx = torch.stack([released_local_input(im, box, local_size) for im, box in zip(rgb, boxes)])
    lv, _ = released_branch_forward(sd, "local", lx, c, [3, 4, 6], False)
    out = torch.cat((beta ** 0.5 * F.normalize(g, dim=1), (1 - beta) ** 0.5 * F.normalize(lv, dim=1)), dim=1)
    return out, boxes


# --------------------------------------------------------------------------- tests
def test_released_checkpoint_imports_every_tensor_and_embeds_as_the_authors_code(tmp_path):
    n, size = 3, 64
    state = released_asenpp(n)
    report = import_released(save_asenpp(tmp_path / "model_best.pth.tar", state), attrs(n), tmp_path / "imported.pt",
                             input_size=size)
    assert report.format.name == "asenpp" and report.unused == []
    assert set(report.placed) == set(state)  # every released tensor placed
    assert report.record["mAP"] == pytest.approx(0.6405) and report.epoch == 20
    imported = load_checkpoint(tmp_path / "imported.pt")["state_dict"]
    for released, names in report.placed.items():
        for name in names:
            assert torch.equal(imported[name], state[released]), (released, name)
    imported_model, _ = load_model(tmp_path / "imported.pt")
    assert imported_model.config["local"] and imported_model.config["local_backbone"] == "resnet34"
    # INPUT.LOCAL_SIZE 32 at 64 px inputs, and INPUT.THRESHOLD 0.5 (defaults.py: 0.4; s2.yaml: 0.1, which on
    # a random network's smooth 4x4 maps keeps the whole image): neither is part of the weights
    model = build_model("asenpp", n, **{**imported_model.config, "local_size": 32, "threshold": 0.5}).eval()
    model.load_state_dict(imported_model.state_dict())

    rgb = np.random.default_rng(7).random((4, size, size, 3)).astype(np.float32)
    x = torch.from_numpy(((rgb - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32))
    crops_seen = []
    with torch.no_grad():
        ours = model.embed_all(x)
        for a in range(n):
            theirs, boxes = released_asenpp_forward(state, rgb, torch.full((4,), a, dtype=torch.long), threshold=0.5)
            out = model(x, torch.full((4,), a, dtype=torch.long))
            assert [attended_box(m, (size, size), 0.5) for m in out.attention] == boxes  # the same crops
            crops_seen += [d for _, _, d in boxes]
            torch.testing.assert_close(out.embedding, theirs, atol=1e-5, rtol=0)
            torch.testing.assert_close(ours[:, a], theirs, atol=1e-5, rtol=0)
    assert min(crops_seen) < size // 2 < max(crops_seen)  # real crops, scaled down and up to 32 px


def test_a_stage1_checkpoint_imports_as_the_global_branch_alone(tmp_path):
    state = released_asenpp(2, local=False)
    report = import_released(save_asenpp(tmp_path / "checkpoint.pth.tar", state), attrs(2), tmp_path / "s1.pt")
    assert set(report.placed) == set(state) and report.model_config["local"] is False
    model, _ = load_model(tmp_path / "s1.pt")
    rgb = np.random.default_rng(1).random((2, 64, 64, 3)).astype(np.float32)
    x = torch.from_numpy(((rgb - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32))
    c = torch.tensor([1, 0])
    with torch.no_grad():
        g, _ = released_branch_forward(state, "global", x, c, [3, 4, 6], True)
        torch.testing.assert_close(model(x, c).embedding, F.normalize(g, dim=1), atol=1e-5, rtol=0)


def test_flat_maps_and_borders_give_a_valid_crop():
    assert attended_box(torch.full((4, 4), 1 / 16), (64, 64), 0.1) is None  # released: 0/0; agman: whole image
    peak = torch.zeros(4, 4)
    peak[0, 3] = 1.0
    x, y, d = attended_box(peak, (64, 64), 0.1)
    assert 0 <= x and x + d <= 64 + 1 and y == 0 and d < 64
    model = build_model("asenpp", 2, backbone="resnet18", local_backbone="resnet18", local_size=16).eval()
    crops = model.local_crops(torch.randn(2, 3, 64, 64), torch.stack([torch.full((1, 4, 4), 1 / 16), peak[None]]))
    assert crops.shape == (2, 3, 16, 16) and torch.isfinite(crops).all()


def test_stage2_optimizer_puts_the_global_branch_at_the_slow_rate(asen_root, tmp_path):
    from agman.engine.stages import stage_configs
    from agman.engine.train import build_state

    _, second = stage_configs(tiny_asenpp(asen_root, tmp_path / "run"))
    state = build_state(second, 2, torch.device("cpu"), None)
    fast, slow = state.optimizer.param_groups
    assert (fast["lr"], slow["lr"]) == (1e-3, 1e-4)
    slow_ids = {id(p) for p in slow["params"]}
    assert slow_ids == {id(p) for p in state.model.global_branch.parameters()}
    assert {id(p) for p in state.model.local_branch.trunk.parameters()} <= {id(p) for p in fast["params"]}


def tiny_asenpp(root, out):
    return from_dict({
        "model": {"name": "asenpp", "backbone": "resnet18", "local_backbone": "resnet18", "embedding_dim": 16,
                  "attention_dim": 16, "local_attention_dim": 8, "attribute_dim": 16, "local_size": 16},
        "data": {"root": str(root), "input_size": 32, "crop_ratio": 1.0},
        "train": {"epochs": 2, "triplets_per_epoch": 12, "batch_size": 4, "lr": 1e-3, "workers": 0, "lr_step": 1,
                  "lr_gamma": 0.5, "threads": 1,
                  "stage2": {"epochs": 2, "lr": 1e-3, "slow_lr": 1e-4, "lr_step": 1, "lr_gamma": 0.5}},
        "loss": {"classification": False, "weighting": "fixed"},
        "eval": {"batch_size": 16},
        "output": {"dir": str(out), "progress": False, "tensorboard": False},
    })


def test_two_stages_run_in_order_and_resume_in_the_right_stage(asen_root, tmp_path):
    full = train(tiny_asenpp(asen_root, tmp_path / "full"))
    assert not full.interrupted and len(full.history) == 2
    s1 = load_checkpoint(tmp_path / "full" / "s1" / "last.pt")
    s2 = load_checkpoint(full.last_path)
    assert s1["config"]["model"]["local"] is False and s2["config"]["model"]["local"] is True
    assert not any(k.startswith("local_branch.") for k in s1["state_dict"])
    assert s2["config"]["loss"]["local_weight"] == 0.1 and s2["config"]["train"]["slow_lr"] == 1e-4
    assert {"train_local", "train_align"} <= set(full.history[0])

    def after(n):  # stop after the n-th optimiser step of the whole schedule (3 steps per epoch)
        calls = []
        return lambda epoch, step: calls.append(1) or len(calls) == n

    for where, n in (("stage1", 4), ("stage2", 9)):
        cfg = tiny_asenpp(asen_root, tmp_path / where)
        cut = train(cfg, stop=after(n))
        assert cut.interrupted
        assert (tmp_path / where / "last.pt").exists() == (where == "stage2")
        # as a user would: `agman train --resume RUN` (the config from the run folder), or with --config
        save_config(cfg, tmp_path / f"{where}.yaml")
        by_folder = ["--resume", str(tmp_path / where)]
        assert main(["train", "--no-progress", *(by_folder if where == "stage1" else
                                                  ["--config", str(tmp_path / f"{where}.yaml"), "--resume"])]) == 0
        assert_same_weights(weights(full.last_path), weights(tmp_path / where / "last.pt"))
        assert_same_weights(weights(tmp_path / "full" / "s1" / "last.pt"), weights(tmp_path / where / "s1" / "last.pt"))


def test_ablate_knows_the_global_only_and_global_local_rows(tmp_path, capsys):
    from conftest import make_asen
    from test_engine_cli import TINY

    from agman.engine.ablate import plan

    per_grid, runs = plan(["asenpp"])
    assert [v.name for v in per_grid["asenpp"]] == ["asenpp-global", "asenpp"]
    root = make_asen(tmp_path / "ds")
    args = ["ablate", "--config", "configs/synthetic/asenpp.yaml", "--grid", "asenpp", "--quick",
            "--out", str(tmp_path / "ab"), f"data.root={root}", "data.synthetic=null", "output.progress=false",
            *TINY, "model.local_size=16", "model.local_attention_dim=8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ASEN++ global" in out and "local branch" in out
    single = load_checkpoint(tmp_path / "ab" / "runs" / "asenpp-global" / "best.pt")
    assert single["config"]["model"]["local"] is False and not (tmp_path / "ab" / "runs" / "asenpp-global" / "s1").exists()
    both = load_checkpoint(tmp_path / "ab" / "runs" / "asenpp" / "last.pt")
    assert both["config"]["model"]["local"] is True and both["config"]["train"]["epochs"] == 1  # --quick's stage 2
    assert (tmp_path / "ab" / "runs" / "asenpp" / "s1" / "last.pt").is_file()
