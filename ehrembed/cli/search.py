"""CLI for search: FAISS indexes, similar patients, the guideline knowledge base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ehrembed.cli.common import (
    IndexKind,
    JsonFlag,
    MultiValueCommand,
    SearchMode,
    Sex,
    TopOption,
    app,
    bar_progress,
    fail,
    guidelines_app,
    out_console,
    parse_time,
    print_json,
    steps_progress,
    user_errors,
)


@app.command("index", cls=MultiValueCommand)
def index_cmd(
    dataset: Annotated[Path, typer.Argument(help="The MEDS folder the embeddings were made from.")],
    embeddings: Annotated[
        list[Path],
        typer.Option(
            "--embeddings",
            help="Output of `ehrembed embed` (folder or .parquet); repeat it to build one IVF-PQ index shard by shard.",
        ),
    ],
    out: Annotated[Path | None, typer.Option("--out", help="Index folder (default: <embeddings>.index).")] = None,
    kind: Annotated[IndexKind, typer.Option(help="auto (by size), flat (exact), hnsw or ivfpq.")] = IndexKind.auto,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray", help="With several --embeddings: fill the shards on Ray (local, auto, ray://…)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Build a FAISS index over embedding sets for similar-patient search (replaced atomically)."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.services.indexes import build_recorded_index
    from ehrembed.store.db import catalog

    target = out or Path(f"{embeddings[0]}.index")
    with user_errors():
        ds = MedsDataset.open(dataset)
        with bar_progress("indexing vectors") as progress, catalog() as session:
            task = progress.add_task("vectors", total=None)
            built = build_recorded_index(
                ds,
                embeddings,
                target,
                session=session,
                kind=kind.value,
                ray_address=ray_address,
                progress=lambda done, n: progress.update(task, completed=done, total=n),
            )
    report, unknown = built.report, built.subjects_not_in_dataset
    data = {**report.as_dict(), "subjects_not_in_dataset": unknown}
    if as_json:
        print_json(data)
        return
    out_console.print(
        f"[green]wrote[/] {target}: {report.kind} index of {report.rows:,} vectors (dim {report.dim}, "
        f"{report.index_bytes / 1e6:.1f} MB) in {report.seconds:.1f}s"
    )
    if unknown:
        out_console.print(f"  [yellow]note:[/] {unknown:,} rows belong to subjects not in {dataset}")


def _recorded_index(dataset_name: str) -> Path:
    """The newest index recorded in the store for a dataset (whose folder still exists)."""
    from ehrembed.services.indexes import recorded_index
    from ehrembed.store.db import catalog

    with user_errors(), catalog() as session:
        return recorded_index(session, dataset_name)
    raise AssertionError("unreachable")  # pragma: no cover - user_errors exits on the error


@app.command("similar", cls=MultiValueCommand)
def similar_cmd(
    dataset: Annotated[Path, typer.Argument(help="The MEDS folder the index was built from.")],
    subject: Annotated[int, typer.Option("--subject", help="subject_id whose similar patients to find.")],
    k: TopOption = 10,
    index: Annotated[
        Path | None, typer.Option("--index", help="Index folder (default: the newest recorded for the dataset).")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="ISO time of the subject's index row (default: its latest).")
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option("--split", help="Only neighbours in this split (repeatable).")
    ] = None,
    sex: Annotated[Sex | None, typer.Option("--sex", help="Only neighbours of this sex.")] = None,
    min_age: Annotated[
        float | None, typer.Option("--min-age", min=0, help="Minimum age at the neighbour's time.")
    ] = None,
    max_age: Annotated[
        float | None, typer.Option("--max-age", min=0, help="Maximum age at the neighbour's time.")
    ] = None,
    has_code: Annotated[
        list[str] | None, typer.Option("--has-code", help="Only neighbours with this code by their time (repeatable).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """The patients most similar to a subject, with what their records share."""
    from ehrembed.ehr.meds import MedsDataset
    from ehrembed.retrieval.index import VectorIndex
    from ehrembed.retrieval.similar import SimilarFilters, SimilarPatients

    when = parse_time(as_of, "--as-of")
    with user_errors():
        ds = MedsDataset.open(dataset)
        filters = SimilarFilters.of(split, sex, min_age, max_age, has_code)
        with steps_progress() as spinner:
            spinner.add_task("loading the index")
            vector_index = VectorIndex.load(index or _recorded_index(ds.name))
            spinner.add_task("searching")
            result = SimilarPatients(vector_index, ds).by_subject(subject, as_of=when, k=k, filters=filters)
    if as_json:
        print_json(result.as_dict())
        return
    query_time = f" as of {result.query.as_of:%Y-%m-%d %H:%M}" if result.query.as_of else ""
    table = Table(title=f"patients similar to subject {subject}{query_time}")
    for column in ("#", "subject", "as of", "score", "split", "sex", "age", "shared"):
        table.add_column(column, overflow="fold")
    for n in result.neighbors:
        table.add_row(
            str(n.rank),
            str(n.subject_id),
            f"{n.prediction_time:%Y-%m-%d}" if n.prediction_time else "-",
            f"{n.score:.4f}",
            n.split or "-",
            n.sex or "-",
            f"{n.age:.0f}" if n.age is not None else "-",
            n.explanation.brief(3),
        )
    out_console.print(table)
    if len(result.neighbors) < k:
        out_console.print(f"  only {len(result.neighbors)} of {k} patients pass the filters")


@guidelines_app.command("build")
def guidelines_build_cmd(
    source: Annotated[
        Path | None,
        typer.Option(help="Folder of Markdown guidelines (default: the 43 of the open-medicine package)."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="Local retrieval model folder, e.g. a BGE (default: the packaged all-MiniLM-L6-v2)."),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="bge (CLS pooling, query instruction) or minilm (the folder's pooling, no instruction); "
            "default: bge with --model, minilm without."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Knowledge base folder (default: $EHREMBED_HOME/guidelines/default).")
    ] = None,
    chunk_tokens: Annotated[
        int, typer.Option(min=32, help="Passage budget in the model's tokens (at most its window).")
    ] = 256,
    as_json: JsonFlag = False,
) -> None:
    """Chunk, embed and index guidelines into a knowledge base folder (replaced atomically)."""
    import time

    from ehrembed.retrieval.chunking import ChunkingConfig
    from ehrembed.retrieval.guidelines import (
        RetrievalModelConfig,
        build_knowledge_base,
        default_kb_dir,
        discover_guidelines,
    )

    chosen = preset or ("bge" if model is not None else "minilm")
    if chosen not in ("bge", "minilm"):
        fail(f"--preset must be bge or minilm, not {chosen!r}")
    if chosen == "bge" and model is None:
        fail("--preset bge needs --model PATH to a local BGE folder")
    config = RetrievalModelConfig.bge(model) if chosen == "bge" and model else RetrievalModelConfig.minilm(model)
    target = out or default_kb_dir()
    started = time.perf_counter()
    with user_errors():
        discover_guidelines(source)  # a bad source fails before the model loads
        with steps_progress() as spinner:
            spinner.add_task(f"loading retrieval model {config.folder()}")
            encoder = config.load_encoder()
        with bar_progress("embedding passages") as progress:
            task = progress.add_task("passages", total=None)
            kb = build_knowledge_base(
                source,
                config,
                chunking=ChunkingConfig(max_tokens=chunk_tokens),
                encoder=encoder,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        kb.save(target, onnx_queries=True)
    data = {
        "out": str(target),
        "guidelines": len(kb.guideline_ids),
        "passages": len(kb),
        "model": kb.meta["encoder"]["name"],
        "fingerprint": kb.fingerprint,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if as_json:
        print_json(data)
        return
    out_console.print(
        f"[green]wrote[/] {target}: {data['passages']:,} passages from {data['guidelines']} guidelines "
        f"embedded with {data['model']} in {data['seconds']:.1f}s"
    )


@guidelines_app.command("search")
def guidelines_search_cmd(
    query: Annotated[str, typer.Argument(help="A clinical question, e.g. 'eGFR 40 with albuminuria'.")],
    k: TopOption = 5,
    mode: Annotated[
        SearchMode, typer.Option(help="hybrid (BM25 + dense, rank fusion), bm25 or dense.")
    ] = SearchMode.hybrid,
    kb_dir: Annotated[
        Path | None, typer.Option("--kb", help="Knowledge base folder (default: $EHREMBED_HOME/guidelines/default).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Search the guideline knowledge base; prints guideline, section, score and passage."""
    from ehrembed.retrieval.guidelines import GuidelineKB

    with user_errors():
        kb = GuidelineKB.load(kb_dir)
        hits = kb.search(query, k=k, mode=mode.value)
    if as_json:
        print_json({"query": query, "mode": mode.value, "results": [h.as_dict() for h in hits]})
        return
    if not hits:
        out_console.print("no matching passages")
    for rank, hit in enumerate(hits, start=1):
        out_console.rule(f"{rank}. {hit.guideline_id}  score {hit.score:.4f}", align="left")
        out_console.print(f"[bold]{hit.title}[/]")
        if hit.section:
            out_console.print(f"[dim]{hit.section}[/]")
        print(hit.passage)
