"""Query expansion (the abbreviation table) and the hybrid search's guideline-level aggregation and registry
field: what they add to a query or a score, and that the knowledge base's fingerprint follows them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ehrembed.retrieval.augment import GuidelineAugmentation, GuidelineAugmenter
from ehrembed.retrieval.guidelines import (
    FusionConfig,
    GuidelineError,
    GuidelineKB,
    RetrievalModelConfig,
    build_knowledge_base,
)
from ehrembed.retrieval.guidelines.expansion import QueryExpander, packaged_expander
from tests.helpers import HashEncoder
from tests.retrieval.test_guidelines import write_guidelines

TABLE = "# comment\nAF\tatrial fibrillation\nafib\tatrial fibrillation\nRA\trheumatoid arthritis\nRA\troom air\n" \
    "s/p\tstatus post\nhr\theart rate\n"  # fmt: skip


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> GuidelineKB:
    folder = write_guidelines(tmp_path_factory.mktemp("guidelines") / "md")
    return build_knowledge_base(folder, RetrievalModelConfig.minilm("/nowhere"), encoder=HashEncoder())


def test_the_table_reads_case_rules_and_merges_meanings() -> None:
    table = QueryExpander.from_text(TABLE)
    assert table.exact["RA"] == ("rheumatoid arthritis", "room air")  # listed twice: both readings kept
    assert set(table.exact) == {"AF", "RA"} and set(table.folded) == {"afib", "s/p", "hr"}
    assert table.expansions("AFIB and Afib, HR 120") == ["atrial fibrillation", "heart rate"]
    assert table.expansions("af is lower case") == []  # a capitalised term matches its exact spelling only
    assert table.expansions("SAFE, RAS, ra-3, chr") == []  # whole tokens only
    assert table.expansions("s/p MI, on RA") == ["status post", "rheumatoid arthritis", "room air"]
    assert table.expand("AF: atrial fibrillation already named") == "AF: atrial fibrillation already named"
    assert table.expand("new AF w HR 130") == "new AF w HR 130 (atrial fibrillation; heart rate)"
    assert table.expand("nothing to expand") == "nothing to expand"
    with pytest.raises(GuidelineError, match="line 1"):
        QueryExpander.from_text("AF atrial fibrillation with spaces, no tab\n")


def test_the_packaged_table_is_data_with_a_digest() -> None:
    table = packaged_expander()
    assert len(table) >= 250 and len(table.digest) == 64
    assert "atrial fibrillation" in table.expand("afib w RVR")
    assert "pulmonary embolism" in table.expand("Wells 2, PE?") and "pulmonary embolism" not in table.expand("pe")


def test_expansion_lets_bm25_find_the_words_guidelines_use(kb: GuidelineKB) -> None:
    plain = dataclasses.replace(kb.fusion, expand=False)
    kb.fusion = plain
    assert kb.rank_guidelines("SGLT2i for CKD w UACR 400", "bm25") == []  # the guideline spells them out
    assert kb.search("afib, dilt?", mode="bm25") == []
    kb.fusion = dataclasses.replace(plain, expand=True)
    assert kb.rank_guidelines("SGLT2i for CKD w UACR 400", "bm25")[0] == "ckd"
    assert kb.expanded("afib, dilt?") == "afib, dilt? (atrial fibrillation; diltiazem)"
    assert kb.rank_guidelines("afib, dilt?", "bm25")[0] == "af"


def test_guideline_support_sums_decayed_passage_contributions_and_the_registry_rank(kb: GuidelineKB) -> None:
    gout = [i for i, c in enumerate(kb.chunks) if c.guideline_id == "gout"]
    af = [i for i, c in enumerate(kb.chunks) if c.guideline_id == "af"]
    assert len(gout) >= 3
    kb.fusion = FusionConfig(k=60, aggregate_depth=2, aggregate_decay=0.5, metadata_weight=0.0)
    support = kb._guideline_support("x", [[af[0], *gout[:3]]], [2.0])
    assert support["af"] == pytest.approx(2.0 / 61)
    assert support["gout"] == pytest.approx(2.0 / 62 + 2.0 * 0.5 / 63)  # only the 2 best passages count
    kb.fusion = FusionConfig(k=60, metadata_weight=1.0)
    ids, _ = kb.metadata_bm25
    assert sorted(ids) == ids == ["af", "asthma", "ckd", "gout"]
    support = kb._guideline_support("Atrial Fibrillation Management", [[]], [1.0])
    assert support == {"af": pytest.approx(1.0 / 61)}  # the title is its own field, ranked per guideline


def test_hybrid_scores_add_the_guideline_support(kb: GuidelineKB) -> None:
    kb.fusion = FusionConfig(guideline_weight=0.0)
    base = dict(kb.rank("allopurinol dose and serum urate", "hybrid"))
    kb.fusion = FusionConfig(guideline_weight=1.0, aggregate_depth=3)
    boosted = kb.rank("allopurinol dose and serum urate", "hybrid")
    assert [s for _, s in boosted] == sorted((s for _, s in boosted), reverse=True)
    for i, score in boosted:
        assert score > base[i]  # every passage's guideline has some support
    assert kb.chunks[boosted[0][0]].guideline_id == "gout"


def test_the_fingerprint_follows_search_settings_so_augmented_records_re_embed(kb: GuidelineKB, tmp_path: Path) -> None:
    kb.fusion = FusionConfig()
    first = kb.fingerprint
    version = GuidelineAugmenter(GuidelineAugmentation(), kb=kb).version
    kb.fusion = FusionConfig(expand=False)
    assert kb.fingerprint != first
    assert GuidelineAugmenter(GuidelineAugmentation(), kb=kb).version != version
    kb.fusion = FusionConfig(guideline_weight=0.5)
    assert kb.fingerprint not in (first,)
    kb.fusion = FusionConfig()
    assert kb.fingerprint == first
    loaded = GuidelineKB.load(kb.save(tmp_path / "kb"), encoder=HashEncoder())
    assert loaded.fusion == kb.fusion and loaded.fingerprint == first
