"""A catalog that lives, through the CLI: typed metadata and ids from a CSV, filters, --delete,
--update, --on-error skip, a portable index folder (paths relative to the catalog root), on the
FAISS folder and on Milvus Lite."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import write_image
from test_retrieval_cli import run
from test_retrieval_index import tiny_checkpoint

from agman.data.spec import Attribute

ATTRS = [Attribute("collar", ("round", "square", "v")), Attribute("pattern", ("solid", "stripes"))]


def shop(root, n=24, extra=""):
    """A shop's catalog CSV: sku, title, price, in_stock beside the two attributes' labels."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,sku,title,price,in_stock,collar,pattern" + extra]
    for i in range(n):
        write_image(root / f"img/{i:03d}.png", seed=2000 + i)
        collar = ["round", "v", "square"][i % 3]
        pattern = "" if i % 5 == 0 else ["solid", "stripes"][i % 2]
        price = "" if i % 7 == 0 else f"{10 + 7 * i % 90}.5"
        lines.append(f'img/{i:03d}.png,SKU-{i},"Dress, no. {i}",{price},{"yes" if i % 2 else "no"},{collar},{pattern}'
                     + ("," if extra else ""))
    (root / "shop.csv").write_text("\n".join(lines) + "\n")
    return root / "shop.csv"


META = ["--metadata", "title,price:number", "--metadata", "in_stock:bool", "--id-column", "sku"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "c.pt", ATTRS)


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_metadata_ids_filters_delete_and_update(tmp_path, capsys, ckpt, backend):
    csv = shop(tmp_path / "shop")
    where = ["--out", tmp_path / "idx"] if backend == "faiss" else ["--backend", "milvus", "--uri", tmp_path / "c.db"]
    index = tmp_path / "idx" if backend == "faiss" else tmp_path / "c.db"
    rc, out, err = run(capsys, "index", "--checkpoint", ckpt, "--images", csv, *where, *META, "--id-prefix", "A/",
                       "--batch-size", "8", "--no-progress")
    assert rc == 0, err
    assert "24 items; added 24" in out

    rc, out, _ = run(capsys, "search", "--index", index, "--item", "A/SKU-3", "-a", "collar", "-a", "pattern:2",
                     "--k", "30", "--json", "--filter", 'in_stock and price < 80 and collar != "v"')
    result = json.loads(out)
    assert rc == 0 and result["filter"] == 'in_stock and price < 80 and collar != "v"'
    hits = result["results"]
    assert 0 < len(hits) == result["candidates"] < 24
    for h in hits:
        assert h["id"].startswith("A/SKU-") and h["metadata"]["in_stock"] is True and h["metadata"]["price"] < 80
        assert h["labels"]["collar"] != "v" and h["metadata"]["title"].startswith("Dress, no.")

    rc, _, err = run(capsys, "search", "--index", index, "--item", "A/SKU-3", "-a", "collar", "--filter", "price <")
    assert rc == 2 and "invalid filter at column 8" in err and "expected a value" in err
    rc, _, err = run(capsys, "search", "--index", index, "--item", "A/SKU-3", "-a", "collar", "--filter", "sku == 'x'")
    assert rc == 2 and "unknown field 'sku'" in err  # the id column is the id, not metadata

    rc, out, _ = run(capsys, "index", *where, "--delete", "A/SKU-1", "A/SKU-2")
    assert rc == 0 and "deleted 2 items; 22 remain" in out
    rc, _, err = run(capsys, "index", *where, "--delete", "A/SKU-4", "A/nope")
    assert rc == 2 and "no item 'A/nope'" in err and "nothing was deleted" in err
    rc, out, _ = run(capsys, "search", "--index", index, "--item", "A/SKU-3", "-a", "collar", "--k", "30", "--json")
    assert {h["id"] for h in json.loads(out)["results"]} & {"A/SKU-1", "A/SKU-2"} == set()

    # a changed catalog row: re-indexed with --update; an unknown id is an error
    text = csv.read_text().replace('img/005.png,SKU-5,"Dress, no. 5",45.5', 'img/005.png,SKU-5,"Sale",1.0')
    changed = tmp_path / "shop" / "changed.csv"
    changed.write_text("\n".join(text.splitlines()[:1] + [line for line in text.splitlines() if "SKU-5," in line]))
    rc, out, err = run(capsys, "index", "--checkpoint", ckpt, "--images", changed, *where, *META, "--id-prefix", "A/",
                       "--update", "--no-progress")
    assert rc == 0 and "updated 1" in out and "22 items" in out, err
    rc, out, _ = run(capsys, "search", "--index", index, "--item", "A/SKU-5", "-a", "collar", "--json",
                     "--filter", "price < 2")
    assert [h["metadata"]["title"] for h in json.loads(out)["results"]] == ["Sale"]
    rc, _, err = run(capsys, "index", "--checkpoint", ckpt, "--images", changed, *where, *META, "--id-prefix", "B/",
                     "--update", "--no-progress")
    assert rc == 2 and "no item 'B/SKU-5'" in err and "--add" in err


