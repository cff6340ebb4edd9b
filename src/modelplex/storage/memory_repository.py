"""The model repository's generations in the `MemoryStore` (the SQL store's
`repository.py`): one process's, so only its own registry follows them."""

from __future__ import annotations

from modelplex.storage.interface import ModelGeneration, RepositoryAction


class MemoryRepositoryLog:
    _generations: dict[str, ModelGeneration]

    async def record_repository_change(self, model: str, action: RepositoryAction) -> int:
        previous = self._generations.get(model)
        generation = (previous.generation if previous else 0) + 1
        self._generations[model] = ModelGeneration(model, generation, action)
        return generation

    async def repository_generations(self) -> dict[str, ModelGeneration]:
        return dict(self._generations)  # the records are frozen: a shallow copy is safe
