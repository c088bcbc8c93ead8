"""The page of the store ``serve`` answers ``GET /`` with: its repositories and their
tags, its images (ID, size, created, platform, layers), the layers images share and the
space that sharing saves, and a search box that filters the images and repositories.

One HTML document with its style and script inline: nothing else is fetched (the page
works offline, and :data:`CONTENT_SECURITY_POLICY` may forbid every other source). It is
made from the image index and the layer records, never the image configs, in one pass
over the records, each layer rendered once however many images share it: a store of
10,000 images is one read of its index. The sizes are those ``ocistore images`` shows
(Docker's: an image's is the sum of its layers'), in its units. Every text that comes
from the store is escaped, its control characters made visible first: a config's ``os``
or ``created`` may hold anything.

Elements a program (or a test) looks for: ``#search``, ``#match-count``, ``#summary``,
``tr.repo[data-repo]``, ``a.tag[data-image-id]``, ``tr.image[data-id]`` (``id`` is
``image-<hex>``), ``li.layer[data-diff-id][data-size]`` (``.shared`` when another image
uses it too), ``tr.shared-layer[data-diff-id][data-users][data-saved]`` and
``#shared-savings[data-bytes]``. The script reads the query from ``?q=`` or ``#q=``, hides
what does not match with the ``hidden`` attribute, and marks ``<body data-ready>``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import re
from collections.abc import Sequence
from typing import Final

from ..errors import CorruptStore, NotFound
from ..spec.digest import ChainID
from ..spec.reference import split_familiar
from ..store.images import ImageRecord
from ..store.layers import Layer
from ..store.store import Store

__all__ = ["CONTENT_SECURITY_POLICY", "CONTENT_TYPE", "render"]

CONTENT_TYPE: Final = "text/html; charset=utf-8"

#: Images a shared layer's row names before it says how many more there are (a base
#: layer may be shared by every image of the store).
SHARED_NAMED: Final = 8

_STYLE: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em;margin:0 0 .4em}h2{font-size:1.15em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:.25em .6em;border-bottom:1px solid #ddd}
th{background:#f3f3f3}td.num,th.num{text-align:right;white-space:nowrap}
code{font:12px ui-monospace,monospace}ol.layers{margin:.2em 0;padding-left:1.6em}
li.shared code{background:#e6f0ff}td.repo-name{width:30%}.tag{margin-right:.5em}.none{color:#888}
#search{font-size:1em;padding:.3em .5em;width:24em}[hidden]{display:none!important}
"""

_SCRIPT: Final = """
(function () {
  var box = document.getElementById("search");
  var count = document.getElementById("match-count");
  var rows = document.querySelectorAll("[data-search]");
  function apply(query) {
    var terms = query.toLowerCase().split(/\\s+/).filter(Boolean);
    var images = 0;
    for (var i = 0; i < rows.length; i++) {
      var text = rows[i].getAttribute("data-search");
      var hit = terms.every(function (t) { return text.indexOf(t) >= 0; });
      rows[i].hidden = !hit;
      if (hit && rows[i].classList.contains("image")) images++;
    }
    count.setAttribute("data-matches", images);
    count.textContent = terms.length ? images + " matching" : "";
  }
  function initial() {
    var m = /^#q=(.*)$/.exec(location.hash);
    try {
      if (m) return decodeURIComponent(m[1].replace(/\\+/g, " "));
    } catch (e) {}
    return new URLSearchParams(location.search).get("q") || "";
  }
  box.value = initial();
  apply(box.value);
  box.addEventListener("input", function () {
    apply(box.value);
    try {
      history.replaceState(null, "", box.value ? "#q=" + encodeURIComponent(box.value) : "#");
    } catch (e) {}
  });
  document.body.setAttribute("data-ready", "");
})();
"""


def _source_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: A policy the page keeps to (for the ``Content-Security-Policy`` header): its own
#: inline style and script, by hash, and nothing else.
CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; style-src {_source_hash(_STYLE)}; "
    f"script-src {_source_hash(_SCRIPT)}; img-src data:; base-uri 'none'; form-action 'none'"
)

