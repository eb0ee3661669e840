"""Page understanding: a small DOM from ``html.parser`` (no script runs), the form of a
question page with its fields and image questions (the rules are in the docstring of
``include.crowd_sandbox.workers``), and the links and forms of the worker site's own pages."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

# --- a small DOM ----------------------------------------------------------------------------

_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())


@dataclass(eq=False)
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    order: int = 0

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)

    def iter(self, *tags: str) -> Iterable[Node]:
        """This node's descendants in document order (``template`` contents excluded)."""
        for child in self.children:
            if child.tag == "template":
                continue
            if not tags or child.tag in tags:
                yield child
            yield from child.iter(*tags)

    def ancestors(self) -> Iterable[Node]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def contains(self, other: Node) -> bool:
        return any(a is self for a in other.ancestors())

    def all_text(self) -> str:
        return "".join(self.text) + "".join(child.all_text() for child in self.children)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]
        self.count = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("option", "optgroup"):  # an open <option> ends where the next one starts
            for index in range(len(self.stack) - 1, 0, -1):
                if self.stack[index].tag in ("select", "datalist"):
                    break
                if self.stack[index].tag == "option":
                    del self.stack[index:]
                    break
        self.count += 1
        parent = self.stack[-1]
        node = Node(tag, {k.lower(): v or "" for k, v in attrs}, parent, order=self.count)
        parent.children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].text.append(data)


