"""Checkpoints: integrity (the weights hash is verified at load), foreign files, devices (#12.3, #14)."""
from __future__ import annotations

import collections
import io
import json
import pickle
import zipfile

import pytest
import torch

from agman.cli import main
from agman.data.spec import Attribute
from agman.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
    weights_identity,
)
from agman.engine.distributed import pick_device
from agman.errors import InvalidValueError, NotFoundError
from agman.models.registry import build_model

ATTRS = [Attribute("collar", ("round", "v")), Attribute("sleeve", ("short", "long", "none"))]


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    torch.manual_seed(0)
    net = build_model("agman", len(ATTRS), backbone="resnet18", embedding_dim=32, attention_dim=16)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model=net, model_name="agman",
                           attributes=ATTRS, input_size=32, crop_ratio=1.0)


def _rewrite(src, dst, edit):
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def test_intact_checkpoint_loads_with_its_identity(ckpt_path):
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["identity"] == weights_identity(ckpt["state_dict"])
    model, info = load_model(ckpt_path)
    assert info.identity == ckpt["identity"] and not model.training


def test_changed_weights_with_kept_identity_are_refused(ckpt_path, tmp_path, capsys):
    def nudge(ckpt):
        key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.numel() > 10)
        ckpt["state_dict"][key][0] += 1e-3  # one number changed; "identity" left as it was

    bad = _rewrite(ckpt_path, tmp_path / "tampered.pt", nudge)
    with pytest.raises(CheckpointError, match=rf"{bad}: its weights do not match the identity recorded"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="changed or damaged after saving"):
        load_model(bad)
    assert load_checkpoint(bad, verify=False)["identity"] == load_checkpoint(ckpt_path)["identity"]
    # the command line: exit 1 and the message, no traceback
    assert main(["eval", "--checkpoint", str(bad), "--data", str(tmp_path), "--device", "cpu"]) == 1
    assert f"{bad}: its weights do not match" in capsys.readouterr().err


def test_checkpoint_without_identity_is_refused(ckpt_path, tmp_path):
    """A lost identity (a damaged key name) must not let unchecked weights through."""
    path = _rewrite(ckpt_path, tmp_path / "noid.pt", lambda c: c.pop("identity"))
    with pytest.raises(CheckpointError, match=rf"{path} is a damaged agman checkpoint: no weight identity recorded"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no weight identity"):
        load_checkpoint(path, verify=False)


def _bytes_of(obj, **kw) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x", "y")
    return buf.getvalue()


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", r"is empty"),
        (b"name,collar\nx.png,round\n", r"is not an agman checkpoint .*: it is not a file torch.save wrote"),
        (json.dumps({"model_name": "agman"}).encode(), r"it is not a file torch.save wrote"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), r"it is not a file torch.save wrote"),
        (pickle.dumps(collections.Counter("abc")), r"it is a Python pickle that torch.save did not write"),
        (_bytes_of(torch.nn.Linear(2, 2)), r"it holds Python objects \(it needs torch.nn.modules.linear.Linear\)"),
        (_bytes_of(torch.nn.Linear(2, 2).state_dict()), r"it is a bare state dict \(2 tensors\)"),
        (_bytes_of([1, 2]), r"it holds a list, not a checkpoint dict"),
        (_bytes_of({"a": 1}), r"missing format_version, model_name"),
        (_bytes_of({"a": torch.ones(3)})[:300], r"is truncated or damaged"),
        (_bytes_of({"a": torch.ones(3)}, _use_new_zipfile_serialization=False)[:40], r"is truncated"),
        (_zip_bytes(), r"it is a zip archive, but not one torch.save wrote"),
    ],
)
def test_foreign_files_get_a_clear_checkpoint_error(tmp_path, content, message):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert text.startswith(str(path)) and "weights_only" not in text and "pytorch.org" not in text


def test_damaged_fields_are_named(ckpt_path, tmp_path):
    cases = {
        "format_version": ("two", "format_version must be an integer"),
        "attributes": ([{"name": 3}], "attributes is not a list of {name, values}"),
        "input_size": (-1, "input_size is not a positive integer"),
        "model_config": ([], "model_config is not a dict"),
    }
    for key, (value, message) in cases.items():
        path = _rewrite(ckpt_path, tmp_path / f"{key}.pt", lambda c: c.__setitem__(key, value))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)


def test_missing_checkpoint_and_cli_message_for_a_state_dict(tmp_path, capsys):
    with pytest.raises(NotFoundError):
        load_checkpoint(tmp_path / "none.pt")
    path = tmp_path / "resnet.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    assert main(["eval", "--checkpoint", str(path), "--data", str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "is not an agman checkpoint" in err and "weights_only" not in err and "Traceback" not in err


# --------------------------------------------------------------------------- devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_a_clean_error(ckpt_path, capsys):
    with pytest.raises(InvalidValueError, match="'cuda' was asked for, but CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(InvalidValueError, match="'cuda:1' was asked for"):
        load_model(ckpt_path, "cuda:1")
    assert main(["eval", "--checkpoint", str(ckpt_path), "--data", str(ckpt_path.parent), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "Traceback" not in err


def test_device_names_are_checked():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InvalidValueError, match="unknown device 'gpu'"):
        pick_device("gpu")
    with pytest.raises(InvalidValueError, match="unsupported device 'meta'"):
        pick_device("meta")
