"""imapd.thread -- THREAD (RFC 5256 section 3): ORDEREDSUBJECT and REFERENCES.

Pure functions from `imapd.sort.SortFields` to a thread tree and its wire form
`(1 2 (3)(4 5))`. REFERENCES is the algorithm of RFC 5256 (Jamie Zawinski's):
containers by Message-ID linked through References (or the first In-Reply-To),
dummies pruned, roots gathered by base subject, siblings sorted by sent date
(ties by sequence number). ORDEREDSUBJECT groups by base subject, sorted by sent
date; the first of each group is the parent of the others.

SECURITY: Message-IDs and References are hostile: duplicate ids get a unique
stand-in, links that would make a loop are not made, every walk is iterative
or bounded by the number of containers, and the references per message are
bounded by `imapd.sort.MAX_REFERENCES`.
"""

from __future__ import annotations

from .sort import SortFields

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


class Node:
    """A thread container: a message, or a dummy (`msg` None) standing for a parent
    that is not among the messages."""
    __slots__ = ("msg", "parent", "children")

    def __init__(self, msg: SortFields | None = None):
        self.msg = msg
        self.parent: Node | None = None
        self.children: list[Node] = []

    def add(self, child: "Node") -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)

    def has_descendant(self, other: "Node") -> bool:
        stack = list(self.children)
        while stack:
            n = stack.pop()
            if n is other:
                return True
            stack.extend(n.children)
        return False

    def sort_key(self):
        """Sent date, then sequence number; a dummy takes its first child's."""
        n = self
        while n.msg is None and n.children:
            n = n.children[0]
        return (n.msg.date, n.msg.seq) if n.msg is not None else (0.0, 0)


def ordered_subject(items: list[SortFields]) -> list[Node]:
    groups: dict[str, Node] = {}
    roots: list[Node] = []
    for f in sorted(items, key=lambda f: (f.subject, f.date, f.seq)):
        node = Node(f)
        top = groups.get(f.subject)
        if top is None:
            groups[f.subject] = node
            roots.append(node)
        else:
            top.add(node)
    roots.sort(key=Node.sort_key)
    return roots


def references(items: list[SortFields]) -> list[Node]:
    table: dict[str, Node] = {}
    order = sorted(items, key=lambda f: f.seq)
    # (1) containers linked by References
    for f in order:
        node = table.get(f.message_id) if f.message_id else None
        if node is None or node.msg is not None:
            key = f.message_id if node is None and f.message_id else f"\0{f.seq}"
            node = table.setdefault(key, Node())
        node.msg = f
        prev: Node | None = None
        for ref in f.references:
            c = table.get(ref)
            if c is None:
                c = table[ref] = Node()
            if prev is not None and c.parent is None and c is not prev and not c.has_descendant(prev):
                prev.add(c)
            prev = c
        if prev is not None and (prev is node or node.has_descendant(prev)):
            prev = None
        if prev is not None:
            prev.add(node)
        elif node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
    # (2) the root set; (3) the table is no longer needed
    roots = [n for n in table.values() if n.parent is None]
    # (4) prune dummies
    roots = _prune(roots)
    # (5) gather roots with the same base subject, taking the roots in sent-date order
    # (the RFC leaves the order open; this is Dovecot's, so the answers agree)
    _sort_tree(roots)
    roots = _gather_by_subject(roots)
    # (6) sort siblings by sent date
    _sort_tree(roots)
    return roots


def _prune(roots: list[Node]) -> list[Node]:
    """RFC 5256 step 4: empty dummies go; a dummy's children take its place, except
    at the root where a dummy with more than one child stays. Iterative (children
    before their parents), so deep chains cannot exhaust the stack."""
    order: list[Node] = []
    stack = list(roots)
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children)
    for n in reversed(order):
        kept: list[Node] = []
        for c in n.children:
            if c.msg is None:
                kept.extend(c.children)
            else:
                kept.append(c)
        n.children = kept
        for c in kept:
            c.parent = n
    out: list[Node] = []
    for n in roots:
        if n.msg is None and len(n.children) <= 1:
            out.extend(n.children)
        else:
            out.append(n)
    for n in out:
        n.parent = None
    return out


def _subject_of(n: Node) -> SortFields | None:
    return n.msg if n.msg is not None else (n.children[0].msg if n.children else None)


def _gather_by_subject(roots: list[Node]) -> list[Node]:
    table: dict[str, Node] = {}
    for r in roots:
        f = _subject_of(r)
        if f is None or not f.subject:
            continue
        old = table.get(f.subject)
        if old is None or (old.msg is not None and r.msg is None) or \
                (old.msg is not None and old.msg.is_reply and r.msg is not None and not r.msg.is_reply):
            table[f.subject] = r
    out: list[Node] = []

    def take_place(old: Node, new: Node) -> None:
        """`new` stands where `old` stood in the root set (or joins it)."""
        if old in out:
            out[out.index(old)] = new
        else:
            out.append(new)

    for r in roots:
        if r.parent is not None:
            continue  # already put under another root of its subject
        f = _subject_of(r)
        other = table.get(f.subject) if f is not None and f.subject else None
        if other is None or other is r:
            out.append(r)
        elif other.msg is None and r.msg is None:
            for c in list(r.children):
                other.add(c)
        elif other.msg is None:
            other.add(r)
        elif r.msg is None:
            r.add(other)
            take_place(other, r)
            table[f.subject] = r
        elif r.msg.is_reply and not other.msg.is_reply:
            other.add(r)
        else:
            dummy = Node()
            dummy.add(other)
            dummy.add(r)
            take_place(other, dummy)
            table[f.subject] = dummy
    return out


def _sort_tree(roots: list[Node]) -> None:
    # children first (a dummy's date is that of its first child after sorting)
    post: list[list[Node]] = []
    stack = [roots]
    while stack:
        siblings = stack.pop()
        post.append(siblings)
        for n in siblings:
            if n.children:
                stack.append(n.children)
    for siblings in reversed(post):
        siblings.sort(key=Node.sort_key)


def thread(algorithm: str, items: list[SortFields]) -> list[Node]:
    return ordered_subject(items) if algorithm == "ORDEREDSUBJECT" else references(items)


def render(roots: list[Node], uid: bool = False) -> bytes:
    """The thread-list of RFC 5256: `(1 2 (3)(4 5))`, dummies without a number."""
    out: list[str] = []

    def number(n: Node) -> str:
        return str(n.msg.uid if uid else n.msg.seq)

    # iterative: (node, state); emits "(" node-chain children ")"
    def emit(top: Node) -> None:
        work: list = [("open", top)]
        while work:
            kind, n = work.pop()
            if kind == "close":
                out.append(")")
                continue
            if kind == "text":
                out.append(n)
                continue
            out.append("(")
            work.append(("close", None))
            chain: list[str] = []
            while True:
                if n.msg is not None:
                    chain.append(number(n))
                if len(n.children) != 1:
                    break
                n = n.children[0]
            if chain:
                out.append(" ".join(chain))
                if n.children:
                    out.append(" ")
            for c in reversed(n.children):
                work.append(("open", c))

    for r in roots:
        emit(r)
    return "".join(out).encode()