def parse_html(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# --- understanding a form -------------------------------------------------------------------


@dataclass
class Option:
    value: str
    image: str | None  # absolute URL (or data: URL) of the option's picture


@dataclass
class Question:
    """A radio group: one value must be chosen."""

    name: str
    options: list[Option]
    target: str | None = None  # absolute URL of the target picture, if any

    @property
    def has_images(self) -> bool:
        return self.target is not None and any(o.image for o in self.options)


@dataclass
class Control:
    kind: str  # hidden, text, textarea, select, checkbox, submit, ...
    name: str
    value: str
    attrs: dict[str, str]
    options: list[tuple[str, bool]] = field(default_factory=list)  # select: (value, disabled)


@dataclass
class Form:
    action: str | None  # absolute URL, or None when the page gives none
    controls: list[Control]  # every control but radios, in document order
    questions: list[Question]  # radio groups, in document order


def understand(html: str, url: str) -> Form:
    """Find the form of a question page, its fields and its image questions."""
    root = parse_html(html)
    base = url
    for node in root.iter("base"):
        if node.get("href"):
            base = urljoin(url, node.get("href"))
            break

    forms = [f for f in root.iter("form") if any(True for _ in _controls_of(root, f))]
    form = next(
        (f for f in forms if (f.get("action") or "").rstrip("/").endswith("/mturk/externalSubmit")),
        forms[0] if forms else None,
    )
    action = None
    if form is not None and (form.get("action") or "").strip():
        action = urljoin(base, form.get("action", "").strip())
    nodes = list(_controls_of(root, form))

    def img_url(img: Node) -> str | None:
        src = (img.get("src") or "").strip()
        return urljoin(base, src) if src else None

    radios: dict[str, list[Node]] = {}
    controls: list[Control] = []
    for node in nodes:
        if "disabled" in node.attrs or not node.get("name"):
            continue
        name = node.get("name") or ""
        if node.tag == "textarea":
            controls.append(Control("textarea", name, node.all_text(), node.attrs))
        elif node.tag == "select":
            options = [
                (o.get("value") if "value" in o.attrs else o.all_text().strip(), _disabled(o))
                for o in node.iter("option")
            ]
            controls.append(
                Control("select", name, "", node.attrs, [(v or "", d) for v, d in options])
            )
        elif node.tag == "button":
            if (node.get("type") or "submit").lower() == "submit":
                controls.append(Control("submit", name, node.get("value") or "", node.attrs))
        else:
            kind = (node.get("type") or "text").lower()
            if kind == "radio":
                radios.setdefault(name, []).append(node)
            else:
                value = node.get("value") or ("on" if kind == "checkbox" else "")
                controls.append(Control(kind, name, value, node.attrs))

    # option images
    labels_for: dict[str, list[Node]] = {}
    for label in root.iter("label"):
        if label.get("for"):
            labels_for.setdefault(label.get("for") or "", []).append(label)
    option_img: dict[int, Node] = {}  # id(radio) -> img
    groups: dict[str, Node] = {}  # name -> smallest element holding the whole group
    for name, members in radios.items():
        groups[name] = _common_ancestor(members)
        for radio in members:
            img = _option_image(radio, members, labels_for, groups[name])
            if img is not None:
                option_img[id(radio)] = img
    option_imgs = {id(img) for img in option_img.values()}

    all_imgs = [img for img in root.iter("img") if id(img) not in option_imgs and img_url(img)]
    claimed = {
        id(img): img.get("data-question")
        for img in all_imgs
        if img.get("data-question") and _is_target(img)
    }
    questions = []
    for name, members in radios.items():
        target = next((img for img in all_imgs if claimed.get(id(img)) == name), None)
        if target is None:
            target = _nearest_target(groups[name], members[0], all_imgs, claimed)
        options = [
            Option(
                radio.get("value") if "value" in radio.attrs else "on",
                img_url(option_img[id(radio)]) if id(radio) in option_img else None,
            )
            for radio in members
        ]
        questions.append(Question(name, options, img_url(target) if target is not None else None))
    return Form(action, controls, questions)


def _disabled(option: Node) -> bool:
    return "disabled" in option.attrs or any(
        a.tag == "optgroup" and "disabled" in a.attrs for a in option.ancestors()
    )


def _controls_of(root: Node, form: Node | None) -> Iterable[Node]:
    """The controls a form submits (its descendants and ``form="its id"`` ones)."""
    form_id = form.get("id") if form is not None else None
    for node in root.iter("input", "select", "textarea", "button"):
        if form is None:
            yield node
        elif form.contains(node) and not node.get("form"):
            yield node
        elif form_id and node.get("form") == form_id:
            yield node


def _common_ancestor(nodes: Sequence[Node]) -> Node:
    if len(nodes) == 1:
        return nodes[0]
    chain = [nodes[0], *nodes[0].ancestors()]
    for candidate in chain:
        if all(candidate is n or candidate.contains(n) for n in nodes[1:]):
            return candidate
    return chain[-1]


def _is_target(img: Node) -> bool:
    return any(n.get("data-role") == "target" for n in [img, *img.ancestors()])


def _first_img(node: Node) -> Node | None:
    if node.tag == "img":
        return node
    return next((img for img in node.iter("img") if img.get("src")), None)


def _option_image(
    radio: Node, members: Sequence[Node], labels_for: dict[str, list[Node]], group: Node
) -> Node | None:
    labels = [a for a in radio.ancestors() if a.tag == "label"]
    if radio.get("id"):
        labels += labels_for.get(radio.get("id") or "", [])
    for label in labels:
        img = _first_img(label)
        if img is not None:
            return img
    if len(members) < 2:
        return None
    for ancestor in radio.ancestors():
        if ancestor is group or any(m is not radio and ancestor.contains(m) for m in members):
            return None
        img = next((i for i in ancestor.iter("img") if i.get("src") and not _is_target(i)), None)
        if img is not None:
            return img
    return None


def _nearest_target(
    group: Node, first: Node, images: Sequence[Node], claimed: dict[int, str | None]
) -> Node | None:
    free = [img for img in images if id(img) not in claimed]
    for block in [group, *group.ancestors()]:
        inside = [img for img in free if block.contains(img)]
        if not inside:
            continue
        marked = [img for img in inside if _is_target(img)]
        pool = marked or inside
        before = [img for img in pool if img.order < first.order]
        return before[-1] if before else pool[0]
    return None


# --- pages of the worker site ---------------------------------------------------------------

_HIT_PATH = re.compile(r"^/hit/([^/?#]+)/?$")


def hits_on_list_page(html: str, url: str) -> list[str]:
    """HIT ids linked from the HIT list page (``/hit/<HITId>`` links), in page order.

    Links inside an element marked ``data-blocked`` (the requester blocked this worker) are
    passed over, as a person passes over HITs they are told they cannot accept."""
    found: list[str] = []
    origin = urlsplit(url).netloc
    for anchor in parse_html(html).iter("a"):
        if any("data-blocked" in node.attrs for node in (anchor, *anchor.ancestors())):
            continue
        target = urlsplit(urljoin(url, anchor.get("href") or ""))
        match = _HIT_PATH.match(target.path)
        if match and target.netloc == origin and match.group(1) not in found:
            found.append(match.group(1))
    return found


def accept_form(html: str, url: str) -> tuple[str, list[tuple[str, str]]] | None:
    """The preview page's ``form#accept``: ``(action URL, hidden fields)``."""
    root = parse_html(html)
    form = next((f for f in root.iter("form") if f.get("id") == "accept"), None)
    if form is None:
        return None
    fields = [
        (node.get("name") or "", node.get("value") or "")
        for node in form.iter("input")
        if node.get("name") and (node.get("type") or "text").lower() == "hidden"
    ]
    return urljoin(url, form.get("action") or url), fields


def question_frame(html: str, url: str) -> str | None:
    """The URL of the page's ``iframe#question`` (the first iframe if none has that id)."""
    frames = [f for f in parse_html(html).iter("iframe") if f.get("src")]
    frame = next((f for f in frames if f.get("id") == "question"), frames[0] if frames else None)
    return urljoin(url, frame.get("src") or "") if frame is not None else None
