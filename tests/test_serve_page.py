"""The page of the store (``serve.page``): what it shows, what sharing saves, what it
escapes, and what a real browser (Debian's headless Chromium) makes of it when
``ocistore serve`` answers ``GET /``: the DOM after its script ran, a search given in the
address, and a screenshot that is a picture."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html.parser
import http.client
import io
import json
import os
import signal
import struct
import subprocess
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import require_tool
from serve_peer import started_serve
from util import make_tar

from ocistore.cli import views
from ocistore.serve import page
from ocistore.spec.digest import ImageID, digest_bytes
from ocistore.store import Store

BASE = make_tar({"base": b"x" * 5000})
MID = make_tar({"mid": b"m" * 700})
TOP = make_tar({"top": b"t" * 30})

#: Seconds Chromium is given to load and dump a page: a bound on a failure only.
BROWSER_TIMEOUT = 120.0


def add_image(store: Store, tars: list[bytes], **config: Any) -> ImageID:
    """An image of ``tars`` (its layers registered on top of each other) whose config has
    ``config``'s fields."""
    parent = None
    for tar in tars:
        parent = store.register_layer(io.BytesIO(tar), parent).chain_id
    doc: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "rootfs": {"type": "layers", "diff_ids": [digest_bytes(t) for t in tars]},
    }
    doc.update(config)
    return store.images.create(json.dumps(doc).encode())


class Shared(NamedTuple):
    store: Store
    #: ``[BASE, MID]`` (``app:1``, ``quay.io/team/app:2``), ``[BASE, MID, TOP]``
    #: (``other:latest``), ``[BASE]`` (``base:1``).
    app: ImageID
    other: ImageID
    base: ImageID


def shared_store(root: Path) -> Shared:
    """Three images: the layer BASE is used by all three, the chain BASE+MID by two."""
    store = Store(root)
    app = add_image(store, [BASE, MID], created="2024-01-03T00:00:00Z")
    other = add_image(store, [BASE, MID, TOP], created="2024-01-02T00:00:00Z")
    base = add_image(store, [BASE], created="2024-01-01T00:00:00Z", architecture="arm64")
    store.tag(app, "app:1")
    store.tag(app, "quay.io/team/app:2")
    store.tag(other, "other:latest")
    store.tag(base, "base:1")
    return Shared(store, app, other, base)


class Element(NamedTuple):
    tag: str
    attrs: dict[str, str]
    #: The text inside it (its children's included).
    text: str


