"""What a search returns and how it explains itself: the ranked :class:`Hit` records, the
:class:`SearchResult` around them, the **predicted value** of each attribute (:class:`Prediction`, a
vote over the query's nearest labelled neighbours in that attribute) and the per-attribute
**match summary** (:class:`MatchSummary`, "7 of 10 match").

A result is a sequence of hits (``len``, iteration, indexing), a plain dict (``to_dict``: the CLI's
``--json`` and the service's answer), a table (``to_pandas``, pandas optional) and an HTML grid
(``_repr_html_``: Jupyter shows it inline, thumbnails embedded as data URIs).
"""
from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from PIL import Image

HTML_MAX_HITS = 50
"""At most this many hits are drawn by ``_repr_html_`` (the rest are counted)."""
HTML_THUMBNAIL = 112
"""Thumbnail size (pixels, long side) in ``_repr_html_``; JPEG-encoded, a few kB each."""
REPR_HITS = 5
"""Hits listed by ``repr(result)``."""


@dataclass
class Hit:
    """One ranked result: ``score`` is the weighted sum; ``scores`` the per-attribute similarities;
    ``labels`` the item's known values; ``correct`` whether it has the query's value of every
    queried attribute (None when a label is unknown on either side); ``matches`` per attribute
    whether its label equals the result's reference value (:attr:`SearchResult.reference`);
    ``metadata`` the item's catalog payload (column -> value)."""

    rank: int
    row: int
    id: str
    path: str
    score: float
    scores: dict[str, float]
    labels: dict[str, str]
    correct: bool | None
    matches: dict[str, bool] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "id": self.id,
            "path": self.path,
            "score": round(self.score, 6),
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "labels": self.labels,
            "metadata": self.metadata,
            "correct": self.correct,
            "matches": self.matches,
        }

    def __repr__(self) -> str:
        mark = {True: "match", False: "no match", None: "match unknown"}[self.correct]
        return f"Hit(#{self.rank} {self.id!r} score={self.score:.4f}, {mark})"


@dataclass(frozen=True)
class Prediction:
    """The value of ``attribute`` most of the query's ``voters`` nearest labelled neighbours in that
    attribute carry (``votes`` of them); ``counts``: every value's votes, most first.  Ties go to
    the value whose best-ranked neighbour ranks first."""

    attribute: str
    value: str
    votes: int
    voters: int
    counts: dict[str, int]

    @property
    def share(self) -> float:
        return self.votes / self.voters

    def to_dict(self) -> dict:
        return {"value": self.value, "share": round(self.share, 6), "votes": self.votes, "of": self.voters,
                "counts": dict(self.counts)}

    def __str__(self) -> str:
        return f"{self.attribute}={self.value} ({self.votes}/{self.voters})"


def vote(attribute: str, ranked_values: Sequence[str]) -> Prediction | None:
    """The :class:`Prediction` of neighbours' values in rank order (None when there are none)."""
    if not ranked_values:
        return None
    counts = Counter(ranked_values)
    first = {}
    for position, value in enumerate(ranked_values):
        first.setdefault(value, position)
    order = sorted(counts, key=lambda v: (-counts[v], first[v]))
    return Prediction(attribute, order[0], counts[order[0]], len(ranked_values), {v: counts[v] for v in order})


@dataclass(frozen=True)
class MatchSummary:
    """How many hits carry the reference ``value`` of ``attribute``: ``matches`` of the ``labelled``
    hits that have a label for it (``unknown`` hits have none).  ``source`` says where the value
    came from: ``"query"`` (the query item's own label) or ``"predicted"`` (:class:`Prediction`)."""

    attribute: str
    value: str
    source: str
    matches: int
    labelled: int
    unknown: int
    queried: bool

    def to_dict(self) -> dict:
        return {"value": self.value, "source": self.source, "matches": self.matches, "of": self.labelled,
                "unknown": self.unknown, "queried": self.queried}

    def __str__(self) -> str:
        unknown = f", {self.unknown} unlabelled" if self.unknown else ""
        return f"{self.attribute}: {self.matches} of {self.labelled} match {self.value} ({self.source}{unknown})"


