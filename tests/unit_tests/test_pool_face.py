"""What the ``PoolFace`` mixin must leave to the LangChain bases it is listed before."""

from __future__ import annotations

from langchain_core.version import VERSION

from langchain_pllm import BalancedChatModel, BalancedEmbeddings

_PROVIDER = {"vendor": "openai", "api_key": "sk-test", "api_base": "http://127.0.0.1:9/v1"}


def test_the_chat_model_still_runs_the_language_model_post_init() -> None:
    # BaseLanguageModel.model_post_init seeds the trace metadata with langchain-core's version.
    model = BalancedChatModel(providers=[{**_PROVIDER, "model": "gpt-4o-mini"}])
    assert model.metadata is not None
    assert model.metadata["lc_versions"]["langchain-core"] == VERSION
    assert model._pool_id  # the mixin's and the face's private attributes are still set


def test_the_embeddings_face_still_sets_its_private_attributes() -> None:
    emb = BalancedEmbeddings(providers=[{**_PROVIDER, "model": "text-embedding-3-small"}])
    assert emb._has_tpm is False
    assert len(emb._pool.providers) == 1