class _Collector(html.parser.HTMLParser):
    """Every element of a document, with its attributes and text (void elements and
    unclosed ones end with their parent)."""

    VOID = frozenset({"meta", "link", "input", "br", "img", "hr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.done: list[Element] = []
        self._open: list[tuple[str, dict[str, str], list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag in self.VOID:
            self.done.append(Element(tag, values, ""))
        else:
            self._open.append((tag, values, []))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            name, attrs, text = self._open.pop()
            joined = "".join(text)
            self.done.append(Element(name, attrs, joined))
            if self._open:
                self._open[-1][2].append(joined)
            if name == tag:
                return

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][2].append(data)


class Dom:
    """A parsed document, queried by tag and class."""

    def __init__(self, text: str) -> None:
        collector = _Collector()
        collector.feed(text)
        collector.close()
        self.elements = collector.done

    def all(self, tag: str, cls: str | None = None) -> list[Element]:
        return [
            e
            for e in self.elements
            if e.tag == tag and (cls is None or cls in e.attrs.get("class", "").split())
        ]

    def by_id(self, id_: str) -> Element:
        (found,) = [e for e in self.elements if e.attrs.get("id") == id_]
        return found

    def shown(self, tag: str, cls: str) -> list[Element]:
        return [e for e in self.all(tag, cls) if "hidden" not in e.attrs]


# -- the page, rendered in this process --------------------------------------------------


def test_the_page_shows_the_images_their_tags_and_what_sharing_saves(tmp_path: Path) -> None:
    world = shared_store(tmp_path / "store")
    dom = Dom(page.render(world.store).decode())
    rows = {e.attrs["data-id"]: e for e in dom.all("tr", "image")}
    assert list(rows) == [world.app, world.other, world.base]  # newest first
    sizes = {rec.id: rec.size for rec, _ in world.store.list_image_names()}
    for image_id in (world.app, world.other, world.base):
        row = rows[image_id]
        assert row.attrs["id"] == f"image-{image_id.hex}"
        assert image_id.hex[:12] in row.text and image_id.hex not in row.text
        assert int(row.attrs["data-size"]) == sizes[image_id]  # as ocistore images says
        assert views.human_size(sizes[image_id]) in row.text
    assert "app:1" in rows[world.app].text and "quay.io/team/app:2" in rows[world.app].text
    assert "linux/arm64" in rows[world.base].text
    assert "2024-01-02T00:00:00Z" in rows[world.other].text
    assert [rows[i].attrs["data-layers"] for i in rows] == ["2", "3", "1"]

    repos = {e.attrs["data-repo"]: e for e in dom.all("tr", "repo")}
    assert list(repos) == ["app", "base", "other", "quay.io/team/app"]
    tags = {(e.attrs["data-tag"], e.attrs["data-image-id"]) for e in dom.all("a", "tag")}
    assert tags == {("1", world.app), ("2", world.app), ("latest", world.other), ("1", world.base)}

    # Each image's layers, bottom first, the shared ones marked.
    base_id, mid_id, top_id = digest_bytes(BASE), digest_bytes(MID), digest_bytes(TOP)
    layers = dom.all("li", "layer")
    assert [e.attrs["data-diff-id"] for e in layers] == [
        *(base_id, mid_id),
        *(base_id, mid_id, top_id),
        base_id,
    ]
    assert ["shared" in e.attrs["class"].split() for e in layers] == [
        *(True, True),
        *(True, True, False),
        True,
    ]
    assert base_id[7:19] in layers[0].text and "5kB" in layers[0].text

    # BASE is used by three images, BASE+MID by two: saved 5000 × 2 + 700 × 1.
    shared = {e.attrs["data-diff-id"]: e for e in dom.all("tr", "shared-layer")}
    assert list(shared) == [base_id, mid_id]  # most saved first
    assert shared[base_id].attrs["data-users"] == "3"
    assert shared[base_id].attrs["data-saved"] == "10000"
    assert shared[mid_id].attrs["data-users"] == "2"
    assert shared[mid_id].attrs["data-saved"] == "700"
    for image_id in (world.app, world.other, world.base):
        assert image_id.hex[:12] in shared[base_id].text
    savings = dom.by_id("shared-savings")
    assert savings.attrs["data-bytes"] == "10700"
    assert "10.7kB" in savings.text
    summary = dom.by_id("summary")
    assert summary.attrs["data-images"] == "3"
    assert summary.attrs["data-repositories"] == "4"
    assert summary.attrs["data-layers"] == "3"
    assert summary.attrs["data-size"] == "5730"


def test_a_shared_layer_names_a_few_of_its_images_and_counts_the_others(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    many = page.SHARED_NAMED + 3
    for i in range(many):
        add_image(store, [BASE], created=f"2024-01-01T00:00:{i:02d}Z")
    (row,) = Dom(page.render(store).decode()).all("tr", "shared-layer")
    assert row.attrs["data-users"] == str(many)
    assert row.attrs["data-saved"] == str(5000 * (many - 1))
    assert row.text.endswith(" and 3 more")


def test_an_empty_store(tmp_path: Path) -> None:
    dom = Dom(page.render(Store(tmp_path / "store")).decode())
    assert dom.all("tr", "image") == dom.all("tr", "repo") == dom.all("tr", "shared-layer") == []
    assert dom.by_id("shared-savings").attrs["data-bytes"] == "0"
    assert dom.by_id("summary").attrs["data-images"] == "0"


def test_text_from_the_store_is_escaped(tmp_path: Path) -> None:
    """A reference cannot hold ``<`` or a control character (the grammar refuses them),
    but a config's ``os``, ``architecture`` and ``created`` can hold anything: they come
    out as text, their controls as visible escapes, and the only script is the page's."""
    store = Store(tmp_path / "store")
    image_id = add_image(
        store,
        [BASE],
        os="<script>alert(1)</script>",
        architecture='a"\x1b[31m\u202e\udcff',
        created="\x00<img src=x onerror=alert(2)>",
    )
    store.tag(image_id, "odd:1")
    raw = page.render(store)
    text = raw.decode("utf-8")  # (a lone surrogate would not even encode)
    assert text.count("<script") == 1
    assert "<img" not in text and "alert(1)</script>" not in text
    for c in "\x00\x1b\u202e":
        assert c not in text
    dom = Dom(text)
    (row,) = dom.all("tr", "image")
    (platform,) = dom.all("td", "platform")
    assert platform.text == '<script>alert(1)</script>/a"\\x1b[31m\\u202e\\xff'
    assert "\\x00<img src=x onerror=alert(2)>" in row.text
    assert 'a"\\x1b' in row.attrs["data-search"]  # the quote did not end the attribute


def test_the_page_is_of_one_piece(tmp_path: Path) -> None:
    """Nothing is fetched: no external style, script, image or font; the policy the page
    may be served with allows exactly its own inline style and script."""
    text = page.render(shared_store(tmp_path / "store").store).decode()
    assert text.startswith("<!DOCTYPE html>")
    for needle in ("src=", "http://", "https://", "@import", "url("):
        assert needle not in text
    dom = Dom(text)
    assert [e.attrs["href"] for e in dom.all("link")] == ["data:,"]
    (script,) = dom.all("script")
    (style,) = dom.all("style")
    for inline in (script.text, style.text):
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in page.CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("n", [0, 1, 999, 1000, 999_499, 999_500, 1234567, 5.6e9, 10**18])
def test_sizes_are_in_the_units_of_ocistore_images(n: float) -> None:
    assert page.human_size(n) == views.human_size(n)


# -- a real browser, through ocistore serve ---------------------------------------------


class Browser(NamedTuple):
    path: str
    profile: Path

    def run(self, *args: str, url: str) -> str:
        """Chromium's headless run of ``url`` with ``args``; its standard output. Killed
        with all its processes past :data:`BROWSER_TIMEOUT` (a failure)."""
        argv = [
            self.path,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={self.profile}",
            *args,
            url,
        ]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its renderers and zygote go with it
        )
        try:
            out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"chromium did not finish in {BROWSER_TIMEOUT:.0f} s: {err[-2000:]!r}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # what is left of its group
        if proc.returncode != 0:
            pytest.fail(f"chromium exited {proc.returncode}: {err[-2000:]!r}")
        return out.decode("utf-8")

    def dom(self, url: str) -> Dom:
        """The document after the page's script ran (it marks ``<body data-ready>``)."""
        dom = Dom(self.run("--dump-dom", url=url))
        (body,) = dom.all("body")
        assert "data-ready" in body.attrs, "the page's script did not run"
        return dom


@pytest.fixture
def browser(tmp_path: Path) -> Browser:
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    return Browser(require_tool("chromium"), profile)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Shared, str]]:
    """The three images' store, and the address ``ocistore serve`` serves it on."""
    world = shared_store(tmp_path / "store")
    world.store.close()
    with started_serve(world.store.root) as server:
        yield world, server.url


def test_serve_answers_with_the_page(served: tuple[Shared, str]) -> None:
    world, url = served
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", "/")
        reply = conn.getresponse()
        body = reply.read()
    finally:
        conn.close()
    assert reply.status == 200
    assert reply.getheader("Content-Type") == page.CONTENT_TYPE
    with Store(world.store.root) as store:
        assert body == page.render(store)


def test_the_browser_shows_the_images_and_shared_layers(
    served: tuple[Shared, str], browser: Browser
) -> None:
    world, url = served
    dom = browser.dom(url + "/")
    assert [e.attrs["data-id"] for e in dom.shown("tr", "image")] == [
        world.app,
        world.other,
        world.base,
    ]
    assert len(dom.shown("tr", "repo")) == 4
    shared = dom.all("tr", "shared-layer")
    assert [e.attrs["data-diff-id"] for e in shared] == [digest_bytes(BASE), digest_bytes(MID)]
    assert dom.by_id("shared-savings").attrs["data-bytes"] == "10700"
    assert dom.by_id("match-count").attrs["data-matches"] == "3"


@pytest.mark.parametrize("address", ["/?q=other", "/#q=OTHER", "/?q=app#q=latest"])
def test_a_search_in_the_address_is_applied_on_load(
    served: tuple[Shared, str], browser: Browser, address: str
) -> None:
    """``?q=`` or ``#q=`` (which wins: it is what typing in the box writes): the rows
    that do not match are hidden, case aside."""
    world, url = served
    dom = browser.dom(url + address)
    assert [e.attrs["data-id"] for e in dom.shown("tr", "image")] == [world.other]
    assert [e.attrs["data-repo"] for e in dom.shown("tr", "repo")] == ["other"]
    assert len(dom.all("tr", "image")) == 3  # hidden, not gone
    assert dom.by_id("match-count").attrs["data-matches"] == "1"
    (box,) = dom.all("input")
    assert box.attrs["id"] == "search"


def test_a_search_of_several_words_needs_them_all(
    served: tuple[Shared, str], browser: Browser
) -> None:
    world, url = served
    dom = browser.dom(url + "/?q=" + urllib.parse.quote(f"arm64 {world.base.hex[:6]}"))
    assert [e.attrs["data-id"] for e in dom.shown("tr", "image")] == [world.base]
    dom = browser.dom(url + "/?q=" + urllib.parse.quote("arm64 app"))
    assert dom.shown("tr", "image") == []
    assert dom.by_id("match-count").attrs["data-matches"] == "0"


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """A PNG's width, height and decompressed (still filtered) scanlines."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_a_screenshot_of_the_page_is_a_picture(
    served: tuple[Shared, str], browser: Browser, tmp_path: Path
) -> None:
    """A picture of the page, not of one colour: a uniform image's filtered scanlines
    hold a handful of distinct bytes whatever the filters; antialiased text holds
    nearly every value."""
    _, url = served
    shot = tmp_path / "page.png"
    browser.run(f"--screenshot={shot}", "--window-size=1280,900", url=url + "/")
    data = shot.read_bytes()
    assert len(data) > 4096
    width, height, scanlines = _png_pixels(data)
    assert (width, height) == (1280, 900)
    assert len(set(scanlines)) > 64