def test_catalog_columns_are_checked_against_the_checkpoint(tmp_path, capsys, ckpt):
    csv = shop(tmp_path / "shop", n=6)
    out = tmp_path / "idx"
    rc, _, err = run(capsys, "index", "--checkpoint", ckpt, "--images", csv, "--out", out, "--no-progress")
    assert rc == 2 and "column 'sku' is neither an attribute" in err and "--metadata" in err  # no silent labels
    rc, _, err = run(capsys, "index", "--checkpoint", ckpt, "--images", csv, "--out", out, *META,
                     "--metadata", "collar", "--no-progress")
    assert rc == 2 and "metadata column 'collar' has the name of one of the checkpoint's attributes" in err
    bad = tmp_path / "bad.csv"
    bad.write_text(csv.read_text().replace(",v,", ",vneck,", 1))
    rc, _, err = run(capsys, "index", "--checkpoint", ckpt, "--images", bad, "--out", out, *META, "--no-progress")
    assert rc == 1 and "line 3" in err and "column 'collar': 'vneck' is not a value" in err  # a data error
    assert not out.exists()


def test_unreadable_images_are_skipped_and_listed_with_on_error_skip(tmp_path, capsys, ckpt):
    csv = shop(tmp_path / "shop", n=10)
    (tmp_path / "shop" / "img" / "004.png").write_bytes(b"not an image")
    out = tmp_path / "idx"
    rc, _, err = run(capsys, "index", "--checkpoint", ckpt, "--images", csv, "--out", out, *META, "--no-progress")
    assert rc != 0 and "004.png" in err  # stop is the default: the error names the file
    rc, text, err = run(capsys, "index", "--checkpoint", ckpt, "--images", csv, "--out", out, *META,
                        "--on-error", "skip", "--no-progress")
    assert rc == 0 and "9 items" in text and "1 unreadable images skipped" in text, err
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["id"] for s in skipped] == ["SKU-4"] and "004.png" in skipped[0]["path"] and skipped[0]["reason"]
    rc, text, _ = run(capsys, "search", "--index", out, "--item", "SKU-3", "-a", "collar", "--k", "20", "--json")
    assert "SKU-4" not in {h["id"] for h in json.loads(text)["results"]}
    write_image(tmp_path / "shop" / "img" / "004.png", seed=7)  # repaired: --add picks it up
    rc, text, _ = run(capsys, "index", "--checkpoint", ckpt, "--images", csv, "--out", out, *META, "--add",
                      "--no-progress")
    assert rc == 0 and "10 items; added 1" in text


def test_an_index_folder_moves_with_its_catalog_or_takes_another_root(tmp_path, capsys, ckpt):
    csv = shop(tmp_path / "shop", n=8)
    rc, _, _ = run(capsys, "index", "--checkpoint", ckpt, "--images", csv, "--out", tmp_path / "idx", *META,
                   "--no-progress")
    assert rc == 0
    moved = tmp_path / "server"
    shutil.copytree(tmp_path / "idx", moved / "idx")
    shutil.copytree(tmp_path / "shop", moved / "images")
    shutil.rmtree(tmp_path / "shop")  # the catalog is gone from where it was indexed
    search = ["search", "--index", moved / "idx", "--item", "SKU-1", "-a", "collar", "--k", "3"]
    rc, _, err = run(capsys, *search, "--grid", tmp_path / "g.png")
    assert rc != 0 and "001.png" in err  # the images are not at the recorded root (the query item's is named)
    rc, out, err = run(capsys, *search, "--root", moved / "images", "--grid", tmp_path / "g.png", "--json")
    assert rc == 0, err
    assert all(h["path"].startswith(str(moved / "images")) for h in json.loads(out)["results"])
    rc, _, err = run(capsys, *search, "--root", tmp_path / "nowhere")
    assert rc != 0 and "is not a folder" in err
