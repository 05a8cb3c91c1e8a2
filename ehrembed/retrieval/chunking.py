"""Markdown guidelines cut into retrievable passages, by headings, under a token budget.

A guideline is one or more Markdown files. Each file is read as a tree of headings; the text under
a heading is a *section*, named by its heading path (``"CKD Staging — KDIGO 2024 > GFR Categories"``).

- A section that fits the budget is one chunk.
- A longer section is split at paragraph boundaries (blank lines); a paragraph still too long is
  split by lines (a table keeps its header row in every piece), and a line still too long by words.
- Small neighbouring sections under the same top-level section are merged while they fit, so a
  chunk is never a lone heading with two bullet points; the merged sub-headings stay inline.

Every chunk keeps its guideline id and title and its section path. ``Chunk.text`` is what gets
embedded and indexed: the guideline title and section path on top of the passage (so a passage
that says "start at 10 mg" still knows it is about finerenone in CKD), with Markdown noise
(emphasis markers, table rules, code fences) removed. ``Chunk.passage`` is the Markdown as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ehrembed.errors import InputError

TokenCount = Callable[[list[str]], list[int]]
"""Tokens per text, for many texts at once (an encoder's ``count_tokens``)."""

SECTION_SEPARATOR = " > "

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


@dataclass(frozen=True)
class ChunkingConfig:
    """How guidelines become passages; every field enters the knowledge base's sidecar."""

    max_tokens: int = 256
    """Budget of a chunk's ``text`` (title and section line included), in the counter's tokens; a knowledge
    base build lowers it to the encoder's window."""
    min_tokens: int = 128
    """Sections smaller than this are merged with their neighbours under the same top-level section."""
    overview: bool = True
    """Add one chunk per guideline from its metadata (title, organisation, year, topics) when it has any."""


@dataclass(frozen=True)
class Chunk:
    """One retrievable passage of a guideline."""

    guideline_id: str
    title: str
    section: str
    passage: str
    text: str
    source: str = ""
    """The file (relative to the guideline source) the passage came from; empty for overview chunks."""


@dataclass
class _Section:
    path: tuple[str, ...]
    lines: list[str]


def approx_tokens(texts: list[str]) -> list[int]:
    """A tokenizer-free estimate (about four characters per token, never below the word count)."""
    return [max(len(t.split()), (len(t) + 3) // 4) for t in texts]


def clean_markdown(text: str) -> str:
    """Markdown as plain-ish text for indexing: no emphasis markers, table rules, fences or pipes."""
    out: list[str] = []
    for line in text.splitlines():
        if _FENCE.match(line) or _TABLE_RULE.match(line):
            continue
        line = line.replace("**", "").replace("__", "").replace("`", "")
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            line = " ; ".join(c for c in cells if c)
        line = re.sub(r"\s*(-->|->|=>)\s*", " → ", line)
        line = re.sub(r"[ \t]+", " ", line).rstrip()
        heading = _HEADING.match(line)
        if heading:
            line = heading.group(2)
        if line.strip():
            out.append(line)
    return "\n".join(out)


def parse_sections(markdown: str) -> tuple[str | None, list[_Section]]:
    """The first heading (a document title) and the sections under each heading path, in order.

    Headings inside fenced code blocks are text. Text before the first heading belongs to the
    empty path.
    """
    title: str | None = None
    sections: list[_Section] = []
    stack: list[tuple[int, str]] = []
    current = _Section((), [])
    in_fence = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            current.lines.append(line)
            continue
        match = None if in_fence else _HEADING.match(line)
        if match is None:
            current.lines.append(line)
            continue
        level, name = len(match.group(1)), match.group(2).strip()
        if title is None:
            title = name
        sections.append(current)
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, name))
        current = _Section(tuple(n for _, n in stack), [])
    sections.append(current)
    return title, [s for s in sections if any(line.strip() for line in s.lines) or s.path]


def _paragraphs(lines: Sequence[str]) -> list[list[str]]:
    """Blank-line separated blocks; a fenced block is one paragraph whatever it holds."""
    blocks: list[list[str]] = []
    block: list[str] = []
    in_fence = False
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        if not line.strip() and not in_fence:
            if block:
                blocks.append(block)
                block = []
            continue
        block.append(line)
    if block:
        blocks.append(block)
    return blocks


class _Packer:
    """Packs text pieces into passages whose indexed ``text`` stays within the budget."""

    def __init__(self, count: TokenCount, budget: int) -> None:
        self.count = count
        self.budget = budget

    def cost(self, text: str) -> int:
        return self.count([text])[0]

    def split_block(self, block: list[str], room: int) -> list[str]:
        """A paragraph as pieces of at most ``room`` tokens: whole if it fits, else by lines, else by words."""
        text = "\n".join(block)
        if self.cost(clean_markdown(text)) <= room:
            return [text]
        is_table = len(block) > 2 and block[0].lstrip().startswith("|") and bool(_TABLE_RULE.match(block[1]))
        header = block[:2] if is_table else []
        body = block[2:] if is_table else block
        if len(body) <= 1 and not header:
            return self._split_words(text, room)
        pieces: list[str] = []
        current: list[str] = []
        for line in body:
            trial = "\n".join([*header, *current, line])
            if current and self.cost(clean_markdown(trial)) > room:
                pieces.append("\n".join([*header, *current]))
                current = []
            if self.cost(clean_markdown("\n".join([*header, line]))) > room:
                pieces.extend(self._split_words(line, room))
                continue
            current.append(line)
        if current:
            pieces.append("\n".join([*header, *current]))
        return pieces

    def _split_words(self, text: str, room: int) -> list[str]:
        words = text.split()
        pieces: list[str] = []
        start = 0
        while start < len(words):
            lo, hi = start + 1, len(words)
            while lo < hi:  # the longest run of words that fits (at least one word)
                mid = (lo + hi + 1) // 2
                if self.cost(" ".join(words[start:mid])) <= room:
                    lo = mid
                else:
                    hi = mid - 1
            pieces.append(" ".join(words[start:lo]))
            start = lo
        return pieces


def chunk_text(title: str, section: str, passage: str) -> str:
    """The text embedded and indexed for a passage: guideline title and section on top."""
    head = f"{title}\n{section}" if section else title
    return f"{head}\n{clean_markdown(passage)}"


def chunk_markdown(
    markdown: str,
    *,
    guideline_id: str,
    title: str,
    source: str = "",
    config: ChunkingConfig | None = None,
    count: TokenCount | None = None,
) -> list[Chunk]:
    """Cut one Markdown file of a guideline into chunks (see the module docstring)."""
    config = config or ChunkingConfig()
    count = count or approx_tokens
    doc_title, sections = parse_sections(markdown)
    # the file's own title heading is redundant in the path when it is the guideline's title
    drop_first = doc_title is not None and _norm(doc_title) == _norm(title)

    def path_of(section: _Section) -> tuple[str, ...]:
        return section.path[1:] if drop_first and section.path else section.path

    packer = _Packer(count, config.max_tokens)
    units: list[tuple[tuple[str, ...], str]] = []  # (section path, passage) within budget
    for section in sections:
        body = section.lines
        if not any(line.strip() for line in body):
            continue  # a heading with nothing under it: its name lives on in its children's paths
        path = path_of(section)
        label = SECTION_SEPARATOR.join(path)
        room = config.max_tokens - packer.cost(chunk_text(title, label, ""))
        if room < 8:
            raise InputError(
                f"{guideline_id}: a chunk budget of {config.max_tokens} tokens leaves no room for text under "
                f"{label!r}; raise max_tokens"
            )
        current: list[str] = []
        for block in _paragraphs(body):
            for piece in packer.split_block(block, room):
                trial = "\n\n".join([*current, piece])
                if current and packer.cost(clean_markdown(trial)) > room:
                    units.append((path, "\n\n".join(current)))
                    current = []
                current.append(piece)
        if current:
            units.append((path, "\n\n".join(current)))

    chunks: list[Chunk] = []
    i = 0
    while i < len(units):
        path, passage = units[i]
        group_path, group_passage = path, passage
        j = i + 1
        while j < len(units):  # merge small neighbours that share the top-level section
            next_path, next_passage = units[j]
            small = packer.cost(chunk_text(title, SECTION_SEPARATOR.join(group_path), group_passage))
            if small >= config.min_tokens or next_path[:1] != group_path[:1]:
                break
            common = _common_prefix(group_path, next_path)
            inline = "\n".join(f"{'#' * 4} {name}" for name in next_path[len(common) :])
            first_inline = "\n".join(f"{'#' * 4} {name}" for name in group_path[len(common) :])
            merged = "\n\n".join(x for x in (first_inline, group_passage, inline, next_passage) if x)
            if packer.cost(chunk_text(title, SECTION_SEPARATOR.join(common), merged)) > config.max_tokens:
                break
            group_path, group_passage = common, merged
            j += 1
        label = SECTION_SEPARATOR.join(group_path)
        chunks.append(
            Chunk(guideline_id, title, label, group_passage.strip(), chunk_text(title, label, group_passage), source)
        )
        i = j
    return chunks


def overview_chunks(
    guideline_id: str,
    title: str,
    *,
    organization: str | None = None,
    year: int | None = None,
    topics: Sequence[str] = (),
    config: ChunkingConfig | None = None,
    count: TokenCount | None = None,
) -> list[Chunk]:
    """Chunks from a guideline's metadata (who issued it, what it covers); none when there is nothing beyond
    the title. A long topic list is spread over several chunks within the budget."""
    config = config or ChunkingConfig()
    count = count or approx_tokens
    issued = f"Issued by {organization or 'unknown'}{f' in {year}' if year else ''}." if organization or year else ""
    if not issued and not topics:
        return []
    pieces: list[str] = []
    current: list[str] = []

    def render(items: list[str]) -> str:
        parts = [issued] if issued and not pieces else []
        if items:
            parts.append("Topics: " + ", ".join(items) + ".")
        return " ".join(parts)

    for topic in topics:
        if current and count([chunk_text(title, "Overview", render([*current, topic]))])[0] > config.max_tokens:
            pieces.append(render(current))
            current = []
        current.append(topic)
    if current or not pieces:
        pieces.append(render(current))
    return [Chunk(guideline_id, title, "Overview", p, chunk_text(title, "Overview", p)) for p in pieces if p]


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text).strip().lower()