def reference_values(query_labels: Mapping[str, str], predicted: Mapping[str, Prediction]) -> dict[str, tuple]:
    """``{attribute: (value, source)}``: the query's own label where known, else the predicted value."""
    out = {a: (v, "query") for a, v in query_labels.items()}
    for a, p in predicted.items():
        out.setdefault(a, (p.value, "predicted"))
    return out


def summarise(hits: Sequence[Hit], reference: Mapping[str, tuple], queried: Sequence[str]) -> dict[str, MatchSummary]:
    """Each hit's per-attribute ``matches`` (set in place) and the :class:`MatchSummary` of every
    attribute with a reference value, queried attributes first."""
    names = [a for a in queried if a in reference] + [a for a in reference if a not in queried]
    out = {}
    for a in names:
        value, source = reference[a]
        labelled = [h for h in hits if a in h.labels]
        for h in labelled:
            h.matches[a] = h.labels[a] == value
        out[a] = MatchSummary(a, value, source, sum(h.matches[a] for h in labelled), len(labelled),
                              len(hits) - len(labelled), a in queried)
    return out


@dataclass
class SearchResult:
    """The ranked hits of one query, how they were found, and what they say about the query.

    A sequence of :class:`Hit` (``len(result)``, ``for hit in result``, ``result[0]``).
    ``predicted``: per attribute, the value the query's nearest labelled neighbours vote for;
    ``summary``: per attribute with a reference value (the query's label, else the predicted value),
    how many hits match it; each hit's ``matches`` says which of its labels do.
    """

    hits: list[Hit]
    weights: dict[str, float]
    k: int
    exact: bool
    seconds: float
    query_id: str | None = None
    query_labels: dict[str, str] = field(default_factory=dict)
    candidates: int = 0
    filter: str | None = None
    predicted: dict[str, Prediction] = field(default_factory=dict)
    summary: dict[str, MatchSummary] = field(default_factory=dict)
    query_path: str | None = None
    query_image: Image.Image | None = field(default=None, repr=False, compare=False)
    """A small copy of an in-memory query image (for ``_repr_html_``); None for files and items."""

    def to_dict(self) -> dict:
        return {
            "query": {"id": self.query_id, "labels": self.query_labels},
            "attributes": self.weights,
            "filter": self.filter,
            "k": self.k,
            "exact": self.exact,
            "candidates": self.candidates,
            "seconds": round(self.seconds, 6),
            "predicted": {a: p.to_dict() for a, p in self.predicted.items()},
            "summary": {a: s.to_dict() for a, s in self.summary.items()},
            "results": [h.to_dict() for h in self.hits],
        }

    @property
    def ids(self) -> list[str]:
        return [h.id for h in self.hits]

    # ------------------------------------------------------------------ a sequence of hits
    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __getitem__(self, index):
        return self.hits[index]

    # ------------------------------------------------------------------ views
    def describe_query(self) -> str:
        """``query <id>: a:1, b:2; 10 of 400 items (exact)[ matching <filter>]``."""
        head = f"query {self.query_id or '(image)'}: " + ", ".join(f"{n}:{w:g}" for n, w in self.weights.items())
        head += f"; {len(self.hits)} of {self.candidates} items ({'exact' if self.exact else 'approximate'})"
        return head + (f" matching {self.filter}" if self.filter else "")

    def __repr__(self) -> str:
        lines = [f"SearchResult({self.describe_query()}, {self.seconds * 1000:.1f} ms)"]
        lines += [f"  {h!r}" for h in self.hits[:REPR_HITS]]
        if len(self.hits) > REPR_HITS:
            lines.append(f"  ... {len(self.hits) - REPR_HITS} more")
        if self.predicted:
            lines.append("  predicted: " + ", ".join(str(p) for p in self.predicted.values()))
        return "\n".join(lines)

    def to_pandas(self):
        """The hits as a ``pandas.DataFrame``: rank, id, score, ``score:<attribute>`` per queried
        attribute, one column per attribute with the item's value (missing: None), correct, path.
        Needs pandas (``pip install 'agman[pandas]'``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "SearchResult.to_pandas needs pandas, which is not installed: pip install 'agman[pandas]'"
            ) from None
        labelled = sorted({a for h in self.hits for a in h.labels}, key=self._attribute_order)
        rows = []
        for h in self.hits:
            row = {"rank": h.rank, "id": h.id, "score": h.score}
            row.update({f"score:{a}": h.scores.get(a) for a in self.weights})
            row.update({a: h.labels.get(a) for a in labelled})
            row.update({"correct": h.correct, "path": h.path})
            rows.append(row)
        columns = ["rank", "id", "score", *(f"score:{a}" for a in self.weights), *labelled, "correct", "path"]
        return pd.DataFrame(rows, columns=columns)

    def _attribute_order(self, name: str):
        known = list(self.weights) + [a for a in self.summary if a not in self.weights]
        return (known.index(name), name) if name in known else (len(known), name)

    def _repr_html_(self) -> str:
        """The result as an HTML grid (Jupyter): the query, then each hit's thumbnail framed green
        (it has the query's values) or red, its rank, score, id and labels (matching ones bold);
        predicted values and match summaries above.  At most :data:`HTML_MAX_HITS` tiles."""
        return result_html(self)


# --------------------------------------------------------------------------- HTML
_FRAMES = {True: "#22a03c", False: "#d62839", None: "#bbbbbb"}


def thumbnail_uri(image: Image.Image | str | None, size: int = HTML_THUMBNAIL) -> str | None:
    """A ``data:image/jpeg;base64,...`` URI of the image (or image file) shrunk to ``size`` px; None
    when it cannot be read (a catalog file moved away)."""
    if image is None:
        return None
    from agman.data.images import load_image
    from agman.errors import AgmanError

    try:
        picture = image.convert("RGB") if isinstance(image, Image.Image) else load_image(image)
        picture.thumbnail((size, size))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=80)
    except (AgmanError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _tile(uri: str | None, frame: str, lines: list[str]) -> str:
    picture = (f'<img src="{uri}" style="max-width:{HTML_THUMBNAIL}px;max-height:{HTML_THUMBNAIL}px">'
               if uri else '<div style="padding:40px 0;color:#888">(no image)</div>')
    text = "<br>".join(lines)
    return (f'<div style="display:inline-block;vertical-align:top;width:{HTML_THUMBNAIL + 16}px;margin:3px;'
            f'text-align:center;font:11px sans-serif">'
            f'<div style="border:4px solid {frame};padding:2px;min-height:{HTML_THUMBNAIL}px">{picture}</div>'
            f'{text}</div>')


def result_html(result: SearchResult) -> str:
    esc = html.escape
    parts = [f'<div class="agman-search-result"><div style="font:13px sans-serif;margin:4px 0">'
             f"<b>{esc(result.describe_query())}</b></div>"]
    if result.predicted:
        parts.append('<div style="font:12px sans-serif">predicted: '
                     + ", ".join(esc(str(p)) for p in result.predicted.values()) + "</div>")
    if result.summary:
        parts.append('<div style="font:12px sans-serif">'
                     + "; ".join(esc(str(s)) for s in result.summary.values()) + "</div>")
    query = result.query_image if result.query_image is not None else result.query_path
    tiles = [_tile(thumbnail_uri(query), "#2860c8", ["query"] + ([esc(result.query_id)] if result.query_id else []))]
    for h in result.hits[:HTML_MAX_HITS]:
        labels = [f"<b>{esc(a)}={esc(v)}</b>" if h.matches.get(a) else f"{esc(a)}={esc(v)}"
                  for a, v in h.labels.items()]
        tiles.append(_tile(thumbnail_uri(h.path), _FRAMES[h.correct],
                           [f"#{h.rank} {h.score:.3f}", f'<span style="word-break:break-all">{esc(h.id)}</span>',
                            *labels]))
    parts.append("<div>" + "".join(tiles) + "</div>")
    if len(result.hits) > HTML_MAX_HITS:
        parts.append(f'<div style="font:12px sans-serif">... {len(result.hits) - HTML_MAX_HITS} more hits '
                     f"(not drawn)</div>")
    return "".join(parts) + "</div>"