#: What a browser would act on rather than show (as ``cli.views.printable`` escapes for
#: a terminal): C0 and C1 controls, DEL, line and paragraph separators, bidirectional
#: overrides and isolates, and lone surrogates (which UTF-8 cannot even encode).
_UNSHOWN: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _text(value: str) -> str:
    """``value`` safe in an element or a quoted attribute: controls written as escapes
    (``\\x1b``), then HTML-escaped."""
    if not (value.isascii() and value.isprintable()):
        value = _UNSHOWN.sub(_visible, value)
    return html.escape(value)


def human_size(n: float) -> str:
    """A size as ``docker images`` prints it: decimal units, three significant digits
    (``cli.views.human_size``: the command line is above ``serve``, not below it)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000.0
        i += 1
    return f"{n:.3g}{units[i]}"


class _Layers:
    """The layers of the listed images: each layer's record, how many images use it,
    and its ``<li>``, made once."""

    def __init__(self, store: Store, images: Sequence[tuple[ImageRecord, list[str]]]) -> None:
        self.users: dict[ChainID, int] = {}
        for rec, _ in images:
            for chain in rec.chains:
                self.users[chain] = self.users.get(chain, 0) + 1
        self.records: dict[ChainID, Layer | None] = {}
        for chain in self.users:
            layer: Layer | None = None
            with contextlib.suppress(NotFound, CorruptStore):  # gone since: shown as missing
                layer = store.layers.get(chain)
            self.records[chain] = layer
        self._items: dict[ChainID, str] = {}

    def size(self, chain: ChainID) -> int:
        layer = self.records[chain]
        return layer.shown_size if layer is not None else 0

    def item(self, chain: ChainID) -> str:
        shown = self._items.get(chain)
        if shown is None:
            shown = self._items[chain] = self._make_item(chain)
        return shown

    def _make_item(self, chain: ChainID) -> str:
        layer = self.records[chain]
        shared = " shared" if self.users[chain] > 1 else ""
        if layer is None:
            return (
                f'<li class="layer missing" data-chain-id="{_text(chain)}">'
                f"<code>{_text(chain[7:19])}</code> missing</li>"
            )
        return (
            f'<li class="layer{shared}" data-diff-id="{layer.diff_id}" '
            f'data-size="{layer.shown_size}">'
            f"<code>{layer.diff_id.short()}</code> {human_size(layer.shown_size)}</li>"
        )


def _repositories(images: Sequence[tuple[ImageRecord, list[str]]]) -> tuple[str, int]:
    """The repositories' rows, and how many: each repository's tags (and digest
    references), each linking to its image's row."""
    repos: dict[str, list[tuple[str, str]]] = {}
    for rec, names in images:
        for name in names:
            repo, tag, digest = split_familiar(name)
            label = tag if tag is not None else f"@{(digest or '')[7:19]}"
            repos.setdefault(repo, []).append((label, rec.id))
    rows = []
    for repo, refs in sorted(repos.items()):
        refs.sort()
        links = " ".join(
            f'<a class="tag" href="#image-{image_id[7:]}" data-image-id="{image_id}" '
            f'data-tag="{_text(label)}">{_text(label)}</a>'
            for label, image_id in refs
        )
        search = " ".join([repo, *(label for label, _ in refs)]).lower()
        rows.append(
            f'<tr class="repo" data-repo="{_text(repo)}" data-search="{_text(search)}">'
            f'<td class="repo-name">{_text(repo)}</td><td>{links}</td></tr>'
        )
    return "\n".join(rows), len(rows)


def _image_row(rec: ImageRecord, names: list[str], layers: _Layers) -> str:
    chains = rec.chains
    shown_names = (
        "".join(f'<span class="tag">{_text(n)}</span>' for n in names)
        or '<span class="none">&lt;none&gt;</span>'
    )
    platform = f"{rec.os}/{rec.architecture}" if rec.os or rec.architecture else ""
    search = " ".join([rec.id, *names, platform]).lower()
    items = "".join(layers.item(c) for c in chains)
    return (
        f'<tr class="image" id="image-{rec.id.hex}" data-id="{rec.id}" '
        f'data-size="{rec.size}" data-layers="{len(chains)}" data-search="{_text(search)}">'
        f"<td><code>{rec.id.short()}</code></td><td>{shown_names}</td>"
        f'<td><time datetime="{_text(rec.created)}">{_text(rec.created)}</time></td>'
        f'<td class="platform">{_text(platform)}</td>'
        f'<td class="num">{human_size(rec.size)}</td>'
        f"<td><details><summary>{len(chains)} layer{'' if len(chains) == 1 else 's'}"
        f'</summary><ol class="layers">{items}</ol></details></td></tr>'
    )


