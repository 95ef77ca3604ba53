"""`agman index --extend` on a Milvus collection (:mod:`agman.retrieval.extend`)."""
from __future__ import annotations

from agman.retrieval.backends.milvus.client import INFO_KEY
from agman.retrieval.backends.milvus.store import EXTENDED_PK_SHIFT, MilvusStore, _partition
from agman.retrieval.extend import ExtendSummary, compare_sample, describe_extended, plan_extension


def extend_collection(target, checkpoint, *, batch_size, workers, device, progress, tolerance) -> ExtendSummary:
    """`agman index --extend` on a Milvus collection: the new attributes' entities go to partitions of their
    own, keyed above the old keys; the collection's description (its properties) is the commit point.
    A rerun after an interruption continues after the whole batches the new partition already holds."""
    from agman.engine.embed import iter_embeddings

    store = MilvusStore.open(target)
    try:
        info = store.info
        plan = plan_extension(info, target.where, checkpoint, device)
        if plan is None:
            return ExtendSummary(target.where, [], 0, 0, 0)
        model, cinfo, child_ids, new, column = plan
        rows = store.rows()
        items = store.items_of(rows.tolist())
        paths = [it.path for it in items]
        n = min(batch_size, len(rows))
        stored = [store.vectors(a, rows[:n]) for a in range(len(info.attributes))]
        sample = compare_sample(model, cinfo, target.where, info, paths[:n], stored, column, device, tolerance)
        old_count = len(info.attributes)
        info.pk_attributes = info.pk_attributes or old_count
        store.info = info
        first_new = old_count
        conn = store.conn
        for j in range(len(new)):
            if not conn.call("check a partition", "has_partition", conn.name, _partition(first_new + j)):
                conn.call("create a partition", "create_partition", conn.name, _partition(first_new + j))
        done = min(_band_count(conn, first_new + j - info.pk_attributes + 1) for j in range(len(new)))
        start = done // batch_size * batch_size
        for first, block in iter_embeddings(model, paths, None, input_size=cinfo.input_size,
                                            crop_ratio=cinfo.crop_ratio, batch_size=batch_size, device=device,
                                            workers=workers, start=start, progress=progress, failures={}):
            for j, a in enumerate(new):
                entities = [store._entity(first_new + j, int(rows[first + i]), items[first + i], block[i, column[a.name]])
                            for i in range(len(block))]
                conn.call("write items", "upsert", conn.name, entities, partition_name=_partition(first_new + j))
            conn.call("flush", "flush", conn.name)
        conn.call("load the collection", "load_collection", conn.name)  # the new partitions too
        describe_extended(info, cinfo, new, child_ids)
        conn.set_properties(**{INFO_KEY: info.to_json()})
        return ExtendSummary(target.where, [a.name for a in new], len(rows) - start, start, sample)
    finally:
        store.close()


def _band_count(conn, band: int) -> int:
    """Entities already written for the ``band``-th added attribute (keys ``band << 48 ..``)."""
    expression = f"pk >= {band << EXTENDED_PK_SHIFT} and pk < {(band + 1) << EXTENDED_PK_SHIFT}"
    return int(conn.call("count items", "query", conn.name, filter=expression, output_fields=["count(*)"])[0]["count(*)"])
