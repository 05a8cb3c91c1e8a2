"""Fitting a :class:`~ehrembed.ehr.serialize.base.Doc` into a token budget, whole lines at a time.

The oldest dated lines go first; undated lines (title, demographics) are kept first; a heading is
shown (and paid for) only while a line under it is. The result is always counted exactly: per-line
sums can undercount the joined text, so lines are dropped until the whole fits.
"""

from __future__ import annotations

from ehrembed.ehr.tokens import TokenCounter

from .base import Doc, Line, Serialized, SerializeError

_COST_BATCH = 48  # lines costed per tokenizer call when fitting a budget
_LIKELY_FITS_CHARS_PER_TOKEN = 3  # English Markdown runs ~4 characters per token


def join(lines: list[Line], alive: list[bool] | None) -> str:
    kept = [line.text for i, line in enumerate(lines) if alive is None or alive[i]]
    return "\n".join(kept).strip() + "\n"


def fit(doc: Doc, budget: int | None, counter: TokenCounter | None) -> Serialized:
    """Keep the newest lines that fit the budget.

    Lines are costed newest first, in small batches, and costing stops at the first line that no
    longer fits, so a long history costs little more tokenizer work than the budget itself.
    """
    lines = doc.lines
    if budget is None or counter is None:
        return Serialized(join(lines, None), None, 0)
    full = join(lines, None)
    if len(full.encode()) <= budget:  # no tokenizer makes more tokens than UTF-8 bytes
        return Serialized(full, None, 0)
    if len(full) <= _LIKELY_FITS_CHARS_PER_TOKEN * budget:  # probably fits: one exact count decides
        exact = counter.count([full])[0]
        if exact <= budget:
            return Serialized(full, exact, 0)
    undated = [i for i, line in enumerate(lines) if line.time is None and not line.heading]
    dated = sorted(
        (i for i, line in enumerate(lines) if line.time is not None),
        key=lambda i: (lines[i].time, -i),
        reverse=True,
    )
    order = undated + dated
    keep: list[int] = []  # in the order they were admitted: undated, then newest first
    heading_cost: dict[int, int] = {}  # costed with the first batch that needs them
    paid: set[int] = set()
    total = 0
    for batch_start in range(0, len(order), _COST_BATCH):
        batch = order[batch_start : batch_start + _COST_BATCH]
        heads = sorted({p for i in batch for p in lines[i].parents if p not in heading_cost})
        costs = counter.count([lines[i].text for i in batch] + [lines[p].text for p in heads])
        heading_cost.update(zip(heads, costs[len(batch) :], strict=True))
        full_stop = False
        for i, cost in zip(batch, costs[: len(batch)], strict=True):
            extra = cost + sum(heading_cost[p] for p in lines[i].parents if p not in paid)
            if total + extra > budget:
                full_stop = True
                break
            keep.append(i)
            paid.update(lines[i].parents)
            total += extra
        if full_stop:
            break
    additive = bool(getattr(counter, "additive", False))
    while True:
        alive = [False] * len(lines)
        for i in keep:
            alive[i] = True
            for parent in lines[i].parents:
                alive[parent] = True
        text = join(lines, alive)
        dropped = sum(1 for line, on in zip(lines, alive, strict=True) if not on and not line.heading)
        if keep and additive:  # whitespace-split tokenizers: the line costs add up exactly
            return Serialized(text, total, dropped)
        exact = counter.count([text])[0]
        if not keep:
            raise SerializeError(f"a budget of {budget} tokens cannot hold even the record's first line")
        if exact <= budget:
            return Serialized(text, exact, dropped)
        keep.pop()  # per-line sums can undercount the joined text: give up the oldest kept line


def fit_with_appendix(
    doc: Doc, heading: str, extra: list[str], share: float, budget: int | None, counter: TokenCounter | None
) -> Serialized:
    """The record within ``1 - share`` of the budget, then the appendix lines that fit, whole, best first."""
    if not extra:
        return fit(doc, budget, counter)
    heading = f"\n## {heading}"
    if budget is None or counter is None:
        record = fit(doc, None, None)
        return Serialized(record.text + "\n".join([heading, *extra]) + "\n", None, record.dropped_lines)
    record = fit(doc, budget - int(budget * share), counter)
    used = record.n_tokens if record.n_tokens is not None else counter.count([record.text])[0]
    heading_cost, *costs = counter.count([heading, *extra])
    room = budget - used - heading_cost
    kept: list[str] = []
    for line, cost in zip(extra, costs, strict=True):
        if cost > room:
            break
        kept.append(line)
        room -= cost
    while kept:
        text = record.text + "\n".join([heading, *kept]) + "\n"
        exact = counter.count([text])[0]
        if exact <= budget:
            return Serialized(text, exact, record.dropped_lines)
        kept.pop()  # per-line sums can undercount the joined text
    return record