def _shared(
    images: Sequence[tuple[ImageRecord, list[str]]], layers: _Layers
) -> tuple[list[str], int]:
    """The shared layers' rows, most saved first, and the bytes sharing saves: over the
    layers more than one image uses, size × (users − 1)."""
    shared = {c: n for c, n in layers.users.items() if n > 1}
    users: dict[ChainID, list[str]] = {c: [] for c in shared}
    for rec, _ in images:
        for chain in rec.chains:
            named = users.get(chain)
            if named is not None and len(named) < SHARED_NAMED:
                named.append(rec.id)
    order = sorted(shared, key=lambda c: (-layers.size(c) * (shared[c] - 1), c))
    rows = []
    saved_total = 0
    for chain in order:
        layer = layers.records[chain]
        n = shared[chain]
        size = layers.size(chain)
        saved = size * (n - 1)
        saved_total += saved
        diff_id = layer.diff_id if layer is not None else ""
        shown_id = layer.diff_id.short() if layer is not None else "missing"
        links = " ".join(
            f'<a href="#image-{i[7:]}"><code>{i[7:19]}</code></a>'
            for i in users[chain][:SHARED_NAMED]
        )
        more = n - min(n, SHARED_NAMED)
        if more:
            links += f" and {more} more"
        rows.append(
            f'<tr class="shared-layer" data-diff-id="{diff_id}" data-chain-id="{_text(chain)}" '
            f'data-size="{size}" data-users="{n}" data-saved="{saved}">'
            f'<td><code>{shown_id}</code></td><td class="num">{human_size(size)}</td>'
            f'<td class="num">{n}</td><td class="num">{human_size(saved)}</td>'
            f"<td>{links}</td></tr>"
        )
    return rows, saved_total


def render(store: Store) -> bytes:
    """The page of ``store`` (a complete HTML5 document, UTF-8): the images
    ``ocistore images`` lists, newest first, their repositories, layers and shared
    layers, from one read of the index and references (under the store's shared lock)
    and the records of the layers they use (a layer removed since shows as missing)."""
    images = store.list_image_names()
    layers = _Layers(store, images)
    shared_rows, saved = _shared(images, layers)
    total = sum(layers.size(c) for c in layers.users)
    repos, n_repos = _repositories(images)
    shared_html = "\n".join(shared_rows)
    image_rows = "\n".join(_image_row(rec, names, layers) for rec, names in images)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ocistore</title>
<link rel="icon" href="data:,">
<style>{_STYLE}</style>
</head>
<body>
<h1>ocistore</h1>
<p id="summary" data-images="{len(images)}" data-repositories="{n_repos}" \
data-layers="{len(layers.users)}" data-size="{total}">{len(images)} image\
{"" if len(images) == 1 else "s"} in {n_repos} repositor{"y" if n_repos == 1 else "ies"}, \
{len(layers.users)} layers, {human_size(total)}.</p>
<p><input id="search" type="search" placeholder="Search images, tags, repositories" \
autocomplete="off" aria-label="Search"> <span id="match-count"></span></p>
<h2>Repositories</h2>
<table id="repositories"><thead><tr><th>Repository</th><th>Tags</th></tr></thead>
<tbody>
{repos}
</tbody></table>
<h2>Images</h2>
<table id="images"><thead><tr><th>ID</th><th>Names</th><th>Created</th><th>Platform</th>\
<th class="num">Size</th><th>Layers</th></tr></thead>
<tbody>
{image_rows}
</tbody></table>
<h2>Shared layers</h2>
<p id="shared-savings" data-bytes="{saved}">{len(shared_rows)} layer\
{"" if len(shared_rows) == 1 else "s"} shared between images: sharing saves \
{human_size(saved)}.</p>
<table id="shared-layers"><thead><tr><th>DiffID</th><th class="num">Size</th>\
<th class="num">Images</th><th class="num">Saved</th><th>Used by</th></tr></thead>
<tbody>
{shared_html}
</tbody></table>
<script>{_SCRIPT}</script>
</body>
</html>
"""
    return page.encode()
