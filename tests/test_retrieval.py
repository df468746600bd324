"""course_lib.retrieval: embeddings equal sentence-transformers', top-k equals brute force, prompts are well formed."""
import pytest
import torch

from course_lib.models import load_minilm
from course_lib.retrieval import Retriever, embed, few_shot_messages, top_k_cosine

TEXTS = ["My card was charged twice for one order.", "The parcel never arrived.", "How do I reset my password?",
         "Great service, thank you!", "The app crashes when I open settings.", "a", "x " * 400]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm(device="cpu")


def test_embeddings_equal_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    from course_lib.models import _minilm_folder

    reference = SentenceTransformer(str(_minilm_folder()), device="cpu")
    expected = reference.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True)
    ours = embed(TEXTS, *minilm, batch_size=3, progress=False)  # batches of 3: padding differs from theirs
    assert ours.shape == (len(TEXTS), 384)
    torch.testing.assert_close(ours, expected.cpu(), atol=1e-5, rtol=1e-4)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)


def test_top_k_cosine_equals_brute_force_and_ignores_scale():
    torch.manual_seed(0)
    corpus, queries = torch.randn(50, 8), torch.randn(4, 8)
    scores, indices = top_k_cosine(queries * 7.0, corpus * torch.rand(50, 1) * 10, k=3)
    for q, (row_scores, row) in enumerate(zip(scores, indices)):
        cosines = [float(torch.nn.functional.cosine_similarity(queries[q], c, dim=0)) for c in corpus]
        order = sorted(range(50), key=lambda i: -cosines[i])[:3]
        assert row.tolist() == order
        assert row_scores.tolist() == pytest.approx([cosines[i] for i in order], abs=1e-5)
    single_scores, single = top_k_cosine(queries[0], corpus, k=3)
    assert single.tolist() == indices[0].tolist() and single_scores.shape == (3,)
    for k in (0, 51):
        with pytest.raises(ValueError, match="k must be"):
            top_k_cosine(queries, corpus, k)


def test_few_shot_messages_alternate_and_end_with_the_query():
    messages = few_shot_messages("Classify.", [("t1", "a"), ("t2", "b")], "q")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in messages] == ["Classify.", "t1", "a", "t2", "b", "q"]
    assert few_shot_messages("S", [], "q") == [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]


def test_retriever_finds_paraphrases_before_unrelated_texts(minilm):
    retriever = Retriever(TEXTS[:5], *minilm, progress=False)
    found = retriever.search(["I was billed two times for the same purchase", "my package is lost"], k=2)
    assert found[:, 0].tolist() == [0, 1]
    with pytest.raises(TypeError, match="sequence of texts"):
        embed("one string", *minilm)
